"""What ``smartpush sync`` shows while a sync runs.

:class:`ProgressView` polls the integration's status from a thread (the plugin reports
``IntegrationStatus.progress``; before it does, the phase and the store's contact
count): a rich progress bar with counts and ETA on a terminal, a plain line every few
seconds otherwise. Output goes to stderr, so ``--json`` output stays parseable.

How the command stops on a signal is in :mod:`smartpush_devhost.signals`.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import click



def _figures(status: Any) -> tuple[str, int | None, int | None, str]:
    """``(phase, done, total, unit)`` from an IntegrationStatus."""
    progress = getattr(status, "progress", None)
    if progress is not None:
        return progress.phase, progress.done, progress.total, progress.unit
    phase = getattr(status, "phase", None) or "starting"
    return phase, (getattr(status, "counts", None) or {}).get("contacts"), None, "contacts"


class ProgressView:
    """Shows a running sync's progress until :meth:`stop` (a context manager)."""

    def __init__(self, poll: Callable[[], Any], *, tty: bool | None = None, interval: float = 0.5,
                 plain_every: float = 5.0):
        self.poll = poll
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.interval = interval
        self.plain_every = plain_every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sync-progress", daemon=True)

    def __enter__(self) -> "ProgressView":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _read(self):
        try:
            return _figures(self.poll())
        except Exception:  # a status read that fails (locked, closing) is skipped, not shown
            return None

    def _run(self) -> None:
        if self.tty:
            self._run_rich()
        else:
            self._run_plain()

    def _run_plain(self) -> None:
        last_line, last_time = None, 0.0
        started = time.monotonic()
        while not self._stop.wait(self.interval):
            figures = self._read()
            if figures is None:
                continue
            label, done, total, unit = figures
            count = "" if done is None else f" {done}" + (f"/{total}" if total else "") + f" {unit}"
            line = f"{label}:{count}".rstrip(":")
            now = time.monotonic()
            if line != last_line and now - last_time >= self.plain_every or last_line is None:
                click.echo(f"[{now - started:6.0f} s] {line}", err=True)
                last_line, last_time = line, now

    def _run_rich(self) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[unit]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
        with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("starting", total=None, unit="")
            phase = None
            while not self._stop.wait(self.interval):
                figures = self._read()
                if figures is None:
                    continue
                label, done, total, unit = figures
                if label != phase:  # a new phase: its own count and ETA
                    bar.reset(task, total=total, description=label, unit=unit)
                    phase = label
                bar.update(task, completed=done or 0, total=total, unit=unit)
