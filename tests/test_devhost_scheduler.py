"""Scheduler: per-store jobs, and due jobs claimed exactly once across workers."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from hookspecs import get_plugin_manager, hookimpl
from smartpush_devhost.host import DevHost
from smartpush_devhost.models import utcnow
from smartpush_devhost.scheduler import run_loop
from hookspecs.types import SyncReport


class CountingPlugin:
    """Records every sync call; slow enough that two workers overlap."""

    def __init__(self, delay: float = 0.0):
        self.calls: list[tuple[str, str, str]] = []
        self.delay = delay
        self.lock = threading.Lock()

    @hookimpl
    def smartpush_sync(self, integration, host, mode):
        if integration != "fake":
            return None
        with self.lock:
            self.calls.append((host.store_id, integration, mode))
        threading.Event().wait(self.delay)
        return SyncReport(integration=integration, store_id=host.store_id, mode=mode, outcome="completed")


@pytest.fixture
def plugin():
    pm = get_plugin_manager(load_entry_points=False)
    p = CountingPlugin(delay=0.05)
    pm.register(p)
    yield pm, p
    pm.unregister(p)


def test_schedule_next_run_unschedule(tmp_path, db_url, store_ids):
    store, other = store_ids(2)
    host = DevHost(db_url, tmp_path, env={})
    sched = host.context(store).scheduler
    assert sched.next_run("fake") is None
    first = utcnow() + timedelta(hours=1)
    sched.schedule("fake", every=timedelta(days=1), first_run=first)
    assert abs((sched.next_run("fake") - first).total_seconds()) < 1e-3
    sched.schedule("fake", every=timedelta(hours=2))  # idempotent: next run kept
    assert abs((sched.next_run("fake") - first).total_seconds()) < 1e-3
    assert host.context(other).scheduler.next_run("fake") is None  # other store
    sched.unschedule("fake")
    assert sched.next_run("fake") is None


def test_due_job_runs_once_with_two_workers(tmp_path, db_url, store_ids, plugin):
    pm, p = plugin
    a, b = store_ids(2)
    hosts = [DevHost(db_url, tmp_path, env={}) for _ in range(2)]  # two engines, like two processes
    now = utcnow()
    hosts[0].context(a).scheduler.schedule("fake", every=timedelta(days=1), first_run=now - timedelta(seconds=1))
    hosts[0].context(b).scheduler.schedule("fake", every=timedelta(days=1), first_run=now + timedelta(hours=1))
    barrier = threading.Barrier(2)
    results = {}

    def work(i):
        barrier.wait()
        results[i] = hosts[i].run_due(pm, now=now, worker_id=f"w{i}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert p.calls == [(a, "fake", "incremental")]
    assert sorted(len(r) for r in results.values()) == [0, 1]
    next_run = hosts[0].context(a).scheduler.next_run("fake")
    assert abs((next_run - (now + timedelta(days=1))).total_seconds()) < 1e-3
    # not due again until a day later
    assert hosts[1].run_due(pm, now=now + timedelta(hours=23), store=a) == []
    runs = hosts[1].run_due(pm, now=now + timedelta(days=1, seconds=1), store=a)
    assert [(r.store_id, r.outcome) for r in runs] == [(a, "completed")]
    assert len(p.calls) == 2


def test_unknown_integration_and_plugin_errors_keep_the_worker_alive(tmp_path, db_url, store_ids):
    (store,) = store_ids(1)
    host = DevHost(db_url, tmp_path, env={})

    class Exploding:
        @hookimpl
        def smartpush_sync(self, integration, host, mode):
            if integration == "boom":
                raise RuntimeError("plugin bug")
            return None

    pm = get_plugin_manager(load_entry_points=False)
    plugin = Exploding()
    pm.register(plugin)
    try:
        past = utcnow() - timedelta(minutes=1)
        sched = host.context(store).scheduler
        sched.schedule("boom", every=timedelta(hours=1), first_run=past)
        sched.schedule("nobody", every=timedelta(hours=1), first_run=past)
        outcomes = {r.integration: r.outcome for r in host.run_due(pm, store=store)}
        assert outcomes == {"boom": "error", "nobody": "no_plugin"}
        # a crashing plugin is retried soon, not a whole period later
        assert sched.next_run("boom") - utcnow() <= timedelta(minutes=15)
        assert sched.next_run("nobody") - utcnow() > timedelta(minutes=50)
        assert run_loop(host, pm, interval=0.01, max_rounds=2) == 0
    finally:
        pm.unregister(plugin)
