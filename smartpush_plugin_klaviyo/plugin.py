"""SmartPush hook implementations for Klaviyo.

Thin on purpose: each hook checks that the call is for ``klaviyo`` (every plugin
receives every call) and delegates. Importing this module has no side effects.
"""

from __future__ import annotations

from hookspecs import hookimpl
from hookspecs.interfaces import HostContext
from hookspecs.types import AuthorizeResult, IntegrationInfo, IntegrationStatus, SyncReport
from smartpush_plugin_klaviyo import commands, service

INTEGRATION = "klaviyo"


@hookimpl
def smartpush_integration_info() -> IntegrationInfo:
    return service.info()


@hookimpl
def smartpush_install(integration: str, host: HostContext) -> IntegrationStatus | None:
    if integration != INTEGRATION:
        return None
    return service.install(host)


@hookimpl
def smartpush_authorize(integration: str, host: HostContext, credentials: str) -> AuthorizeResult | None:
    if integration != INTEGRATION:
        return None
    return service.authorize(host, credentials)


@hookimpl
def smartpush_sync(integration: str, host: HostContext, mode: str) -> SyncReport | None:
    if integration != INTEGRATION:
        return None
    return service.sync(host, mode)


@hookimpl
def smartpush_status(integration: str, host: HostContext) -> IntegrationStatus | None:
    if integration != INTEGRATION:
        return None
    return service.get_status(host)


@hookimpl
def smartpush_uninstall(integration: str, host: HostContext) -> IntegrationStatus | None:
    if integration != INTEGRATION:
        return None
    return service.uninstall(host)


@hookimpl
def smartpush_plan_changed(integration: str, host: HostContext, plan: str) -> IntegrationStatus | None:
    if integration != INTEGRATION:
        return None
    return service.plan_changed(host, plan)


@hookimpl
def smartpush_register_commands(cli) -> None:
    commands.register(cli)
