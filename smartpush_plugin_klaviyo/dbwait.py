"""Bounded waits on the host database: which failures are a lock wait that ran out, and
ending the transaction a frozen worker left open.

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
import time

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from smartpush_plugin_klaviyo.errors import DatabaseBusy

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


END_ROUNDS = 5
"""Rounds of :func:`end_frozen_transactions`: ending one transaction of a frozen worker can
let another of its sessions (a renewal queued behind it) take the lock, and freeze holding it."""


def end_frozen_transactions(storage, store_id: str) -> int:
    """PostgreSQL: end the sessions holding ``store_id``'s fenced transactions open while
    idle. Called by a worker about to take over a lease its holder let *expire*: a holder
    frozen (SIGSTOP, a paused VM) inside such a transaction still holds its row locks, and
    the new holder would wait on them until ``lock_timeout``. The transaction rolls back;
    its worker finds its lease lost. Returns how many were ended; ``0`` on other databases
    or without the right to signal them (then the wait stays bounded by ``lock_timeout``).

    Only the store's named sessions (:func:`mark_session`: the fenced transactions and
    renewals of its lease holders, whose lease has expired) are ended, and only those idle
    in a transaction, waiting for a lock, or stuck writing to a client that does not read;
    a competing taker's session is not named.
    """
    if storage.engine.dialect.name != "postgresql":
        return 0
    total = 0
    try:
        with storage.engine.connect() as conn:
            for _ in range(END_ROUNDS):
                ended = conn.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                        "AND application_name = :name AND (state LIKE 'idle in transaction%' "
                        "OR wait_event_type = 'Lock' OR wait_event = 'ClientWrite')"
                    ),
                    {"name": _session_name(store_id)},
                ).scalar_one()
                conn.commit()
                if not ended:
                    break
                total += ended
                time.sleep(0.1)  # let a session queued behind the ended ones move on
    except DBAPIError:
        log.warning("store %s: could not end a frozen worker's transaction", store_id, exc_info=True)
    if total:
        log.warning("store %s: ended %d transaction(s) a frozen worker left open past its lease", store_id, total)
    return total
