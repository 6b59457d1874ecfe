"""A dead local lease holder is recognised at once, even as a zombie or with its PID reused."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import psutil

from smartpush_plugin_klaviyo import lease
from smartpush_plugin_klaviyo.state import create_tables


def _owner_of(pid: int) -> str:
    started = f"{psutil.Process(pid).create_time():.2f}"
    return f"{socket.gethostname()}:{pid}:{started}:deadbeef"


def test_a_worker_killed_with_sigkill_frees_its_lease_at_once_even_as_a_zombie(host):
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owner = _owner_of(worker.pid)
        storage = host.storage
        create_tables(storage.engine)
        assert lease.acquire(storage, "s1", owner)
        assert not lease.acquire(storage, "s1", lease.new_owner_id())  # alive: held
        os.kill(worker.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while psutil.Process(worker.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.02)
        assert psutil.Process(worker.pid).status() == psutil.STATUS_ZOMBIE  # not reaped yet
        os.kill(worker.pid, 0)  # the old check: a zombie still "exists"
        assert lease.acquire(storage, "s1", lease.new_owner_id())  # taken over at once
    finally:
        worker.kill()
        worker.wait()


def test_a_reused_pid_is_not_the_lease_holder():
    other_start = f"{psutil.Process(os.getpid()).create_time() - 1000:.2f}"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        reused = f"{socket.gethostname()}:{proc.pid}:{float(other_start):.2f}:x"  # same PID, other start
        assert lease._dead_local_owner(reused)
        assert not lease._dead_local_owner(_owner_of(proc.pid))
    finally:
        proc.kill()
        proc.wait()
