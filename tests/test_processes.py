"""processes.is_gone: the one answer to "is the process we knew still running?" (leases, helpers)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from smartpush_plugin_klaviyo import processes

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_a_running_process_with_its_start_time_is_not_gone():
    child = _sleeper()
    try:
        start = processes.start_time(child.pid)
        assert start is not None
        assert not processes.is_gone(child.pid, start)
        assert not processes.is_gone(child.pid, None)  # start unknown: alive is alive
    finally:
        child.kill()
        child.wait()


def test_another_start_time_under_the_same_pid_is_a_reused_pid():
    child = _sleeper()
    try:
        start = processes.start_time(child.pid)
        assert processes.is_gone(child.pid, start + 1)
    finally:
        child.kill()
        child.wait()


def test_a_killed_process_is_gone_as_a_zombie_and_once_reaped():
    child = _sleeper()
    start = processes.start_time(child.pid)
    child.kill()
    for _ in range(200):  # until the kernel has made it a zombie (not reaped yet)
        if processes._proc_stat(child.pid)[0] == "Z":
            break
        time.sleep(0.01)
    else:
        pytest.fail("the killed child never became a zombie")
    os.kill(child.pid, 0)  # a zombie still answers kill(pid, 0) ...
    assert processes.is_gone(child.pid, start)  # ... and counts as gone
    child.wait()
    assert processes.is_gone(child.pid, start)
    assert processes.start_time(child.pid) is None
