"""What each hook does: install, authorize, sync, status, uninstall.

:mod:`smartpush_plugin_klaviyo.plugin` only forwards to these functions.
"""

from __future__ import annotations

import logging
from datetime import timedelta


from hookspecs.interfaces import HostContext
from hookspecs.types import (
    AuthorizeResult,
    IntegrationInfo,
    IntegrationState,
    IntegrationStatus,
    PauseReason,
    SyncReport,
)
from smartpush_plugin_klaviyo import dbwait, lease, run_state, status
from smartpush_plugin_klaviyo.client import REVISION, KlaviyoClient
from smartpush_plugin_klaviyo.errors import (
    InvalidKeyError,
    KlaviyoAPIError,
    KlaviyoPluginError,
    LeaseLost,
    MissingScopeError,
    RevisionUnsupportedError,
    SyncCancelled,
    SyncStopped,
)
from smartpush_plugin_klaviyo.ratelimit import ACCOUNT_MARGIN, account_budgets
from smartpush_plugin_klaviyo.state import create_tables
from smartpush_plugin_klaviyo.status import INTEGRATION, PLAN_FEATURE, SECRET_NAME
from smartpush_plugin_klaviyo.sync import MAX_CONSECUTIVE_ERRORS, SyncOptions, SyncRun
from smartpush_plugin_klaviyo.timeutil import utcnow

log = logging.getLogger(__name__)

DAILY = timedelta(days=1)
RETRY_AFTER_FAILURE = timedelta(minutes=15)
DEFAULT_BASE_URL = "https://a.klaviyo.com"
REQUIRED_READS = (
    ("/api/profiles", "profiles:read"),
    ("/api/lists", "lists:read"),
    ("/api/segments", "segments:read"),
)


def info() -> IntegrationInfo:
    from smartpush_plugin_klaviyo import __version__

    return IntegrationInfo(
        name=INTEGRATION,
        title="Klaviyo Data Import Tool",
        description="Imports Klaviyo profiles, lists and segments and keeps them in sync daily.",
        version=__version__,
    )


def make_client(api_key: str, ctx: HostContext) -> KlaviyoClient:
    """A client for this store's settings.

    ``KLAVIYO_BASE_URL`` (default Klaviyo), ``KLAVIYO_API_REVISION`` (default the tested
    :data:`~smartpush_plugin_klaviyo.client.REVISION`), and for stand-ins and tests
    ``KLAVIYO_TIME_SCALE`` (the stand-in's clock scale), ``KLAVIYO_RATE_LIMITS=off`` and
    ``KLAVIYO_MAX_RETRIES``; ``KLAVIYO_RATE_MARGIN`` the share of each endpoint limit used
    (default 0.9).
    """
    settings = ctx.settings or {}
    base_url = settings.get("KLAVIYO_BASE_URL") or DEFAULT_BASE_URL
    scale = float(settings.get("KLAVIYO_TIME_SCALE") or 1.0)
    enabled = (settings.get("KLAVIYO_RATE_LIMITS") or "on").lower() not in ("off", "0", "false", "no")
    margin = min(1.0, max(0.1, float(settings.get("KLAVIYO_RATE_MARGIN") or ACCOUNT_MARGIN)))
    budgets = account_budgets(base_url, api_key, time_scale=scale, enabled=enabled, margin=margin)
    retries = int(settings.get("KLAVIYO_MAX_RETRIES") or 8)
    revision = (settings.get("KLAVIYO_API_REVISION") or "").strip() or REVISION
    return KlaviyoClient(api_key, base_url=base_url, budgets=budgets, max_retries=retries, revision=revision)


def _revision_detail(exc: RevisionUnsupportedError) -> str:
    return (
        f"Klaviyo does not accept API revision {exc.revision} ({exc.status}): set KLAVIYO_API_REVISION "
        f"to a revision Klaviyo supports (this plugin is tested with {REVISION}), then sync again."
    )


def install(ctx: HostContext) -> IntegrationStatus:
    create_tables(ctx.storage.engine)
    with ctx.storage.transaction() as tx:
        status.mark_installed(tx, ctx.store_id)
    return status.build_status(ctx)


def authorize(ctx: HostContext, api_key: str) -> AuthorizeResult:
    """Validate the key (it must read profiles, lists and segments), then store it."""
    api_key = (api_key or "").strip()
    if not api_key:
        return AuthorizeResult(ok=False, message="No key given.")
    install(ctx)
    missing: list[str] = []
    try:
        with make_client(api_key, ctx) as client:
            for path, scope in REQUIRED_READS:
                try:
                    client.get(path, {"page[size]": 1})
                except MissingScopeError:
                    missing.append(scope)
    except InvalidKeyError:
        return AuthorizeResult(ok=False, message="Klaviyo rejected this key (401): check it is a valid Private API Key.")
    except RevisionUnsupportedError as exc:
        return AuthorizeResult(ok=False, message=_revision_detail(exc))
    except KlaviyoAPIError as exc:
        return AuthorizeResult(ok=False, message=f"Could not validate the key with Klaviyo: {exc.__class__.__name__}; try again.")
    if missing:
        return AuthorizeResult(
            ok=False,
            message="This key cannot read everything the sync needs; add the read scopes: " + ", ".join(missing),
            missing_scopes=missing,
        )
    ctx.secrets.put(SECRET_NAME, api_key)
    with ctx.storage.transaction() as tx:
        status.set_state(tx, ctx.store_id, IntegrationState.SYNCING, consecutive_errors=0)
    # Due at once: the first import (or the resumption of a paused run) starts at the next tick.
    ctx.scheduler.schedule(INTEGRATION, every=DAILY, first_run=utcnow())
    return AuthorizeResult(ok=True, message="Key accepted: profiles, lists and segments are readable.")


_INT_SETTINGS = (  # host setting, SyncOptions field, smallest value allowed
    ("KLAVIYO_MAP_PROCESSES", "map_processes", 0),
    ("KLAVIYO_MAP_PROCESSES_AFTER", "map_processes_after", 0),
    ("KLAVIYO_MEMBERS_PER_SLICE", "members_per_slice", 1),
    ("KLAVIYO_RESCAN_EVERY_RUNS", "rescan_every_runs", 1),
    ("KLAVIYO_SMALL_GROUP_MEMBERS", "small_group_members", 0),
    ("KLAVIYO_COUNT_CHECKS_PER_RUN", "count_checks_per_run", 0),
    ("KLAVIYO_SWEEP_RUNS", "sweep_runs", 1),
    ("KLAVIYO_SPOOL_MEMORY_PAGES", "spool_memory_pages", 1),
    ("KLAVIYO_LEASE_SECONDS", "lease_seconds", lease.MIN_LEASE_SECONDS),
)


def options_from_settings(settings) -> SyncOptions:
    """Default options, with the host's ``KLAVIYO_MAP_PROCESSES`` (helper processes for
    profile pages; ``0``, the default: none, the writer decodes them),
    ``KLAVIYO_MAP_PROCESSES_AFTER`` (profiles before they start), ``KLAVIYO_MEMBERS_PER_SLICE``
    and ``KLAVIYO_RESCAN_EVERY_RUNS`` (membership scans, see :class:`SyncOptions`),
    ``KLAVIYO_LEASE_SECONDS`` (the store's lease, at least 3) when set."""
    options = SyncOptions()
    for name, attr, least in _INT_SETTINGS:
        value = settings.get(name)
        if value not in (None, ""):
            setattr(options, attr, max(least, int(value)))
    return options


def sync(ctx: HostContext, mode: str, options: SyncOptions | None = None) -> SyncReport:
    """Run one sync: checks installation, key, plan and the lease, then runs or resumes.

    A lock wait past the database's bound (:class:`~smartpush_plugin_klaviyo.errors.DatabaseBusy`)
    fails the run, never raises: counted as a failed attempt when the database lets it be
    written, and the next run resumes from the checkpoints.
    """
    started = utcnow()

    def report(outcome: str, message: str) -> SyncReport:
        return SyncReport(integration=INTEGRATION, store_id=ctx.store_id, mode=mode, outcome=outcome,
                          message=message, started_at=started, finished_at=utcnow())

    try:
        return _sync(ctx, mode, options, started, report)
    except Exception as exc:
        busy = dbwait.as_busy(exc)
        if busy is None:
            raise
        log.warning("store %s: sync failed: %s", ctx.store_id, busy)
        return report("failed", f"Sync failed ({busy}).")


def _sync(ctx: HostContext, mode: str, options: SyncOptions | None, started, report) -> SyncReport:
    options = options or options_from_settings(ctx.settings or {})
    if options.stop_event is None:
        options.stop_event = ctx.stop_requested
    create_tables(ctx.storage.engine)
    with ctx.storage.transaction(readonly=True) as tx:
        row = status.load(tx, ctx.store_id)
    if row is None or not row.installed:
        return report("not_installed", "The Klaviyo integration is not installed in this store.")
    api_key = ctx.secrets.get(SECRET_NAME)
    if not api_key:
        return report("paused", "Pending integration: authorize a Klaviyo Private API Key first.")
    if not ctx.plan.allows(PLAN_FEATURE):
        status.pause(ctx, PauseReason.PLAN_DOWNGRADED, "The store's plan does not include the Klaviyo integration.")
        return report("paused", "Sync paused: the store's plan does not include the Klaviyo integration.")
    if row.state == IntegrationState.SYNC_PAUSED.value and row.pause_reason in (
        PauseReason.KEY_INVALID.value, PauseReason.MISSING_SCOPE.value,
    ):
        return report("paused", f"Sync paused ({row.pause_reason}): replace the Klaviyo key to resume.")
    if not lease.acquire(ctx.storage, ctx.store_id, options.lease_owner, options.lease_seconds):
        return report("already_running", "Another worker is syncing this store.")
    try:
        with ctx.storage.transaction() as tx:
            status.set_state(tx, ctx.store_id, IntegrationState.SYNCING)
        with make_client(api_key, ctx) as client:
            run = SyncRun(ctx, client, options)
            try:
                return run.execute(mode)
            except InvalidKeyError:
                status.pause(ctx, PauseReason.KEY_INVALID, "Klaviyo rejected the key (401): it was revoked, expired or is wrong.")
                return run.report("paused", started, False, "Sync paused: Klaviyo rejected the key.")
            except RevisionUnsupportedError as exc:
                status.pause(ctx, PauseReason.API_REVISION_UNSUPPORTED, _revision_detail(exc))
                return run.report("paused", started, False, f"Sync paused: {_revision_detail(exc)}")
            except MissingScopeError as exc:
                scopes = ", ".join(exc.scopes) or "a read scope"
                status.pause(ctx, PauseReason.MISSING_SCOPE, f"The key is missing the scope(s): {scopes}")
                return run.report("paused", started, False, f"Sync paused: the key is missing {scopes}.")
            except SyncStopped as exc:
                return run.report("stopped", started, False, str(exc))
            except SyncCancelled as exc:
                return run.report("cancelled", started, False, str(exc))
            except Exception as exc:  # noqa: BLE001 - every other failure counts towards a pause
                return _sync_failed(ctx, run, started, dbwait.as_busy(exc) or exc, options.lease_owner)
    finally:
        lease.release(ctx.storage, ctx.store_id, options.lease_owner)


def _sync_failed(ctx: HostContext, run: SyncRun, started, exc: Exception, owner: str) -> SyncReport:
    kind = exc.__class__.__name__
    try:
        with ctx.storage.transaction() as tx:
            # A worker that lost its lease (e.g. frozen, then its PostgreSQL session ended)
            # counts nothing: the store is another worker's now.
            lease.fence(tx, ctx.store_id, owner)
            errors = status.count_failure(tx, ctx.store_id)
    except LeaseLost as lost:
        return run.report("cancelled", started, False, str(lost))
    log.warning("store %s: sync failed (%s); it will resume from its checkpoint", ctx.store_id, kind,
                exc_info=not isinstance(exc, KlaviyoPluginError))
    detail = str(exc) if isinstance(exc, KlaviyoPluginError) else kind
    if errors >= MAX_CONSECUTIVE_ERRORS:
        status.pause(ctx, PauseReason.SYNC_ERROR, f"{errors} consecutive failed syncs; last: {detail}"[:500])
        return run.report("paused", started, False, f"Sync paused after {errors} failed attempts: {detail}")
    # Retry soon rather than tomorrow: the run resumes from its checkpoints.
    ctx.scheduler.schedule(INTEGRATION, every=DAILY, first_run=utcnow() + RETRY_AFTER_FAILURE)
    return run.report("failed", started, False, f"Sync failed ({detail}); it resumes from its checkpoint next time.")


def get_status(ctx: HostContext) -> IntegrationStatus:
    create_tables(ctx.storage.engine)
    return status.build_status(ctx)


def plan_changed(ctx: HostContext, plan: str) -> IntegrationStatus:
    """The store's plan changed: a downgrade pauses now, an upgrade resumes now.

    Only a pause for ``plan_downgraded`` is lifted by an upgrade; a pause for a key or
    for repeated errors needs its own fix. The resumed store is due at once, so the
    host's next scheduler tick resumes the interrupted run from its checkpoint.
    """
    create_tables(ctx.storage.engine)
    with ctx.storage.transaction() as tx:
        row = status.load(tx, ctx.store_id)
    if row is None or not row.installed:
        return status.build_status(ctx)
    paused_for_plan = (row.state == IntegrationState.SYNC_PAUSED.value
                       and row.pause_reason == PauseReason.PLAN_DOWNGRADED.value)
    if ctx.plan.allows(PLAN_FEATURE):
        if paused_for_plan:
            with ctx.storage.transaction() as tx:
                status.set_state(tx, ctx.store_id, IntegrationState.SYNCING, consecutive_errors=0)
            if ctx.secrets.get(SECRET_NAME):
                ctx.scheduler.schedule(INTEGRATION, every=DAILY, first_run=utcnow())
    elif row.state != IntegrationState.SYNC_PAUSED.value:
        status.pause(ctx, PauseReason.PLAN_DOWNGRADED, f"The store's plan ({plan}) does not include the Klaviyo integration.")
    return status.build_status(ctx)


def uninstall(ctx: HostContext) -> IntegrationStatus:
    """Cancel Integration: stop everything now, delete the key, keep the contacts."""
    create_tables(ctx.storage.engine)
    ctx.scheduler.unschedule(INTEGRATION)
    ctx.secrets.delete(SECRET_NAME)
    with ctx.storage.transaction() as tx:
        # A running sync checks the epoch before every write and stops when it changed.
        status.mark_uninstalled(tx, ctx.store_id)
        run_state.cancel_unfinished(tx, ctx.store_id)
    return status.build_status(ctx)
