"""The ``smartpush`` command's exit codes (documented in the README)."""

from __future__ import annotations

OK = 0
FAILED = 1
"""An error, or a sync that failed."""
USAGE = 2
"""Bad arguments, or no installed plugin provides the integration."""
PAUSED = 3
"""The sync is paused (key, scope, plan, errors), or the integration is not installed / has no key."""
ALREADY_RUNNING = 4
"""Another worker is syncing this store."""
CANCELLED = 5
"""The integration was cancelled while the sync ran."""
LINES_SKIPPED = 6
"""``contacts import`` skipped lines (the others were imported)."""
INTERRUPTED = 130
"""Stopped by Ctrl-C (SIGINT); the run resumes next time."""
TERMINATED = 143
"""Stopped by SIGTERM; the run resumes next time."""

SYNC_OUTCOME_CODES = {
    "completed": OK,
    "failed": FAILED,
    "paused": PAUSED,
    "not_installed": PAUSED,
    "already_running": ALREADY_RUNNING,
    "cancelled": CANCELLED,
    "stopped": INTERRUPTED,
}
"""Exit code per ``SyncReport.outcome`` (an unknown outcome is :data:`FAILED`)."""


def for_outcome(outcome: str) -> int:
    """The exit code of a sync that ended with ``outcome``."""
    return SYNC_OUTCOME_CODES.get(outcome, FAILED)
