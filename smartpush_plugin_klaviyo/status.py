"""The integration row: state transitions and the status the merchant sees."""

from __future__ import annotations

import json

from sqlalchemy import and_, func, insert, select, update

from hookspecs.interfaces import HostContext
from hookspecs.types import (
    IntegrationState,
    IntegrationStatus,
    PauseReason,
    SyncProgress,
)
from smartpush_plugin_klaviyo.state import (
    group_t,
    integration_t,
    profile_map_t,
    run_t,
    skipped_t,
)
from smartpush_plugin_klaviyo.timeutil import utcnow

INTEGRATION = "klaviyo"
SECRET_NAME = "klaviyo_private_api_key"
PLAN_FEATURE = "klaviyo_sync"
SKIPPED_IN_STATUS = 50
"""The status lists this many skipped profiles (Klaviyo id and reason); ``smartpush
klaviyo skipped`` lists them all."""


def load(tx, store_id: str):
    return tx.execute(select(integration_t).where(integration_t.c.store_id == store_id)).first()


def ensure_row(tx, store_id: str):
    row = load(tx, store_id)
    if row is None:
        tx.execute(insert(integration_t).values(store_id=store_id, installed=False, state=IntegrationState.PENDING_INTEGRATION.value))
        row = load(tx, store_id)
    return row


def set_state(tx, store_id: str, state: IntegrationState, reason: PauseReason | None = None, detail: str | None = None, **extra) -> None:
    tx.execute(
        update(integration_t)
        .where(integration_t.c.store_id == store_id)
        .values(state=state.value, pause_reason=reason.value if reason else None, pause_detail=detail, **extra)
    )


def mark_installed(tx, store_id: str) -> None:
    """Installed (pending a key) unless it already was."""
    row = ensure_row(tx, store_id)
    if not row.installed:
        tx.execute(
            update(integration_t)
            .where(integration_t.c.store_id == store_id)
            .values(installed=True, installed_at=utcnow(), state=IntegrationState.PENDING_INTEGRATION.value,
                    pause_reason=None, pause_detail=None)
        )


def mark_uninstalled(tx, store_id: str) -> None:
    """Cancel Integration: not installed, a new epoch (a running sync stops at its next write)."""
    ensure_row(tx, store_id)
    tx.execute(
        update(integration_t)
        .where(integration_t.c.store_id == store_id)
        .values(installed=False, epoch=integration_t.c.epoch + 1, state=IntegrationState.PENDING_INTEGRATION.value,
                pause_reason=None, pause_detail=None, current_run_id=None, phase=None)
    )


def count_failure(tx, store_id: str) -> int:
    """One more failed sync in a row; returns how many now."""
    tx.execute(
        update(integration_t)
        .where(integration_t.c.store_id == store_id)
        .values(consecutive_errors=integration_t.c.consecutive_errors + 1)
    )
    return load(tx, store_id).consecutive_errors


def pause(ctx: HostContext, reason: PauseReason, detail: str | None = None, **extra) -> None:
    with ctx.storage.transaction() as tx:
        set_state(tx, ctx.store_id, IntegrationState.SYNC_PAUSED, reason, detail, **extra)


def build_status(ctx: HostContext) -> IntegrationStatus:
    """Read-only: the stored state plus cheap counts. Never calls Klaviyo."""
    with ctx.storage.transaction() as tx:
        row = load(tx, ctx.store_id)
        if row is None:
            return IntegrationStatus(
                integration=INTEGRATION, store_id=ctx.store_id, installed=False,
                state=IntegrationState.PENDING_INTEGRATION,
            )
        skipped = tx.execute(select(func.count()).select_from(skipped_t).where(skipped_t.c.store_id == ctx.store_id)).scalar_one()
        mapped = tx.execute(select(func.count()).select_from(profile_map_t).where(profile_map_t.c.store_id == ctx.store_id)).scalar_one()
        groups = tx.execute(select(func.count()).select_from(group_t).where(group_t.c.store_id == ctx.store_id)).scalar_one()
        contacts = ctx.contacts.count(tx)
        last = tx.execute(
            select(run_t.c.mode, run_t.c.outcome, run_t.c.started_at, run_t.c.finished_at, run_t.c.report_json)
            .where(and_(run_t.c.store_id == ctx.store_id, run_t.c.finished_at.is_not(None)))
            .order_by(run_t.c.seq.desc())
            .limit(1)
        ).first()
        recent_skipped = tx.execute(
            select(skipped_t.c.klaviyo_id, skipped_t.c.reason)
            .where(skipped_t.c.store_id == ctx.store_id)
            .order_by(skipped_t.c.klaviyo_id)
            .limit(SKIPPED_IN_STATUS)
        ).all()
    has_key = ctx.secrets.get(SECRET_NAME) is not None
    state = IntegrationState(row.state)
    if not row.installed or (not has_key and state != IntegrationState.SYNC_PAUSED):
        state = IntegrationState.PENDING_INTEGRATION
    last_counts = json.loads(row.counts_json or "{}")
    return IntegrationStatus(
        integration=INTEGRATION,
        store_id=ctx.store_id,
        installed=bool(row.installed),
        state=state,
        pause_reason=PauseReason(row.pause_reason) if state == IntegrationState.SYNC_PAUSED and row.pause_reason else None,
        pause_detail=row.pause_detail if state == IntegrationState.SYNC_PAUSED else None,
        phase=row.phase,
        last_sync_started_at=row.last_sync_started_at,
        last_successful_sync_at=row.last_success_at,
        next_sync_at=ctx.scheduler.next_run(INTEGRATION) if row.installed else None,
        progress=_progress(row),
        last_run=_last_run(last),
        counts={
            "contacts": contacts,
            "klaviyo_profiles_mapped": mapped,
            "groups": groups,
            "skipped": skipped,
            **{f"last_run_{k}": v for k, v in last_counts.items() if isinstance(v, int)},
        },
        extra={
            "has_key": has_key,
            "skipped": [{"source_id": k, "reason": r} for k, r in recent_skipped],
            "resumable_run": row.current_run_id is not None,
            "consecutive_errors": row.consecutive_errors,
            "profiles_watermark": row.profiles_watermark.isoformat() if row.profiles_watermark else None,
        },
    )


def _progress(row) -> SyncProgress | None:
    """The running (or interrupted) run's progress, as the sync last saved it."""
    if row.current_run_id is None or not row.progress_json:
        return None
    try:
        return SyncProgress.model_validate_json(row.progress_json)
    except ValueError:
        return None


def _last_run(run) -> dict | None:
    """Figures of the last finished run: what the daily job did, for the status page."""
    if run is None:
        return None
    try:
        report = json.loads(run.report_json or "{}")
    except ValueError:
        report = {}
    counts = report.get("counts") or {}
    requests = report.get("requests") or {}
    duration = (run.finished_at - run.started_at).total_seconds() if run.started_at and run.finished_at else None
    return {
        "mode": run.mode,
        "outcome": run.outcome,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "duration_s": round(duration, 1) if duration is not None else None,
        "requests": sum(v for k, v in requests.items() if k.startswith("GET ")),
        "429": requests.get("429", 0),
        "profiles_read": counts.get("profiles_seen", 0),
        "removals": counts.get("memberships_removed", 0),
        "profiles_deleted_in_klaviyo": counts.get("profiles_deleted_in_klaviyo", 0),
        "groups_rescanned": counts.get("groups_rescanned", 0),
        "groups_unchanged": counts.get("groups_unchanged", 0),
    }
