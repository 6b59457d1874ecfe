"""The real ``smartpush`` command stopped by Ctrl-C (SIGINT) or SIGTERM mid-sync: no
traceback, exit 130/143, no helper process left, and the next run completes; and the
documented exit codes and ``--version``."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import psutil
import pytest
from klaviyo_standin import ALL_SCOPES, DEFAULT_API_KEY, StandInServer, generate_account

from tests import expectations as exp
from tests.harness import CLOCK_SCALE, cli_environment, hold_member_pages
from tests.test_end_to_end_cli import export, smartpush


@pytest.fixture(scope="module")
def account():
    return generate_account(profiles=1500, seed=61)


@pytest.fixture
def slow_server(account):
    with StandInServer(account, api_keys={DEFAULT_API_KEY: ALL_SCOPES}, clock_scale=CLOCK_SCALE,
                       latency=0.08) as srv:
        yield srv


def _descendants(pid: int) -> set[int]:
    try:
        return {p.pid for p in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_mid_sync_stops_cleanly_and_the_next_run_completes(tmp_path, db_url, slow_server, account,
                                                                    signum, code):
    env = {**cli_environment(tmp_path, db_url, slow_server), "KLAVIYO_MAP_PROCESSES": "2",
           "KLAVIYO_MAP_PROCESSES_AFTER": "0"}
    smartpush(env, "install", "klaviyo")
    smartpush({**env, "KLAVIYO_API_KEY": DEFAULT_API_KEY}, "authorize", "klaviyo")
    hold_member_pages(slow_server)  # the ~1.2 s sync is still running at the signal
    proc = subprocess.Popen(["smartpush", "sync", "klaviyo", "--full"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    helpers: set[int] = set()
    deadline = time.monotonic() + 60
    while len(helpers) < 3:  # the forkserver and its two helpers are up: the sync is decoding pages
        assert proc.poll() is None and time.monotonic() < deadline, "the sync ended before helpers started"
        helpers |= _descendants(proc.pid)
        time.sleep(0.02)
    time.sleep(0.5)
    assert proc.poll() is None, "the sync finished before the signal"
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err and "Traceback" not in out
    assert "stopped cleanly" in err
    slow_server.clear_faults()
    time.sleep(0.2)
    assert not [pid for pid in helpers if _alive(pid)], "helper processes outlived the command"
    status = json.loads(smartpush(env, "status", "klaviyo", "--json").stdout)
    assert status["state"] != "sync_paused"
    # the next run resumes and completes: every importable profile arrives exactly once
    report = json.loads(smartpush(env, "sync", "klaviyo", "--json", "--no-progress").stdout)
    assert report["outcome"] == "completed"
    contacts = export(env, tmp_path)
    kids = [k for c in contacts for k in c["klaviyo_ids"]]
    assert len(kids) == len(set(kids))
    importable = {p["id"] for p in account.iter_profiles() if exp.valid_email(p["attributes"].get("email"))}
    assert importable <= set(kids)


def test_a_killed_sync_leaves_no_process_behind(tmp_path, db_url, slow_server):
    """``kill -9`` (or the OOM killer) shuts nothing down: the helper processes notice the
    sync process is gone and exit, and with them the forkserver and the resource tracker
    (three processes, ~110 MB, stayed behind per killed sync)."""
    env = {**cli_environment(tmp_path, db_url, slow_server), "KLAVIYO_MAP_PROCESSES": "2",
           "KLAVIYO_MAP_PROCESSES_AFTER": "0"}
    smartpush(env, "install", "klaviyo")
    smartpush({**env, "KLAVIYO_API_KEY": DEFAULT_API_KEY}, "authorize", "klaviyo")
    hold_member_pages(slow_server)  # the ~1.2 s sync is still running at the signal
    proc = subprocess.Popen(["smartpush", "sync", "klaviyo", "--full"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    helpers: set[int] = set()
    deadline = time.monotonic() + 60
    # the resource tracker, the forkserver and its two helpers
    while len(helpers) < 4:
        assert proc.poll() is None and time.monotonic() < deadline, "the sync ended before helpers started"
        helpers |= _descendants(proc.pid)
        time.sleep(0.02)
    assert proc.poll() is None, "the sync finished before the kill"
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while [pid for pid in helpers if _alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in helpers if _alive(pid)], "processes outlived the killed sync"


def test_exit_codes_and_version(tmp_path, db_url, slow_server):
    env = cli_environment(tmp_path, db_url, slow_server)
    version = smartpush(env, "--version")
    assert version.stdout.startswith("smartpush, version ")
    assert smartpush(env, "sync", "klaviyo", check=False).returncode == 3  # not installed
    smartpush(env, "install", "klaviyo")
    assert smartpush(env, "sync", "klaviyo", check=False).returncode == 3  # pending: no key
    assert smartpush(env, "sync", "nosuch", check=False).returncode == 2
    assert smartpush(env, "nosuchcommand", check=False).returncode == 2
    # a sync while another worker holds the store's lease: already running
    from smartpush_plugin_klaviyo import lease
    from tests.harness import make_host

    smartpush({**env, "KLAVIYO_API_KEY": DEFAULT_API_KEY}, "authorize", "klaviyo")
    host = make_host(env["SMARTPUSH_DATABASE_URL"], tmp_path, slow_server)
    assert lease.acquire(host.storage, "default", lease.new_owner_id())
    busy = smartpush(env, "sync", "klaviyo", "--json", check=False)
    assert busy.returncode == 4 and json.loads(busy.stdout)["outcome"] == "already_running"
    host.close()
    for args in (["plan", "show"], ["keys", "status"], ["keys", "reencrypt"], ["contacts", "count"], ["stores"],
                 ["apps"], ["status", "klaviyo"]):
        json.loads(smartpush(env, *args, "--json").stdout)
    for args in (["klaviyo", "events"], ["klaviyo", "skipped"]):  # JSON lines (none yet)
        assert all(json.loads(line) for line in smartpush(env, *args, "--json").stdout.splitlines())


def test_progress_view_prints_plain_lines_with_counts_when_not_a_tty(capsys):
    from datetime import datetime, timezone

    from hookspecs.types import IntegrationState, IntegrationStatus, SyncProgress
    from smartpush_devhost.progress import ProgressView

    polls = 0

    def poll():
        nonlocal polls
        polls += 1
        return IntegrationStatus(
            integration="klaviyo", store_id="s", installed=True, state=IntegrationState.SYNCING,
            progress=SyncProgress(phase="profiles_and_memberships", done=polls * 100, total=5000, unit="profiles",
                                  updated_at=datetime.now(timezone.utc)))

    t0 = time.monotonic()
    with ProgressView(poll, tty=False, interval=0.01, plain_every=0.05):
        # Ten polls span at least 90 ms (each waits 10 ms), so a second line is due, however
        # slow the machine; then a few more throttle periods.
        while polls < 10 and time.monotonic() < t0 + 10:
            time.sleep(0.01)
        time.sleep(0.2)
    elapsed = time.monotonic() - t0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    # throttled: at most one line per 50 ms (one per poll would be up to 5 per 50 ms)
    assert 2 <= len(lines) <= elapsed / 0.05 + 1, (len(lines), polls, elapsed)
    assert all("profiles_and_memberships:" in ln and "/5000 profiles" in ln for ln in lines)


@pytest.mark.slow
def test_ctrl_c_in_the_scheduler_loop_during_a_first_sync_keeps_it_due_now(tmp_path, db_url, slow_server):
    """The issue's report: the first import must not slip by a day after Ctrl-C."""
    from smartpush_devhost.models import utcnow
    from tests.harness import make_host

    env = cli_environment(tmp_path, db_url, slow_server)
    smartpush(env, "install", "klaviyo")
    smartpush({**env, "KLAVIYO_API_KEY": DEFAULT_API_KEY}, "authorize", "klaviyo")
    hold_member_pages(slow_server)  # the ~1.2 s sync is still running at the signal
    proc = subprocess.Popen(["smartpush", "scheduler", "run", "--loop", "--interval", "1"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    host = make_host(db_url, tmp_path, slow_server)
    from smartpush_plugin_klaviyo.state import lease_t
    from sqlalchemy import select

    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline and proc.poll() is None
        with host.storage.transaction(readonly=True) as tx:
            if tx.execute(select(lease_t.c.owner).where(lease_t.c.store_id == "default")).first():
                break
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert host.context("default").scheduler.next_run("klaviyo") <= utcnow()
    slow_server.clear_faults()
    done = json.loads(smartpush(env, "scheduler", "run", "--json").stdout.splitlines()[0])
    assert done["outcome"] == "completed"
    host.close()


def test_the_first_signal_during_a_sync_only_asks_and_the_second_stops_at_once():
    import os
    import threading

    from smartpush_devhost.signals import GracefulStop, Terminated

    stopper = GracefulStop()
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        stopper.install()
        event = threading.Event()
        with stopper.asking(event):
            os.kill(os.getpid(), signal.SIGTERM)  # handled before kill returns (main thread)
            assert event.is_set() and stopper.signum == signal.SIGTERM
            with pytest.raises(Terminated):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)
        with pytest.raises(Terminated):
            stopper.raise_if_signalled()
        with pytest.raises(KeyboardInterrupt):  # outside a sync: at once
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
