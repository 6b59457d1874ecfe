"""Writes are fenced by the lease: a worker that lost it commits nothing (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from klaviyo_standin import DEFAULT_API_KEY, generate_account
from sqlalchemy import func, select, update

from smartpush_devhost.models import SpContact
from smartpush_plugin_klaviyo import lease
from smartpush_plugin_klaviyo.errors import LeaseLost
from smartpush_plugin_klaviyo.state import lease_t, profile_map_t, run_t, stream_t
from tests.harness import Harness
from tests import test_lifecycle

h = test_lifecycle.h  # the same host fixture
server = test_lifecycle.server  # and stand-in server fixture


@pytest.fixture
def account():
    return generate_account(profiles=3000, seed=44)


def _audit(h: Harness) -> tuple:
    """Rows and checkpoints a sync writes: contacts, mappings, streams' positions, runs."""
    with h.host.storage.transaction(readonly=True) as tx:
        contacts = tx.execute(select(func.count()).select_from(SpContact.__table__)).scalar_one()
        mapped = tx.execute(select(func.count()).select_from(profile_map_t)).scalar_one()
        streams = sorted(tuple(r) for r in tx.execute(select(stream_t.c.key, stream_t.c.next_url, stream_t.c.done)))
        runs = sorted(tuple(r) for r in tx.execute(select(run_t.c.run_id, run_t.c.phase, run_t.c.finished_at)))
    return contacts, mapped, streams, runs


def test_a_transaction_of_a_worker_that_lost_the_lease_commits_nothing(h):
    h.install_and_authorize(DEFAULT_API_KEY)
    storage = h.host.storage
    assert lease.acquire(storage, h.store, "worker-a")
    with storage.transaction() as tx:
        lease.fence(tx, h.store, "worker-a")  # still the holder: passes
    with storage.transaction() as tx:  # the lease expired and another worker took it
        tx.execute(update(lease_t).where(lease_t.c.store_id == h.store).values(owner="worker-b"))
    before = _audit(h)
    with pytest.raises(LeaseLost), storage.transaction() as tx:
        tx.execute(update(lease_t).where(lease_t.c.store_id == h.store).values(owner="worker-a-wrote-this"))
        lease.fence(tx, h.store, "worker-a")
    with storage.transaction(readonly=True) as tx:
        assert tx.execute(select(lease_t.c.owner)).scalar_one() == "worker-b"  # rolled back
    assert _audit(h) == before


def test_a_sync_whose_lease_is_taken_over_mid_run_writes_nothing_after(h):
    h.install_and_authorize(DEFAULT_API_KEY)
    storage = h.host.storage
    taken = threading.Event()
    snapshot: list = []

    def take_over_once_writing() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if _audit(h)[1] > 0:  # the run has mapped some profiles
                with storage.transaction() as tx:  # what a worker taking an expired lease commits
                    tx.execute(update(lease_t).where(lease_t.c.store_id == h.store).values(owner="new-worker"))
                snapshot.append(_audit(h))
                taken.set()
                return
            time.sleep(0.01)

    thief = threading.Thread(target=take_over_once_writing)
    thief.start()
    h.server.latency = 0.2  # a run that lasts: the takeover lands mid-run even on a busy machine
    try:
        report = h.sync("full")
    finally:
        h.server.latency = 0.0
    thief.join()
    assert taken.is_set(), "the run finished before the takeover"
    assert report.outcome == "cancelled", report.message
    assert "lease" in report.message
    assert _audit(h) == snapshot[0]
    assert _audit(h)[1] < 3000


def test_a_taker_ends_the_transaction_a_frozen_holder_left_open_on_postgresql(db_url, h):
    """A holder frozen inside a fenced transaction keeps its row locks; the worker taking its
    expired lease over ends that transaction instead of waiting on them, and nothing of it
    commits. (Waits that stay bounded by lock_timeout: tests/test_lock_waits.py.)"""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite's one writer cannot be ended from outside (README, reliability)")
    from sqlalchemy.exc import DBAPIError

    from smartpush_devhost import storage as storage_mod

    frozen, taker = storage_mod.SqlStorage(db_url), storage_mod.SqlStorage(db_url)
    h.install_and_authorize(DEFAULT_API_KEY)  # creates the plugin's tables
    lease.acquire(frozen, "shop", "frozen-worker", ttl=timedelta(seconds=-1))  # expired: others may take it
    with pytest.raises(DBAPIError):
        with frozen.transaction() as tx:
            lease.fence(tx, "shop", "frozen-worker")
            tx.execute(update(lease_t).where(lease_t.c.store_id == "shop").values(owner="frozen-wrote-this"))
            started = time.monotonic()
            assert lease.acquire(taker, "shop", "other-worker")  # the row lock did not hold it up
            assert time.monotonic() - started < 5
            tx.execute(select(1))  # the frozen worker wakes: its session is gone
    with taker.transaction(readonly=True) as tx:
        assert tx.execute(select(lease_t.c.owner).where(lease_t.c.store_id == "shop")).scalar_one() == "other-worker"
    frozen.engine.dispose()
    taker.engine.dispose()

def test_the_lease_duration_is_a_host_setting_renewed_every_third():
    from smartpush_plugin_klaviyo.service import options_from_settings

    assert options_from_settings({}).lease_seconds == 60
    assert options_from_settings({"KLAVIYO_LEASE_SECONDS": "9"}).lease_seconds == 9
    assert options_from_settings({"KLAVIYO_LEASE_SECONDS": "1"}).lease_seconds == lease.MIN_LEASE_SECONDS
    assert lease.renew_interval(60) == 20 and lease.renew_interval(timedelta(seconds=9)) == 3


def test_a_sync_takes_the_lease_for_the_configured_duration(h, monkeypatch):
    from smartpush_plugin_klaviyo.timeutil import to_utc, utcnow

    h.install_and_authorize(DEFAULT_API_KEY)
    h.host.settings["KLAVIYO_LEASE_SECONDS"] = "7"
    taken = []
    real_acquire = lease.acquire

    def acquire(storage, store_id, owner, ttl=lease.LEASE_TTL):
        asked = utcnow()  # here, not before the sync: its start-up is no part of the lease
        ok = real_acquire(storage, store_id, owner, ttl)
        with storage.transaction(readonly=True) as tx:
            taken.append((asked, to_utc(tx.execute(select(lease_t.c.expires_at)).scalar_one())))
        return ok

    monkeypatch.setattr(lease, "acquire", acquire)
    assert h.sync("full").outcome == "completed"
    asked, expires = taken[0]
    assert 6 <= (expires - asked).total_seconds() <= 8
