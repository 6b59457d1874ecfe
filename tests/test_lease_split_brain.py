"""Split brain with real processes: a sync frozen (SIGSTOP) past its lease, another worker
takes the store over and completes, the first one wakes (SIGCONT) and commits nothing.

On PostgreSQL A is frozen inside a write transaction (B ends it to take over); on SQLite
between two. A write audit (a trigger on every table, :mod:`tests.write_audit`) counts
every row any process commits; after worker B completes nothing else runs, so every audit
row written after that is worker A's. ``fence-off`` runs A with the fence switched off (a
``sitecustomize`` in A's ``PYTHONPATH`` takes the ownership check out of :func:`lease.fence`
and out of the renewals) and expects the audit to catch A's writes: the test fails
without the fence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from klaviyo_standin import ALL_SCOPES, DEFAULT_API_KEY, StandInServer, generate_account
from sqlalchemy import create_engine, func, select

from smartpush_plugin_klaviyo.state import integration_t, lease_t, profile_map_t, run_t
from smartpush_plugin_klaviyo.timeutil import to_utc, utcnow
from tests import expectations as exp
from tests import frozen, write_audit
from tests.harness import CLOCK_SCALE, cli_environment
from tests.test_end_to_end_cli import export, smartpush

pytestmark = pytest.mark.slow

LEASE_SECONDS = 3
NO_FENCE = (
    # No ownership check in the write transactions (the session is still named, so B can end
    # A's frozen transaction), and renewals that never notice the loss either: otherwise the
    # watcher's first renewal after SIGCONT may stop A before it writes, and the audit would
    # have nothing to catch.
    "import smartpush_plugin_klaviyo.lease as lease\n"
    "lease.fence = lambda tx, store_id, owner: lease.mark_session(tx, store_id)\n"
    "renew = lease.renew\n"
    "lease.renew = lambda *args, **kwargs: renew(*args, **kwargs) or True\n"
)


@pytest.fixture(scope="module")
def account():
    return generate_account(profiles=4000, seed=61)


def _scalar(db_url: str, query):
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return conn.execute(query).scalar()
    finally:
        engine.dispose()


def _freeze_while_writing(proc: subprocess.Popen, db_url: str) -> None:
    """SIGSTOP ``proc`` once it has written profiles. On PostgreSQL inside a write transaction
    (it holds row locks: the worker taking over must end that transaction, or wait on them);
    on SQLite between two (one frozen inside holds the one write lock: nobody could take over,
    a limit tested in tests/test_lock_waits.py and documented)."""
    mapped = select(func.count()).select_from(profile_map_t)
    deadline = time.monotonic() + 120
    while _scalar(db_url, mapped) == 0:
        assert proc.poll() is None, "worker A ended before it wrote anything"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    frozen.freeze_when(proc, locked=db_url.startswith("postgresql"), db_url=db_url)
    assert _scalar(db_url, select(run_t.c.finished_at)) is None, "worker A finished before it was frozen"


@pytest.mark.parametrize("fenced", [True, False], ids=["fenced", "fence-off"])
def test_a_frozen_worker_woken_after_another_took_over_commits_nothing(tmp_path, db_url, account, fenced):
    with StandInServer(account, api_keys={DEFAULT_API_KEY: ALL_SCOPES}, clock_scale=CLOCK_SCALE) as server:
        env = {**cli_environment(tmp_path, db_url, server), "KLAVIYO_LEASE_SECONDS": str(LEASE_SECONDS)}
        smartpush(env, "install", "klaviyo")
        smartpush({**env, "KLAVIYO_API_KEY": DEFAULT_API_KEY}, "authorize", "klaviyo")
        write_audit.install(db_url)
        env_a = dict(env)
        if not fenced:
            (tmp_path / "nofence").mkdir()
            (tmp_path / "nofence" / "sitecustomize.py").write_text(NO_FENCE)
            env_a["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "nofence"), env["PYTHONPATH"]])

        server.latency = 0.3  # worker A is slow: it is frozen mid-run
        a = subprocess.Popen(["smartpush", "sync", "klaviyo", "--full"], env=env_a,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            _freeze_while_writing(a, db_url)
            expires = to_utc(_scalar(db_url, select(lease_t.c.expires_at)))
            time.sleep(max(0.0, (expires - utcnow()).total_seconds()) + 0.5)  # past A's lease

            server.latency = 0.0
            b = smartpush(env, "sync", "klaviyo", "--full", "--json")  # worker B: takes over, completes
            report_b = json.loads(b.stdout)
            assert report_b["outcome"] == "completed", report_b["message"]
            assert report_b["resumed"], "B resumes the run A left"
            after_b = write_audit.mark(db_url)

            a.send_signal(signal.SIGCONT)
            out_a, err_a = a.communicate(timeout=120)
        finally:
            if a.poll() is None:
                a.send_signal(signal.SIGCONT)
                a.kill()
                a.wait()

        written_by_a = write_audit.rows_after(db_url, after_b)
        print(f"rows worker A committed after losing its lease ({'fenced' if fenced else 'fence off'}): {written_by_a}")
        if not fenced:
            assert written_by_a, "the audit missed the writes of an unfenced worker"
            return
        assert written_by_a == {}, f"worker A committed after it lost its lease: {written_by_a}"
        assert a.returncode == 5, (a.returncode, out_a, err_a)  # cancelled
        assert "lost the sync lease" in out_a
        assert "Traceback" not in err_a + out_a

        # B's run is intact: one run, completed; nothing left to resume.
        engine = create_engine(db_url)
        try:
            with engine.connect() as conn:
                runs = conn.execute(select(run_t.c.outcome, run_t.c.finished_at)).all()
                integ = conn.execute(select(integration_t.c.current_run_id, integration_t.c.consecutive_errors)).one()
        finally:
            engine.dispose()
        assert [r.outcome for r in runs] == ["completed"] and runs[0].finished_at is not None
        assert integ.current_run_id is None and integ.consecutive_errors == 0
        exp.assert_exact_import(account, export(env, tmp_path))
