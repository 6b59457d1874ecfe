"""Pydantic models of the Klaviyo resources the plugin reads (revision 2026-07-15).

Data in the wild is not well-formed: every field is optional and nullable, a value of
the wrong type becomes ``None`` instead of failing the whole resource, and unknown extra
attributes are kept (``extra="allow"``). The profile hot path (:func:`mapping.map_profile`)
works on the raw dict for speed; these models are for everything else (groups, tooling,
tests) and document the shape.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WrapValidator

from smartpush_plugin_klaviyo.timeutil import parse_timestamp

T = TypeVar("T")

GroupKind = Literal["list", "segment"]


def _lenient(value: Any, handler):
    try:
        return handler(value)
    except ValidationError:
        return None


Lenient = Annotated[T | None, WrapValidator(_lenient)]
"""A field that becomes ``None`` when its value has the wrong type."""


def parse_datetime(value: Any) -> datetime | None:
    """An ISO 8601 / RFC 3339 string as an aware datetime (naive means UTC); ``None``
    when not parseable. Every RFC 3339 form is accepted (``Z``/``z``, ``t``, any
    fraction length): see :func:`timeutil.parse_timestamp`."""
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
    return parse_timestamp(value)


def _lenient_datetime(value: Any) -> datetime | None:
    return parse_datetime(value)


LenientDatetime = Annotated[datetime | None, WrapValidator(lambda v, h: _lenient_datetime(v))]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=False)

    def __repr__(self) -> str:  # profile data is PII: never show values in logs or tracebacks
        return f"{type(self).__name__}(<{len(self.model_fields_set)} fields set>)"

    __str__ = __repr__


class ProfileLocation(_Lenient):
    address1: Lenient[str] = None
    address2: Lenient[str] = None
    city: Lenient[str] = None
    country: Lenient[str] = None
    latitude: Lenient[str | float] = None
    longitude: Lenient[str | float] = None
    region: Lenient[str] = None
    zip: Lenient[str] = None
    timezone: Lenient[str] = None
    ip: Lenient[str] = None


class EmailMarketingSuppression(_Lenient):
    reason: Lenient[str] = None
    timestamp: Lenient[str] = None


class EmailMarketingListSuppression(_Lenient):
    list_id: Lenient[str] = None
    reason: Lenient[str] = None
    timestamp: Lenient[str] = None


class EmailMarketing(_Lenient):
    can_receive_email_marketing: Lenient[bool] = None
    consent: Lenient[str] = None
    consent_timestamp: Lenient[str] = None
    last_updated: Lenient[str] = None
    method: Lenient[str] = None
    method_detail: Lenient[str] = None
    custom_method_detail: Lenient[str] = None
    double_optin: Lenient[bool] = None
    suppression: Lenient[list[EmailMarketingSuppression]] = None
    list_suppressions: Lenient[list[EmailMarketingListSuppression]] = None


class EmailChannel(_Lenient):
    marketing: Lenient[EmailMarketing] = None
    open_tracking: Lenient[dict[str, Any]] = None


class SMSMarketing(_Lenient):
    can_receive_sms_marketing: Lenient[bool] = None
    consent: Lenient[str] = None
    consent_timestamp: Lenient[str] = None
    method: Lenient[str] = None
    method_detail: Lenient[str] = None
    last_updated: Lenient[str] = None


class SMSTransactional(_Lenient):
    can_receive_sms_transactional: Lenient[bool] = None
    consent: Lenient[str] = None
    consent_timestamp: Lenient[str] = None
    method: Lenient[str] = None
    method_detail: Lenient[str] = None
    last_updated: Lenient[str] = None


class SMSChannel(_Lenient):
    marketing: Lenient[SMSMarketing] = None
    transactional: Lenient[SMSTransactional] = None


class Subscriptions(_Lenient):
    email: Lenient[EmailChannel] = None
    sms: Lenient[SMSChannel] = None
    mobile_push: Lenient[dict[str, Any]] = None
    whatsapp: Lenient[dict[str, Any]] = None


class ProfileAttributes(_Lenient):
    email: Lenient[str] = None
    phone_number: Lenient[str] = None
    external_id: Lenient[str] = None
    first_name: Lenient[str] = None
    last_name: Lenient[str] = None
    organization: Lenient[str] = None
    locale: Lenient[str] = None
    title: Lenient[str] = None
    image: Lenient[str] = None
    created: LenientDatetime = None
    updated: LenientDatetime = None
    last_event_date: LenientDatetime = None
    location: Lenient[ProfileLocation] = None
    properties: Lenient[dict[str, Any]] = None
    subscriptions: Lenient[Subscriptions] = None
    predictive_analytics: Lenient[dict[str, Any]] = None


class KlaviyoProfile(_Lenient):
    """A profile resource (``GET /api/profiles`` item, with ``additional-fields[profile]=subscriptions``)."""

    type: Lenient[str] = None
    id: Lenient[str] = None
    attributes: ProfileAttributes = Field(default_factory=ProfileAttributes)

    def __repr__(self) -> str:  # never leak PII
        return f"KlaviyoProfile(id={self.id!r})"

    __str__ = __repr__


def parse_profile(resource: Any) -> KlaviyoProfile | None:
    """A profile resource as a model; ``None`` when it is not an object at all."""
    if not isinstance(resource, dict):
        return None
    data = dict(resource)
    if not isinstance(data.get("attributes"), dict):
        data["attributes"] = {}
    try:
        return KlaviyoProfile.model_validate(data)
    except ValidationError:
        return None


class KlaviyoGroup(_Lenient):
    """A list or a segment."""

    id: str
    kind: GroupKind
    name: str | None = None
    created: datetime | None = None
    updated: datetime | None = None
    is_active: bool = True
    """Lists are always active; an inactive segment's membership no longer updates."""

    # Group names are not PII: the full pydantic repr is fine (and useful) here.
    __repr__ = BaseModel.__repr__
    __str__ = BaseModel.__str__


def parse_group(resource: Any, kind: GroupKind) -> KlaviyoGroup | None:
    """A ``list`` or ``segment`` resource as a :class:`KlaviyoGroup`; ``None`` without a usable id.

    Never raises: a wrong-typed name becomes ``None``, unparseable dates become ``None``,
    a segment without a boolean ``is_active`` counts as active.
    """
    if not isinstance(resource, dict) or kind not in ("list", "segment"):
        return None
    gid = resource.get("id")
    if not isinstance(gid, str) or not gid.strip():
        return None
    attrs = resource.get("attributes")
    if not isinstance(attrs, dict):
        attrs = {}
    name = attrs.get("name")
    is_active = True
    if kind == "segment":
        active = attrs.get("is_active")
        is_active = active if isinstance(active, bool) else True
    return KlaviyoGroup(
        id=gid,
        kind=kind,
        name=name if isinstance(name, str) else None,
        created=parse_datetime(attrs.get("created")),
        updated=parse_datetime(attrs.get("updated")),
        is_active=is_active,
    )
