"""The words the page and the JSON API use for an integration's status."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from hookspecs.types import IntegrationState, IntegrationStatus, PauseReason

STATE_LABELS = {
    IntegrationState.PENDING_INTEGRATION: "Pending Integration",
    IntegrationState.SYNCING: "Syncing",
    IntegrationState.SYNC_PAUSED: "Sync Paused",
}

WHAT_TO_DO = {
    PauseReason.KEY_INVALID: "Klaviyo rejected the key. Create a new Private API Key in Klaviyo "
                             "(Settings > API Keys) and paste it below, then click Integrate.",
    PauseReason.MISSING_SCOPE: "The key cannot read everything the sync needs. Give it read access to "
                               "profiles, lists and segments (or create a new key) and paste it below.",
    PauseReason.SYNC_ERROR: "Klaviyo could not be reached or answered with errors several times. "
                            "Click Sync now to try again; the sync resumes where it stopped.",
    PauseReason.PLAN_DOWNGRADED: "Your plan no longer includes integrations. Upgrade the plan to resume "
                                 "syncing at once.",
}

PAUSE_LABELS = {
    PauseReason.KEY_INVALID: "the Klaviyo key is invalid or was revoked",
    PauseReason.MISSING_SCOPE: "the Klaviyo key is missing a read scope",
    PauseReason.SYNC_ERROR: "repeated sync errors",
    PauseReason.PLAN_DOWNGRADED: "the plan was downgraded",
}


def describe(status: IntegrationStatus, run: dict[str, Any]) -> dict[str, Any]:
    """The status as the page shows it: label, pause reason and advice, progress line."""
    progress = status.progress.model_dump(mode="json") if status.progress else None
    if progress and not progress.get("message"):
        done, total = progress.get("done"), progress.get("total")
        figures = f": {done} of {total} {progress.get('unit', '')}" if done is not None and total else ""
        progress["message"] = f"{progress['phase']}{figures}"
    running = bool(run.get("running")) or progress is not None
    return {
        "integration": status.integration,
        "store_id": status.store_id,
        "installed": status.installed,
        "state": status.state.value,
        "state_label": STATE_LABELS[status.state],
        "pause_reason": status.pause_reason.value if status.pause_reason else None,
        "pause_label": PAUSE_LABELS.get(status.pause_reason) if status.pause_reason else None,
        "pause_detail": status.pause_detail,
        "what_to_do": WHAT_TO_DO.get(status.pause_reason) if status.pause_reason else None,
        "running": running,
        "progress": progress,
        "phase": status.phase,
        "last_successful_sync_at": _iso(status.last_successful_sync_at),
        "last_sync_started_at": _iso(status.last_sync_started_at),
        "next_sync_at": _iso(status.next_sync_at) if status.state != IntegrationState.SYNC_PAUSED else None,
        "next_sync_due": bool(status.next_sync_at and status.state != IntegrationState.SYNC_PAUSED
                              and status.next_sync_at <= datetime.now(timezone.utc)),
        "counts": dict(status.counts),
        "last_run": status.last_run,
        "skipped": list(status.extra.get("skipped") or []),
        "has_key": bool(status.extra.get("has_key")),
        "web_run": run,
    }


def _iso(value) -> str | None:
    return value.isoformat(timespec="seconds") if value else None
