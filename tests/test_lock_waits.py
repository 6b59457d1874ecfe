"""Lock waits are bounded with a typed error, and one frozen worker never blocks another store.

Real SQLite and PostgreSQL: a second connection (or a real SIGSTOPped ``smartpush`` process)
holds the lock; the waiting sync fails with
:class:`~smartpush_plugin_klaviyo.errors.DatabaseBusy` after the database's bound (SQLite's
busy timeout, PostgreSQL's ``lock_timeout``), counted as a failed attempt, and the next run
resumes from its checkpoint.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import threading
import time

import pytest
from klaviyo_standin import DEFAULT_API_KEY, generate_account
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from smartpush_devhost import storage as storage_mod
from smartpush_plugin_klaviyo import dbwait
from smartpush_plugin_klaviyo.errors import DatabaseBusy
from smartpush_plugin_klaviyo.state import integration_t, profile_map_t
from tests import expectations as exp
from tests import frozen
from tests.harness import Harness, cli_environment, make_host
from tests.test_end_to_end_cli import smartpush
from tests import test_lifecycle

server = test_lifecycle.server  # the stand-in serving ``account``

BOUND_MS = 1_000


@pytest.fixture
def account():
    return generate_account(profiles=1500, seed=71)


@pytest.fixture
def h(monkeypatch, db_url, tmp_path, server, account):
    """A host whose lock waits end after one second (the defaults are 30 s)."""
    monkeypatch.setattr(storage_mod, "SQLITE_BUSY_TIMEOUT_MS", BOUND_MS)
    monkeypatch.setattr(storage_mod, "POSTGRES_LOCK_TIMEOUT_MS", BOUND_MS)
    host = make_host(db_url, tmp_path, server)
    yield Harness(host=host, server=server, account=account)
    host.close()


def _bound_name(db_url: str) -> str:
    return "lock_timeout" if db_url.startswith("postgresql") else "busy timeout"


def test_driver_lock_timeouts_are_recognised_and_nothing_else():
    locked = sqlite3.OperationalError("database is locked")
    assert isinstance(dbwait.as_busy(locked), DatabaseBusy)
    assert dbwait.as_busy(sqlite3.OperationalError("no such table: x")) is None
    assert dbwait.as_busy(ValueError("database is locked")) is None  # not the driver's
    wrapped = RuntimeError("wrapper")
    wrapped.__cause__ = locked
    assert "busy timeout" in str(dbwait.as_busy(wrapped))


def test_a_lock_held_past_the_bound_mid_run_fails_the_run_typed_then_it_resumes(h, db_url, monkeypatch):
    h.install_and_authorize(DEFAULT_API_KEY)
    holder = storage_mod.SqlStorage(db_url)  # another worker's connection
    held, gave_up = threading.Event(), threading.Event()
    real_as_busy = dbwait.as_busy

    def as_busy(exc):  # the real classification; tells the holder when the run gave up
        busy = real_as_busy(exc)
        if busy is not None:
            gave_up.set()
        return busy

    monkeypatch.setattr(dbwait, "as_busy", as_busy)

    def hold_the_lock_once_writing() -> None:
        deadline = time.monotonic() + 120
        mapped = select(func.count()).select_from(profile_map_t)
        while time.monotonic() < deadline:
            with holder.transaction(readonly=True) as tx:
                if tx.execute(mapped).scalar_one() > 0:
                    break
            time.sleep(0.01)
        while not held.is_set() and time.monotonic() < deadline:
            try:
                with holder.transaction() as tx:
                    # SQLite: BEGIN IMMEDIATE holds the one write lock. PostgreSQL: the store's row.
                    tx.execute(select(integration_t.c.epoch).where(integration_t.c.store_id == h.store).with_for_update())
                    held.set()
                    gave_up.wait(60)  # past the sync's bound; then its failure can be counted
            except OperationalError as exc:
                # The holder's own wait has the same one-second bound: on a busy machine the
                # run's writes can outlast it. Only a lock wait is tried again.
                if held.is_set() or real_as_busy(exc) is None:
                    raise

    thread = threading.Thread(target=hold_the_lock_once_writing)
    thread.start()
    h.server.latency = 0.2  # the run is still writing when the lock is taken
    try:
        report = h.sync("full")
    finally:
        h.server.latency = 0.0
        thread.join()
        holder.dispose()
    assert held.is_set()
    assert report.outcome == "failed", report.message
    assert _bound_name(db_url) in report.message and "resumes from its checkpoint" in report.message
    assert "Traceback" not in report.message and "OperationalError" not in report.message
    with h.host.storage.transaction(readonly=True) as tx:
        assert tx.execute(select(integration_t.c.consecutive_errors)).scalar_one() == 1  # a counted failure

    again = h.sync("full")
    assert again.outcome == "completed", again.message
    assert again.resumed, "the next run resumes from the checkpoints"
    exp.assert_exact_import(h.account, h.export())


def test_a_sync_that_cannot_get_the_lock_at_all_fails_typed_within_the_bound(h, db_url):
    h.install_and_authorize(DEFAULT_API_KEY)
    holder = storage_mod.SqlStorage(db_url)
    try:
        with holder.transaction() as tx:
            tx.execute(select(integration_t.c.epoch).where(integration_t.c.store_id == h.store).with_for_update())
            started = time.monotonic()
            report = h.sync("full")
            waited = time.monotonic() - started
    finally:
        holder.dispose()
    assert report.outcome == "failed", report.message
    assert _bound_name(db_url) in report.message
    assert waited < 10 * BOUND_MS / 1000, waited  # a few bounded waits, never an endless one
    assert h.sync("full").outcome == "completed"


@pytest.mark.slow
def test_a_worker_frozen_mid_write_blocks_no_other_store_past_the_bound(h, db_url, tmp_path, server):
    """PostgreSQL locks rows of one store: store B syncs to completion while store A's worker
    is frozen inside a write transaction. SQLite has one writer for the whole file: store B's
    sync fails with the typed error after the busy timeout, and completes once A is gone."""
    env = cli_environment(tmp_path / "a", db_url, server)
    env["SMARTPUSH_STORE"] = "store-a"
    smartpush(env, "install", "klaviyo")
    smartpush({**env, "KLAVIYO_API_KEY": DEFAULT_API_KEY}, "authorize", "klaviyo")
    h.install_and_authorize(DEFAULT_API_KEY)  # store B ("shop"), in this process
    server.latency = 0.05
    a = subprocess.Popen(["smartpush", "sync", "klaviyo", "--full"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        frozen.freeze_when(a, locked=True, db_url=db_url)
        server.latency = 0.0
        started = time.monotonic()
        report = h.sync("full")
        waited = time.monotonic() - started
        if db_url.startswith("postgresql"):
            assert report.outcome == "completed", report.message
            assert frozen.pg_idle_writer(db_url), "store A's worker held its locks throughout"
            exp.assert_exact_import(h.account, h.export())
            return
        assert report.outcome == "failed", report.message
        assert "busy timeout" in report.message
        assert waited < 10 * BOUND_MS / 1000, waited
    finally:
        a.kill()  # a killed process's SQLite lock goes with it
        a.send_signal(signal.SIGCONT)
        a.wait()
        server.latency = 0.0
    again = h.sync("full")  # A is gone: B runs (resuming what it had written, if anything)
    assert again.outcome == "completed", again.message
    exp.assert_exact_import(h.account, h.export())
