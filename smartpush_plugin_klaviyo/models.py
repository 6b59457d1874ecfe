"""Pydantic models of the Klaviyo groups (lists, segments) the plugin reads (revision 2026-07-15).

Data in the wild is not well-formed: every field is optional and nullable, a value of
the wrong type becomes ``None`` instead of failing the whole resource, and unknown extra
attributes are kept (``extra="allow"``). Profiles have no model: the profile hot path
(:func:`mapping.map_profile`) works on the raw dict for speed.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, WrapValidator

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
