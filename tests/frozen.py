"""Freezing real worker processes (SIGSTOP) and telling whether they hold database locks."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time

from sqlalchemy import create_engine, text


def stop(proc: subprocess.Popen) -> None:
    """SIGSTOP ``proc`` and wait until every thread of it has stopped (delivery is asynchronous:
    a thread may still take a lock between ``kill`` and its stop)."""
    proc.send_signal(signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        states = []
        for task in os.listdir(f"/proc/{proc.pid}/task"):
            try:
                with open(f"/proc/{proc.pid}/task/{task}/stat") as f:
                    raw = f.read()
            except FileNotFoundError:  # a thread that just ended
                continue
            states.append(raw[raw.rfind(")") + 2])
        if all(s in "tTZX" for s in states):
            return
        time.sleep(0.002)
    raise AssertionError("the process did not stop")


def sqlite_write_locked(db_url: str) -> bool:
    """Whether a connection holds SQLite's one write lock (``BEGIN IMMEDIATE`` without waiting)."""
    conn = sqlite3.connect(db_url.removeprefix("sqlite:///"), timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        conn.close()


def pg_idle_writer(db_url: str) -> bool:
    """Whether another session sits idle in a transaction that has written or locked rows."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return bool(conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND state = 'idle in transaction' AND backend_xid IS NOT NULL"
            )).scalar())
    finally:
        engine.dispose()


def holds_write_locks(db_url: str) -> bool:
    return pg_idle_writer(db_url) if db_url.startswith("postgresql") else sqlite_write_locked(db_url)


def freeze_when(proc: subprocess.Popen, locked: bool, db_url: str, timeout: float = 120) -> None:
    """Stop ``proc`` at a moment it holds write locks (``locked``) or holds none, retrying."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, "the process ended before it could be frozen at the right moment"
        assert time.monotonic() < deadline, "never caught the process at the right moment"
        stop(proc)
        if holds_write_locks(db_url) == locked:
            return
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.003)
