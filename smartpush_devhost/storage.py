"""The host database: one SQLAlchemy engine, transactions, host table creation.

SQLite (the default) is tuned for several processes writing at once (the CLI, a
scheduler worker, tests): WAL journal, a long ``busy_timeout``, and every write
transaction opened with ``BEGIN IMMEDIATE``. Without IMMEDIATE, two deferred
transactions that both read then write deadlock on the lock upgrade and one fails
with "database is locked" at once, busy timeout or not.

PostgreSQL works by changing the URL (``postgresql+psycopg://...``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url

from smartpush_devhost import schema_upgrade
from smartpush_devhost.models import HOST_TABLES
from sqlmodel import SQLModel

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000
POSTGRES_LOCK_TIMEOUT_MS = 30_000
"""A statement waiting longer for a row or table lock fails (``LockNotAvailable``) instead of
waiting for ever behind a frozen worker's open transaction: the same bound as SQLite's."""


def _precreate_private(path: str) -> None:
    """Create the SQLite file 0600 before SQLite does (it would honour the umask):
    even encrypted, the blind indexes are nobody else's business. SQLite gives the
    -wal and -shm files the main file's permissions."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


class SqlStorage:
    """Implements :class:`hookspecs.interfaces.Storage` on a SQLAlchemy engine.

    :param url: a SQLAlchemy URL, e.g. ``sqlite:////path/smartpush.db`` or
        ``postgresql+psycopg://user@host/db``.

    Nesting: :meth:`transaction` called while the same thread already has a
    transaction open on this storage joins it through a SAVEPOINT instead of opening
    a second connection. That lets a plugin call ``host.secrets.put()`` (which opens
    its own transaction) inside its own ``with storage.transaction()`` block without
    deadlocking on SQLite's single writer lock.
    """

    def __init__(self, url: str, *, echo: bool = False):
        self.url = make_url(url)
        self.dialect = self.url.get_backend_name()
        self.engine: Engine = self._make_engine(echo)
        self._local = threading.local()

    def __repr__(self) -> str:
        # render_as_string hides the password by default
        return f"SqlStorage({self.url.render_as_string(hide_password=True)!r})"

    # ------------------------------------------------------------------ engine
    def _make_engine(self, echo: bool) -> Engine:
        if self.dialect == "sqlite":
            return self._make_sqlite_engine(echo)
        # hide_parameters: bound values (blind indexes, ciphertexts, plugin data) never
        # appear in SQLAlchemy's exception messages or echo logs
        return create_engine(
            self.url, echo=echo, pool_pre_ping=True, hide_parameters=True,
            connect_args={"options": f"-c lock_timeout={POSTGRES_LOCK_TIMEOUT_MS}"},
        )

    def _make_sqlite_engine(self, echo: bool) -> Engine:
        database = self.url.database or ""
        in_memory = database in ("", ":memory:")
        kwargs: dict = {
            "echo": echo,
            "hide_parameters": True,
            "connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        }
        if not in_memory and not database.startswith("file:"):
            _precreate_private(database)
        if in_memory:
            # a private in-memory DB per connection would lose data; share one connection
            from sqlalchemy.pool import StaticPool

            kwargs["poolclass"] = StaticPool
        engine = create_engine(self.url, **kwargs)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):  # pragma: no cover - trivial
            # pysqlite recipe: take transaction control away from the driver so
            # the "begin" event below decides how transactions start.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            if not in_memory:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            # Checkpoint (and fsync) every ~40 MB of WAL instead of every 4 MB: bulk
            # imports commit small batches, and the default made each commit ~50%
            # slower. journal_size_limit truncates the WAL back after a checkpoint.
            cur.execute("PRAGMA wal_autocheckpoint=10000")
            cur.execute("PRAGMA journal_size_limit=67108864")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection):
            # Write lock up front: no deadlocking upgrade from a read lock later.
            # Read-only transactions (``transaction(readonly=True)``) stay deferred so
            # long exports don't block writers (WAL readers never block).
            mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
            conn.exec_driver_sql(f"BEGIN {mode}")

        return engine

    # ------------------------------------------------------------ transactions
    @contextmanager
    def transaction(self, *, readonly: bool = False) -> Iterator[Connection]:
        """Open a transaction; commit when the block exits normally, else roll back.

        :param readonly: on SQLite, start a deferred (read) transaction instead of
            taking the write lock; ignored elsewhere.
        """
        stack: list[Connection] = self._local.__dict__.setdefault("stack", [])
        if stack:
            conn = stack[-1]
            with conn.begin_nested():
                yield conn
            return
        conn = self.engine.connect()
        if readonly and self.dialect == "sqlite":
            conn = conn.execution_options(sqlite_begin="DEFERRED")
        stack.append(conn)
        try:
            with conn.begin():
                yield conn
        finally:
            stack.pop()
            conn.close()

    def create_all(self) -> None:
        """Create the host tables if they do not exist and upgrade the ones an older
        version created (:mod:`smartpush_devhost.schema_upgrade`); idempotent, safe
        concurrently."""
        # checkfirst + IF NOT EXISTS races are harmless on SQLite under BEGIN IMMEDIATE;
        # on PostgreSQL a concurrent creator may win, so retry once.
        try:
            SQLModel.metadata.create_all(self.engine, tables=HOST_TABLES)
        except Exception:  # pragma: no cover - rare race between processes
            log.debug("create_all raced with another process; retrying")
            SQLModel.metadata.create_all(self.engine, tables=HOST_TABLES)
        schema_upgrade.upgrade(self.engine)

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
