"""Values that cross the host/plugin contract.

They are plain pydantic models so the host can log, store and print them as JSON.
None of them may ever hold a secret or a contact's PII: a report names Klaviyo
profile ids and reasons, never emails or phone numbers.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SubscriptionStatus = Literal["subscribed", "unsubscribed", "never_subscribed"]
"""A SmartPush channel status. ``None`` where a value is optional means *unknown*."""

SyncMode = Literal["full", "incremental"]


class IntegrationState(str, Enum):
    """The status a merchant sees for one integration in one store."""

    PENDING_INTEGRATION = "pending_integration"
    """Installed or not, but no usable key: nothing syncs until the merchant authorizes."""
    SYNCING = "syncing"
    """Key valid, syncs scheduled (one may be running right now)."""
    SYNC_PAUSED = "sync_paused"
    """Syncing stopped for a reason in :attr:`IntegrationStatus.pause_reason`."""


class PauseReason(str, Enum):
    KEY_INVALID = "key_invalid"
    """Klaviyo answered 401: the key was revoked, expired or mistyped."""
    MISSING_SCOPE = "missing_scope"
    """Klaviyo answered 403 with a JSON:API error: the key lacks a read scope."""
    SYNC_ERROR = "sync_error"
    """Repeated sync errors (Klaviyo unreachable, bad responses) with no progress."""
    PLAN_DOWNGRADED = "plan_downgraded"
    """The merchant's plan no longer includes this integration."""
    API_REVISION_UNSUPPORTED = "api_revision_unsupported"
    """The source API no longer accepts the API revision the integration sends (retired)."""


class IntegrationInfo(BaseModel):
    """What ``smartpush apps`` shows for one installed plugin."""

    name: str
    """The integration's short name, used on the command line (``klaviyo``)."""
    title: str
    description: str = ""
    version: str = ""


class AuthorizeResult(BaseModel):
    """The outcome of :func:`hookspecs.specs.smartpush_authorize`."""

    ok: bool
    message: str
    """Human readable, never echoing the key."""
    missing_scopes: list[str] = Field(default_factory=list)
    account_name: str | None = None


class SkippedRecord(BaseModel):
    """One source record that was not imported, with a reason and no PII."""

    source_id: str
    reason: str


class SyncReport(BaseModel):
    """What one sync run did. Counts only, ids and reasons: no PII."""

    model_config = ConfigDict(extra="allow")

    integration: str
    store_id: str
    mode: SyncMode
    outcome: Literal["completed", "paused", "cancelled", "stopped", "already_running", "not_installed", "failed"]
    message: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    resumed: bool = False
    counts: dict[str, int] = Field(default_factory=dict)
    """``profiles_seen``, ``contacts_created``, ``contacts_merged``, ``skipped`` ..."""
    requests: dict[str, int] = Field(default_factory=dict)
    """HTTP requests sent, per endpoint (``GET /api/profiles``), plus ``429``."""
    skipped: list[SkippedRecord] = Field(default_factory=list)
    """The first skipped records of this run (the full list is in the plugin's storage)."""
    warnings: list[str] = Field(default_factory=list)


class SyncProgress(BaseModel):
    """Where a running sync is, for a host to show while it runs (no PII)."""

    phase: str
    """``probe``, ``groups``, ``profiles_and_memberships``, ``checking_groups``, ``sweep``, ``finishing``."""
    done: int | None = None
    total: int | None = None
    """``None`` when the total is not known yet."""
    unit: str = ""
    """What ``done``/``total`` count: ``groups``, ``profiles``, ``pages``."""
    message: str = ""
    """One line for people, e.g. ``checking groups: 130 of 224``."""
    updated_at: datetime | None = None


class IntegrationStatus(BaseModel):
    """The status of one integration in one store, as the merchant sees it."""

    model_config = ConfigDict(extra="allow")

    integration: str
    store_id: str
    installed: bool
    state: IntegrationState
    pause_reason: PauseReason | None = None
    pause_detail: str | None = None
    """Exact cause, e.g. the missing scope ``segments:read``. No secret, no PII."""
    phase: str | None = None
    """The phase of the running (or interrupted) sync, ``None`` when idle."""
    last_sync_started_at: datetime | None = None
    last_successful_sync_at: datetime | None = None
    next_sync_at: datetime | None = None
    counts: dict[str, int] = Field(default_factory=dict)
    progress: SyncProgress | None = None
    """The running sync's progress, ``None`` when no sync runs."""
    last_run: dict[str, Any] | None = None
    """Figures of the last finished run: ``mode``, ``outcome``, ``duration_s``, ``requests``,
    ``429``, ``removals`` ... (``None`` before the first)."""
    extra: dict[str, Any] = Field(default_factory=dict)
