"""The SmartPush hook specifications.

Every hook is called by the host with keyword arguments only, and reaches every
installed plugin. Hooks that act on one integration take an ``integration`` name: a
plugin must return ``None`` when that name is not its own, and the host takes the
first non-``None`` answer (``firstresult``). ``None`` from every plugin means no
installed plugin provides that integration.
"""

from __future__ import annotations

import click  # noqa: F401  (used in a string annotation)

from hookspecs import hookspec
from hookspecs.interfaces import HostContext
from hookspecs.types import (
    AuthorizeResult,
    IntegrationInfo,
    IntegrationStatus,
    SyncMode,
    SyncReport,
)


@hookspec
def smartpush_integration_info() -> IntegrationInfo:
    """Describe the integration this plugin provides.

    Called when the host lists the available integrations (``smartpush apps``).
    Takes no argument and returns the plugin's :class:`IntegrationInfo`; the host
    receives one item per plugin.
    """


@hookspec(firstresult=True)
def smartpush_install(integration: str, host: HostContext) -> IntegrationStatus | None:
    """Install the integration in a store.

    Called when the merchant adds the integration to ``host.store_id``. The plugin
    creates its tables (idempotently) and records that it is installed; the store is
    then *Pending Integration* until a key is authorized. Installing twice is harmless.

    :param integration: the integration the merchant chose, e.g. ``"klaviyo"``.
    :param host: the store's host context.
    :returns: the integration's status after installing, or ``None`` when
        ``integration`` is not this plugin's.
    """


@hookspec(firstresult=True)
def smartpush_authorize(integration: str, host: HostContext, credentials: str) -> AuthorizeResult | None:
    """Validate and store the merchant's credentials.

    Called when the merchant pastes a key. The plugin validates it against the
    provider (a key that cannot read everything the sync needs is refused with the
    missing scopes named), stores it through ``host.secrets`` and, when valid,
    schedules the daily sync through ``host.scheduler``. A paused integration resumes
    from its checkpoint with a new valid key. The key is never logged or echoed.

    :param credentials: the secret the merchant pasted (a Klaviyo Private API Key).
    :returns: whether the key was accepted and why, or ``None`` when ``integration``
        is not this plugin's.
    """


@hookspec(firstresult=True)
def smartpush_sync(integration: str, host: HostContext, mode: SyncMode) -> SyncReport | None:
    """Run one sync of the store, to completion or until it must stop.

    Called by the merchant (manual full sync, ``mode="full"``) and by the host's
    scheduler when the daily job is due (``mode="incremental"``). Blocks until the
    run completes, pauses (bad key, plan downgrade, repeated errors), is cancelled
    (uninstall) or is stopped (the host set ``host.stop_requested``: outcome
    ``"stopped"``). An interrupted run resumes from its last checkpoint on the next call.
    Two concurrent calls for one store never run at once: the second returns
    ``outcome="already_running"``.

    :param mode: ``"full"`` re-reads the whole account; ``"incremental"`` reads what
        changed since the last successful run (it runs a full sync when none succeeded yet).
    :returns: the run's report, or ``None`` when ``integration`` is not this plugin's.
    """


@hookspec(firstresult=True)
def smartpush_status(integration: str, host: HostContext) -> IntegrationStatus | None:
    """Report the integration's status in the store.

    Called when the merchant or an operator looks at the integration. Must be cheap:
    it reads stored state and never calls the provider.

    :returns: the status, or ``None`` when ``integration`` is not this plugin's.
    """


@hookspec(firstresult=True)
def smartpush_uninstall(integration: str, host: HostContext) -> IntegrationStatus | None:
    """Cancel the integration in the store.

    Called when the merchant chooses *Cancel Integration*. The plugin stops its
    scheduled job and any running sync promptly, deletes the stored key, and returns
    the store to *Pending Integration*. Imported contacts are kept. Reinstalling later
    works.

    :returns: the status after cancelling, or ``None`` when ``integration`` is not
        this plugin's.
    """


@hookspec
def smartpush_register_commands(cli: "click.Group") -> None:
    """Add integration-specific commands to the host's command line.

    Called once when the host builds its CLI (the development host's ``smartpush``
    command). A plugin adds a sub-group named after its integration, e.g.
    ``smartpush klaviyo skipped``. Returns nothing.

    :param cli: the host's root :class:`click.Group`. Inside a command,
        ``click.get_current_context().obj`` is a :class:`hookspecs.interfaces.HostProvider`.
    """


@hookspec(firstresult=True)
def smartpush_plan_changed(integration: str, host: HostContext, plan: str) -> IntegrationStatus | None:
    """React at once to a change of the store's plan.

    Called by the host right after the merchant's plan changed (the development host's
    ``smartpush plan set``), once per integration. ``host.plan`` already answers for the
    new plan. A downgrade that drops the integration pauses it at once
    (``plan_downgraded``); an upgrade resumes a store paused with ``plan_downgraded`` at
    once: the status goes back to *Syncing* and a sync is scheduled now. A store paused
    for another reason (a revoked key) stays paused.

    :param plan: the store's new plan name, for messages; the plugin decides with
        ``host.plan.allows(...)``.
    :returns: the status after the change, or ``None`` when ``integration`` is not this
        plugin's.
    """
