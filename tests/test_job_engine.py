"""The daily sync on the job engine (huey): claims, follow-ups after a kill, Cancel, and
worker processes on a real Redis server (and on the embedded SQLite queue)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from datetime import timedelta

import pytest
from klaviyo_standin import ALL_SCOPES, DEFAULT_API_KEY, StandInServer, generate_account
from sqlalchemy import func, select

from hookspecs import get_plugin_manager, hookimpl
from hookspecs.types import SyncReport
from smartpush_devhost.engine import handle_message, task_id
from smartpush_devhost.models import jobs_t, utcnow
from smartpush_plugin_klaviyo.state import lease_t, run_t
from tests.harness import CLOCK_SCALE, Harness, cli_environment, hold_member_pages, make_host

CLAIM_SECONDS = 3


@pytest.fixture(scope="module")
def account():
    return generate_account(profiles=120, seed=47)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """SMARTPUSH_TEST_REDIS_URL (started by .ci/run), else a redis-server of our own on a free port."""
    url = os.environ.get("SMARTPUSH_TEST_REDIS_URL")
    if url:
        import redis

        redis.Redis.from_url(url).flushdb()  # no messages left from an earlier run
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing (apt-get install redis-server)")
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


class _Recorder:
    """A plugin that records its syncs; ``interrupt`` makes the next one raise KeyboardInterrupt."""

    def __init__(self):
        self.calls: list[str] = []
        self.interrupt = False

    @hookimpl
    def smartpush_sync(self, integration, host, mode):
        if integration != "rec":
            return None
        self.calls.append(host.store_id)
        if self.interrupt:
            self.interrupt = False
            raise KeyboardInterrupt
        now = utcnow()
        return SyncReport(integration="rec", store_id=host.store_id, mode=mode, outcome="completed",
                          started_at=now, finished_at=now)


@pytest.fixture
def rec_host(tmp_path, db_url):
    from smartpush_devhost.host import DevHost

    host = DevHost(db_url, tmp_path / "home", {"SMARTPUSH_JOB_CLAIM_SECONDS": str(CLAIM_SECONDS)}, env={})
    pm = get_plugin_manager(load_entry_points=False)
    plugin = _Recorder()
    pm.register(plugin)
    yield host, pm, plugin
    host.close()


def _job(host, store):
    with host.storage.transaction(readonly=True) as tx:
        return tx.execute(select(jobs_t).where(jobs_t.c.store_id == store)).one_or_none()


def test_ctrl_c_during_a_run_leaves_the_job_due_now_not_tomorrow(rec_host, store_ids):
    host, pm, plugin = rec_host
    (store,) = store_ids(1)
    host.context(store).scheduler.schedule("rec", every=timedelta(days=1), first_run=utcnow())
    plugin.interrupt = True
    with pytest.raises(KeyboardInterrupt):
        host.run_due(pm)
    assert _job(host, store).next_run_at <= utcnow()  # the issue: it moved a day ahead
    assert [r.outcome for r in host.run_due(pm)] == ["completed"]
    assert _job(host, store).next_run_at > utcnow() + timedelta(hours=23)
    assert host.run_due(pm) == []
    assert plugin.calls == [store, store]


def test_a_killed_workers_job_runs_again_after_the_claim_timeout_once(rec_host, store_ids):
    host, pm, plugin = rec_host
    (store,) = store_ids(1)
    host.context(store).scheduler.schedule("rec", every=timedelta(days=1), first_run=utcnow())
    from smartpush_devhost.scheduler import claim

    job = _job(host, store)
    c = claim(host.storage, job, utcnow(), "dead-worker", timedelta(seconds=CLAIM_SECONDS))
    assert c is not None  # ... and the worker dies here: no heartbeat, no finish
    assert handle_message(host, pm, store, "rec", job.version) is None  # stale message: nothing
    assert handle_message(host, pm, store, "rec", c.version) is None  # follow-up too early: re-queued
    assert plugin.calls == []
    time.sleep(CLAIM_SECONDS + 0.2)
    run = handle_message(host, pm, store, "rec", c.version)
    assert run is not None and run.outcome == "completed"
    assert handle_message(host, pm, store, "rec", c.version) is None  # a duplicate follow-up does nothing
    assert plugin.calls == [store]
    assert _job(host, store).next_run_at > utcnow() + timedelta(hours=23)


def test_cancel_revokes_the_queued_job(rec_host, store_ids):
    host, pm, plugin = rec_host
    (store,) = store_ids(1)
    sched = host.context(store).scheduler
    sched.schedule("rec", every=timedelta(days=1), first_run=utcnow())
    version = _job(host, store).version
    huey = host.queue.huey
    assert task_id(store, "rec", version) in {t.id for t in huey.pending()}
    sched.unschedule("rec")
    assert _job(host, store) is None
    (message,) = [t for t in huey.pending() if t.id == task_id(store, "rec", version)]
    assert huey.is_revoked(message)
    assert handle_message(host, pm, store, "rec", version) is None
    assert plugin.calls == []
    # scheduled again later: a new version, not revoked
    sched.schedule("rec", every=timedelta(days=1), first_run=utcnow())
    assert _job(host, store).version != version


def _worker(env, *args):
    return subprocess.Popen(["smartpush", "worker", "--json", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _runs(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def _completed(host, store) -> int:
    with host.storage.transaction(readonly=True) as tx:
        return tx.execute(
            select(func.count()).select_from(run_t).where(run_t.c.store_id == store, run_t.c.outcome == "completed")
        ).scalar_one()


def _one_store(tmp_path, db_url, server, account, queue_url, **env_extra):
    """Store ``shop`` installed and authorized, a host on the queue, and the CLI's environment."""
    env = {**cli_environment(tmp_path, db_url, server), "SMARTPUSH_QUEUE_URL": queue_url, **env_extra}
    host = make_host(db_url, tmp_path, server, SMARTPUSH_QUEUE_URL=queue_url)
    h = Harness(host=host, server=server, account=account, store="shop")
    h.install_and_authorize(DEFAULT_API_KEY)
    return env, host, h


def _contacts(host, store) -> int:
    with host.storage.transaction(readonly=True) as tx:
        return host.context(store).contacts.count(tx)


def _engine_scenario(tmp_path, db_url, queue_url, n_stores, n_workers, kill):
    account = generate_account(profiles=120, seed=47)
    with StandInServer(account, api_keys={DEFAULT_API_KEY: ALL_SCOPES}, clock_scale=CLOCK_SCALE,
                       latency=0.02, rate_limits=False) as server:
        env = {**cli_environment(tmp_path, db_url, server), "SMARTPUSH_QUEUE_URL": queue_url,
               "SMARTPUSH_JOB_CLAIM_SECONDS": str(CLAIM_SECONDS)}
        host = make_host(db_url, tmp_path, server, SMARTPUSH_QUEUE_URL=queue_url)
        stores = [f"shop{i:02d}" for i in range(n_stores)]
        for store in stores:  # install + authorize schedule each store's first sync for now
            Harness(host=host, server=server, account=account, store=store).install_and_authorize(DEFAULT_API_KEY)
        workers = [_worker(env) for _ in range(n_workers)]
        killed_store = killed_at = None
        try:
            if kill:
                victim = workers[0]
                deadline = time.monotonic() + 60
                while killed_store is None:  # wait until worker 0 holds a store's lease mid-sync
                    assert time.monotonic() < deadline, "worker 0 never started a sync"
                    with host.storage.transaction(readonly=True) as tx:
                        owners = list(tx.execute(select(lease_t.c.store_id, lease_t.c.owner)))
                    mine = [s for s, owner in owners if f":{victim.pid}:" in owner]
                    if mine:
                        victim.send_signal(signal.SIGKILL)
                        victim.wait()  # reaped, as a supervisor would: no zombie pid holds the lease
                        killed_store, killed_at = mine[0], utcnow()
                    time.sleep(0.01)
            deadline = time.monotonic() + 180
            while not all(_completed(host, s) >= 1 for s in stores):
                assert time.monotonic() < deadline, "not every store was synced"
                assert all(w.poll() is None for w in workers[1 if kill else 0:]), "a worker died"
                time.sleep(0.2)
            time.sleep(0.5)  # anything that would run a store twice would have started by now
        finally:
            for w in workers:
                if w.poll() is None:
                    w.send_signal(signal.SIGINT)
            outputs = [w.communicate(timeout=60) for w in workers]
        runs = [r for i, (out, _) in enumerate(outputs) for r in _runs(out) if not (kill and i == 0)]
        for i, (w, (_, err)) in enumerate(zip(workers, outputs)):
            if not (kill and i == 0):
                assert w.returncode == 130, err  # stopped by SIGINT after its running syncs
        for store in stores:
            assert _completed(host, store) == 1, f"store {store} completed {_completed(host, store)} syncs"
            mine = sorted((r for r in runs if r["store_id"] == store), key=lambda r: r["started_at"])
            assert [r["outcome"] for r in mine] == ["completed"], (store, mine)
            nxt = _job(host, store).next_run_at
            assert nxt > utcnow() + timedelta(hours=23), "the next run is a day after this one"
        if kill:
            (retry,) = [r for r in runs if r["store_id"] == killed_store]
            started = retry["started_at"]
            assert started > killed_at.isoformat(), "the killed store's sync ran again after the kill"
            delay = (utcnow() - killed_at).total_seconds()
            assert delay < 120
        host.close()
        return killed_store


@pytest.mark.slow
def test_three_workers_on_redis_sync_twenty_stores_once_with_one_worker_killed(tmp_path, db_url, redis_url):
    assert _engine_scenario(tmp_path, db_url, redis_url + "", n_stores=20, n_workers=3, kill=True)


def test_embedded_sqlite_queue_worker_syncs_each_store_once(tmp_path, db_url):
    _engine_scenario(tmp_path, db_url, f"sqlite:///{tmp_path / 'home' / 'queue.db'}", n_stores=3, n_workers=1,
                     kill=False)


def test_cancel_integration_stops_the_running_job_and_nothing_runs_again(tmp_path, db_url):
    account = generate_account(profiles=600, seed=48)
    queue_url = f"sqlite:///{tmp_path / 'home' / 'queue.db'}"
    with StandInServer(account, api_keys={DEFAULT_API_KEY: ALL_SCOPES}, clock_scale=CLOCK_SCALE,
                       latency=0.1, rate_limits=False) as server:
        env, host, h = _one_store(tmp_path, db_url, server, account, queue_url,
                                  SMARTPUSH_JOB_CLAIM_SECONDS=str(CLAIM_SECONDS))
        # Hold the run open until it is cancelled (as test_lifecycle does): every membership
        # page takes 2 s, so on a loaded machine the ~1 s sync cannot complete between the
        # lease being seen and the uninstall.
        hold_member_pages(server)
        worker = _worker(env)
        try:
            deadline = time.monotonic() + 60
            while True:  # the worker holds the store's lease: mid-sync
                assert time.monotonic() < deadline, "the sync never started"
                with host.storage.transaction(readonly=True) as tx:
                    if tx.execute(select(lease_t.c.owner).where(lease_t.c.store_id == "shop")).first():
                        break
                time.sleep(0.02)
            h.call("uninstall")
            server.clear_faults()
            assert _job(host, "shop") is None
            time.sleep(CLAIM_SECONDS * 2)  # past any follow-up: nothing may run again
        finally:
            worker.send_signal(signal.SIGINT)
            out, err = worker.communicate(timeout=60)
        assert [r["outcome"] for r in _runs(out)] == ["cancelled"], err
        assert _completed(host, "shop") == 0
        host.close()


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signalled_worker_gives_its_running_job_back_and_another_worker_resumes_it(tmp_path, db_url, signum,
                                                                                    code):
    """SIGTERM/SIGINT mid-sync: the sync stops at its next checkpoint (not hours later, not
    mid-write), the job is due again at once, and the next worker resumes the run."""
    account = generate_account(profiles=1500, seed=49)
    queue_url = f"sqlite:///{tmp_path / 'home' / 'queue.db'}"
    with StandInServer(account, api_keys={DEFAULT_API_KEY: ALL_SCOPES}, clock_scale=CLOCK_SCALE,
                       latency=0.1, rate_limits=False) as server:
        env, host, h = _one_store(tmp_path, db_url, server, account, queue_url)
        first = _worker(env)
        try:
            deadline = time.monotonic() + 60
            while _contacts(host, "shop") < 100:  # mid-sync, with contacts written
                assert time.monotonic() < deadline and first.poll() is None, "the sync never got going"
                time.sleep(0.02)
            signalled_at = time.monotonic()
            first.send_signal(signum)
            out, err = first.communicate(timeout=60)
        finally:
            if first.poll() is None:
                first.kill()
        assert first.returncode == code, err
        assert time.monotonic() - signalled_at < 20, "the worker waited for the whole sync"
        assert [r["outcome"] for r in _runs(out)] == ["stopped"], err
        assert "Traceback" not in err
        assert _job(host, "shop").next_run_at <= utcnow(), "the job is due again at once"
        with host.storage.transaction(readonly=True) as tx:
            assert tx.execute(select(lease_t).where(lease_t.c.store_id == "shop")).first() is None
        assert h.status().extra["resumable_run"]
        second = _worker(env)
        try:
            deadline = time.monotonic() + 120
            while _completed(host, "shop") < 1:
                assert time.monotonic() < deadline and second.poll() is None, "the job was not resumed"
                time.sleep(0.2)
        finally:
            second.send_signal(signal.SIGINT)
            out2, err2 = second.communicate(timeout=60)
        (run,) = _runs(out2)
        assert run["outcome"] == "completed" and run["resumed"], run
        kids = [k for c in h.export() for k in c["klaviyo_ids"]]
        assert len(kids) == len(set(kids))
        host.close()
