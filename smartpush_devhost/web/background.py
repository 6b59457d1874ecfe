"""Syncs started from the web page run in threads of the server, one per store and
integration at most, so a request returns at once and the page keeps answering."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class RunState:
    """What the page shows about the sync this server started last (no PII, no key)."""

    running: bool = False
    mode: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    outcome: str | None = None
    message: str = ""
    counts: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "mode": self.mode,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "outcome": self.outcome,
            "message": self.message,
            "counts": dict(self.counts),
        }


class BackgroundSyncs:
    """Starts ``smartpush_sync`` in a daemon thread per (store, integration)."""

    def __init__(self, host, pm):
        self.host = host
        self.pm = pm
        self._lock = threading.Lock()
        self._states: dict[tuple[str, str], RunState] = {}
        self._threads: dict[tuple[str, str], threading.Thread] = {}

    def state(self, store_id: str, integration: str) -> RunState:
        with self._lock:
            return self._states.get((store_id, integration)) or RunState()

    def start(self, store_id: str, integration: str, mode: str) -> bool:
        """Start a sync unless this server already runs one for the store; True if started.
        (Another process's run is refused by the plugin itself: ``already_running``.)"""
        key = (store_id, integration)
        with self._lock:
            thread = self._threads.get(key)
            if thread is not None and thread.is_alive():
                return False
            self._states[key] = RunState(running=True, mode=mode, started_at=datetime.now(timezone.utc))
            thread = threading.Thread(target=self._run, args=(store_id, integration, mode),
                                      name=f"sync-{store_id}-{integration}", daemon=True)
            self._threads[key] = thread
        thread.start()
        return True

    def _run(self, store_id: str, integration: str, mode: str) -> None:
        key = (store_id, integration)
        outcome, message, counts = "failed", "", {}
        try:
            report = self.pm.hook.smartpush_sync(integration=integration, host=self.host.context(store_id), mode=mode)
            if report is not None:
                outcome, message, counts = report.outcome, report.message, dict(report.counts)
        except Exception as exc:  # noqa: BLE001 - the page shows it; the server keeps running
            log.warning("store %s: %s sync raised %s", store_id, integration, type(exc).__name__, exc_info=True)
            message = f"The sync stopped with an unexpected {type(exc).__name__}."
        with self._lock:
            state = self._states[key]
            state.running = False
            state.finished_at = datetime.now(timezone.utc)
            state.outcome, state.message, state.counts = outcome, message, counts

    def join(self, timeout: float | None = None) -> None:
        """Wait for the running syncs (server shutdown, tests)."""
        with self._lock:
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(timeout)
