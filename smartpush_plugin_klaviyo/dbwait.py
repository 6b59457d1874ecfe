"""Bounded waits on the host database: which failures are a lock wait that ran out, and
how long a worker's open transaction may sit idle.

The host bounds every lock wait (SQLite's busy timeout, PostgreSQL's ``lock_timeout``);
past it the driver raises an ``OperationalError`` whose text depends on the database.
:func:`as_busy` turns exactly those into :class:`~smartpush_plugin_klaviyo.errors.DatabaseBusy`,
a transient failure of the run with a message that names the database and no value.
"""

from __future__ import annotations

from smartpush_plugin_klaviyo.errors import DatabaseBusy

_SQLITE_BUSY = ("database is locked", "database table is locked", "database schema is locked")
_PG_LOCK_NOT_AVAILABLE = "55P03"
"""SQLSTATE ``lock_not_available``: ``lock_timeout`` ran out (or ``NOWAIT`` refused)."""

MIN_IDLE_MS = 1_000


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


def bound_idle(tx, milliseconds: float) -> None:
    """PostgreSQL: end this transaction's session if it sits idle in the transaction longer
    than ``milliseconds`` (at least one second), so a worker frozen mid-transaction (SIGSTOP,
    a paused VM) releases its row locks by itself instead of blocking the next lease holder.
    Its transaction is rolled back; nothing is committed. No-op on other databases (SQLite's
    one writer cannot be released from outside: see the README's reliability section)."""
    if tx.dialect.name != "postgresql":
        return
    ms = max(MIN_IDLE_MS, int(milliseconds))
    tx.exec_driver_sql(f"SET LOCAL idle_in_transaction_session_timeout = {ms}")
