"""The daily schedule, and several worker processes syncing several stores of one database."""

from __future__ import annotations

import subprocess
import time
from datetime import timedelta

import pytest
from klaviyo_standin import DEFAULT_API_KEY, generate_account
from sqlalchemy import func, select

from smartpush_plugin_klaviyo.state import run_t
from tests import expectations as exp
from tests.harness import Harness, cli_environment, make_host
from tests.test_end_to_end_cli import smartpush


@pytest.fixture
def account():
    return generate_account(profiles=300, seed=31)


def test_authorize_schedules_a_daily_sync_that_the_scheduler_runs(db_url, tmp_path, server, account):
    host = make_host(db_url, tmp_path, server)
    h = Harness(host=host, server=server, account=account)
    h.install_and_authorize(DEFAULT_API_KEY)
    first = h.ctx.scheduler.next_run("klaviyo")
    runs = host.run_due(h.pm)
    assert [r.outcome for r in runs] == ["completed"]
    assert runs[0].report.mode == "full"  # the first scheduled run imports everything
    next_run = h.ctx.scheduler.next_run("klaviyo")
    assert next_run - first >= timedelta(hours=23)
    assert host.run_due(h.pm) == []  # nothing due until tomorrow
    account.update_profile(account.profile_ids()[0], {"first_name": "Tomorrow"})
    runs = host.run_due(h.pm, now=next_run + timedelta(seconds=1))
    assert [r.outcome for r in runs] == ["completed"]
    assert runs[0].report.mode == "incremental"
    assert runs[0].report.counts["profiles_seen"] >= 1
    # Cancel Integration removes the job.
    h.call("uninstall")
    assert host.run_due(h.pm, now=next_run + timedelta(days=3)) == []
    host.close()


def test_a_dead_workers_lease_is_taken_over_at_once(db_url, tmp_path, server, account):
    from smartpush_plugin_klaviyo import lease

    host = make_host(db_url, tmp_path, server)
    h = Harness(host=host, server=server, account=account)
    h.install_and_authorize(DEFAULT_API_KEY)
    import socket

    dead = f"{socket.gethostname()}:{2**22 + 12345}:deadbeef"  # a pid that does not exist
    assert lease.acquire(host.storage, h.store, dead)
    assert h.sync("full").outcome == "completed"
    host.close()


# A worker that takes the store's lease under its own owner id, says so, and waits.
_HOLD_LEASE = """
import sys, time
from smartpush_devhost.storage import SqlStorage
from smartpush_plugin_klaviyo import lease
assert lease.acquire(SqlStorage(sys.argv[1]), sys.argv[2], lease.new_owner_id())
print("held", flush=True)
time.sleep(600)
"""


def test_a_sigkilled_workers_lease_is_taken_over_at_once_even_as_a_zombie(db_url, tmp_path, server, account):
    """A worker killed with SIGKILL and not yet reaped is a zombie: kill(pid, 0) still succeeds."""
    import os
    import signal
    import sys

    host = make_host(db_url, tmp_path, server)
    h = Harness(host=host, server=server, account=account)
    h.install_and_authorize(DEFAULT_API_KEY)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LEASE, db_url, h.store],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        os.kill(holder.pid, signal.SIGKILL)
        for _ in range(200):  # until the kernel has made it a zombie (it is never reaped here)
            with open(f"/proc/{holder.pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            time.sleep(0.01)
        else:
            pytest.fail("the killed worker never became a zombie")
        report = h.sync("full")
        assert report.outcome == "completed", report.message
    finally:
        holder.wait()
    host.close()


def test_a_reused_pid_does_not_keep_a_dead_workers_lease(db_url, tmp_path, server, account):
    """An owner naming a live PID with another start time is a dead worker whose PID was reused."""
    import os
    import socket

    from smartpush_plugin_klaviyo import lease, processes

    host = make_host(db_url, tmp_path, server)
    h = Harness(host=host, server=server, account=account)
    h.install_and_authorize(DEFAULT_API_KEY)
    parent = os.getppid()  # alive, and not this process
    real_start = processes.start_time(parent)
    assert real_start
    assert not lease._dead_local_owner(f"{socket.gethostname()}:{parent}:{real_start}:cafe0001")
    reused = f"{socket.gethostname()}:{parent}:{real_start + 1}:cafe0002"
    assert lease.acquire(host.storage, h.store, reused)
    assert h.sync("full").outcome == "completed"
    host.close()


@pytest.mark.slow
def test_worker_processes_sync_many_stores_concurrently(db_url, tmp_path, server, account):
    """Four stores, three `smartpush scheduler run --once` processes at once, one database."""
    env = cli_environment(tmp_path, db_url, server)
    stores = [f"shop{i}" for i in range(4)]
    for store in stores:
        smartpush(env, "--store", store, "install", "klaviyo")
        smartpush({**env, "KLAVIYO_API_KEY": DEFAULT_API_KEY}, "--store", store, "authorize", "klaviyo")
    workers = [
        subprocess.Popen(["smartpush", "scheduler", "run", "--once"], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    for w in workers:
        out, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
    expected_tags = exp.expected_profile_tags(account)
    importable = {p["id"] for p in account.iter_profiles() if exp.valid_email(p["attributes"].get("email"))}
    host = make_host(db_url, tmp_path, server)
    for store in stores:
        h = Harness(host=host, server=server, account=account, store=store)
        contacts = h.export()
        kids = [k for c in contacts for k in c["klaviyo_ids"]]
        assert len(kids) == len(set(kids))
        assert importable <= set(kids), store
        for c in contacts:
            want = set()
            for kid in c["klaviyo_ids"]:
                want |= expected_tags.get(kid, set())
            assert set(c["tags"]) == want
        with host.storage.transaction() as tx:
            completed = tx.execute(
                select(func.count()).select_from(run_t).where(run_t.c.store_id == store, run_t.c.outcome == "completed")
            ).scalar_one()
        assert completed == 1, f"store {store} was synced {completed} times"
        assert h.status().state.value == "syncing"
    host.close()
