"""Starting ``smartpush serve`` as a real process for the web tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
"""Screenshots of the browser test (ignored by git)."""
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@contextmanager
def serve_process(env: dict[str, str], log_path: Path, *extra: str):
    """``smartpush serve --port 0 --access-log`` in a child process; yields its base URL.
    Its stdout and stderr (access log included) go to ``log_path``."""
    log = open(log_path, "w+")
    proc = subprocess.Popen([sys.executable, "-m", "smartpush_devhost.cli", "serve", "--port", "0", "--access-log", *extra],
                            env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            match = re.search(r"serving (http://127\.0\.0\.1:\d+)", Path(log_path).read_text())
            if match:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"smartpush serve did not start: {Path(log_path).read_text()[-2000:]}")
            time.sleep(0.05)
        yield match.group(1)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def chromium_available() -> bool:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return False
    return os.access(CHROMIUM, os.X_OK)
