"""kill -9 a real sync process at several moments; the next run resumes with nothing lost or doubled."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
from klaviyo_standin import ALL_SCOPES, DEFAULT_API_KEY, StandInServer, generate_account

from tests import expectations as exp
from tests.harness import CLOCK_SCALE, cli_environment
from tests.test_end_to_end_cli import export, smartpush

pytestmark = pytest.mark.slow


def test_kill_9_at_several_points_then_resume(tmp_path, db_url):
    account = generate_account(profiles=6000, seed=13)
    with StandInServer(account, api_keys={DEFAULT_API_KEY: ALL_SCOPES}, latency=0.05, clock_scale=CLOCK_SCALE) as server:
        env = cli_environment(tmp_path, db_url, server)
        smartpush(env, "install", "klaviyo")
        smartpush({**env, "KLAVIYO_API_KEY": DEFAULT_API_KEY}, "authorize", "klaviyo")
        kills = 0
        last_killed = False
        for delay in (1.5, 2.0, 2.5, 3.0):
            proc = subprocess.Popen(["smartpush", "sync", "klaviyo", "--full"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(delay)
            last_killed = proc.poll() is None
            if last_killed:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
        assert kills >= 2, "the sync finished before it could be killed: make the account larger"
        status = json.loads(smartpush(env, "status", "klaviyo", "--json").stdout)
        result = smartpush(env, "sync", "klaviyo", "--full", "--json")
        report = json.loads(result.stdout)
        assert report["outcome"] == "completed"
        if last_killed and status["extra"]["resumable_run"]:
            # (a process killed while it was already exiting, its run completed, leaves
            # nothing to resume: on a loaded machine exiting takes a while)
            assert report["resumed"], "the run after a kill resumes from the checkpoints"
        contacts = export(env, tmp_path)

    exp.assert_exact_import(account, contacts)  # nothing lost or doubled, tags exact
    assert status["state"] in ("syncing", "sync_paused")
