"""Bounded waits on the host database: which failures are a lock wait that ran out, and
how long a worker's open transaction may sit idle.

The host bounds every lock wait (SQLite's busy timeout, PostgreSQL's ``lock_timeout``);
past it the driver raises an ``OperationalError`` whose text depends on the database.
:func:`as_busy` turns exactly those into :class:`~smartpush_plugin_klaviyo.errors.DatabaseBusy`,
a transient failure of the run with a message that names the database and no value.

On PostgreSQL a worker frozen inside a transaction keeps its row locks; the worker that
takes its lease over ends that transaction (:func:`end_frozen_transactions`).
``idle_in_transaction_session_timeout`` cannot do it: a psycopg pipeline (every
``executemany``) leaves the server's idle timer unarmed until the next plain query.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from smartpush_plugin_klaviyo.errors import DatabaseBusy
from smartpush_plugin_klaviyo.timeutil import to_utc

log = logging.getLogger(__name__)

_SQLITE_BUSY = ("database is locked", "database table is locked", "database schema is locked")
_PG_LOCK_NOT_AVAILABLE = "55P03"
"""SQLSTATE ``lock_not_available``: ``lock_timeout`` ran out (or ``NOWAIT`` refused)."""


def _chain(exc: BaseException):
    """``exc``, the driver error SQLAlchemy wraps (``.orig``) and their causes, once each."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo.extend((getattr(e, "orig", None), e.__cause__, e.__context__))


def as_busy(exc: BaseException) -> DatabaseBusy | None:
    """A :class:`DatabaseBusy` when ``exc`` is a lock wait that exceeded the database's
    bound, else ``None``. ``exc`` itself when it is one already."""
    for e in _chain(exc):
        if isinstance(e, DatabaseBusy):
            return e
        if getattr(e, "sqlstate", None) == _PG_LOCK_NOT_AVAILABLE:
            return DatabaseBusy(
                "the database stayed locked longer than PostgreSQL's lock_timeout (another transaction, "
                "maybe a frozen worker's, holds a row this sync writes); the run resumes from its checkpoint"
            )
        if type(e).__module__ == "sqlite3" and any(text in str(e) for text in _SQLITE_BUSY):
            return DatabaseBusy(
                "the database stayed locked longer than SQLite's busy timeout (SQLite has one writer at a "
                "time and another one, maybe a frozen worker, holds it); the run resumes from its checkpoint"
            )
    return None


def _session_name(store_id: str) -> str:
    """The ``application_name`` a store's fenced transactions carry (63 bytes at most)."""
    return "klaviyo-sync:" + hashlib.sha1(store_id.encode()).hexdigest()[:16]


def mark_session(tx, store_id: str) -> None:
    """PostgreSQL: name this transaction's session after the store (``SET LOCAL``, undone at
    its end), so the worker that takes the store's lease over can find a transaction its
    frozen predecessor left open (:func:`end_frozen_transactions`). No-op elsewhere."""
    if tx.dialect.name == "postgresql":
        tx.exec_driver_sql(f"SET LOCAL application_name = '{_session_name(store_id)}'")


def end_frozen_transactions(storage, store_id: str, expired_at: datetime) -> int:
    """PostgreSQL: end the sessions of ``store_id``'s fenced transactions that went idle
    before the lease expired at ``expired_at`` and never came back: a worker frozen
    (SIGSTOP, a paused VM) inside one still holds its row locks, and the next lease holder
    would wait on them until ``lock_timeout``. Its transaction rolls back (it could not
    commit anyway: its fence is another worker's now). Returns how many were ended; ``0``
    on other databases or without the right to signal them (then the wait stays bounded
    by ``lock_timeout``).

    Only sessions idle in a transaction, or stuck writing to a client that does not read
    (``ClientWrite``), are ended: a live worker's transaction is never idle that long.
    """
    if storage.engine.dialect.name != "postgresql":
        return 0
    try:
        with storage.engine.connect() as conn:
            ended = conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = :name "
                    "AND state_change < :expired "
                    "AND (state LIKE 'idle in transaction%' OR wait_event = 'ClientWrite')"
                ),
                {"name": _session_name(store_id), "expired": to_utc(expired_at)},
            ).scalar_one()
            conn.commit()
    except DBAPIError:
        log.warning("store %s: could not end a frozen worker's transaction", store_id, exc_info=True)
        return 0
    if ended:
        log.warning("store %s: ended %d transaction(s) a frozen worker left open past its lease", store_id, ended)
    return ended
