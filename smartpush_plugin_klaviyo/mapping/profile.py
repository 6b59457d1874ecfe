"""Mapping one Klaviyo profile (the raw JSON:API resource) to SmartPush contact fields.

Pure functions (no I/O). :func:`map_profile` runs for every profile of every sync and
works on the raw dict (no model) to stay far below 100 µs per profile. The rules are
tables in ``docs/mapping.md``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


from hookspecs.interfaces import normalize_email_key
from hookspecs.types import SubscriptionStatus
from smartpush_plugin_klaviyo.models import parse_datetime
from smartpush_plugin_klaviyo.mapping.normalize import (
    _locale_region,
    country_to_region,
    is_valid_email,
    parse_phone,
)

PREFIX = "kla_"
MAX_PROPERTY_BYTES = 64 * 1024
"""Largest compact-JSON UTF-8 size of one property value."""
MAX_PROPERTIES_BYTES = 512 * 1024
"""Largest compact-JSON UTF-8 size of the whole ``properties`` object."""
STANDARD_FIELDS = ("email", "phone", "name", "country")

SUBSCRIBED: SubscriptionStatus = "subscribed"
UNSUBSCRIBED: SubscriptionStatus = "unsubscribed"
NEVER_SUBSCRIBED: SubscriptionStatus = "never_subscribed"


# --------------------------------------------------------------------------- results
@dataclass(slots=True, repr=False)
class MappedProfile:
    """A Klaviyo profile mapped to SmartPush contact fields. ``repr`` shows no PII."""

    klaviyo_id: str
    email: str | None = None
    """Trimmed, original case: the address a sender uses."""
    email_key: str | None = None
    """Trimmed and lowercased (:func:`normalize_email_key`): for matching."""
    phone: str | None = None
    """E.164."""
    name: str | None = None
    country: str | None = None
    email_status: SubscriptionStatus | None = None
    sms_status: SubscriptionStatus | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    """Every key starts with ``kla_``."""
    updated: datetime | None = None
    created: datetime | None = None
    """Klaviyo's ``created``: the rolling sweep covers ranges of it."""
    warnings: list[str] = field(default_factory=list)
    """Machine-ish strings without PII (``invalid_phone``, ``property_collision:locale`` ...)."""

    def __repr__(self) -> str:
        return (
            f"MappedProfile(klaviyo_id={self.klaviyo_id!r}, has_email={self.email is not None}, "
            f"has_phone={self.phone is not None}, has_name={self.name is not None}, "
            f"email_status={self.email_status!r}, sms_status={self.sms_status!r}, "
            f"properties={len(self.properties)} keys, updated={self.updated!r}, warnings={self.warnings!r})"
        )

    __str__ = __repr__


@dataclass(slots=True, frozen=True)
class Skip:
    """A profile that is not imported. ``reason`` is short, machine-ish and free of PII."""

    klaviyo_id: str
    reason: str


# --------------------------------------------------------------------------- properties
_STATIC_ATTRIBUTES = (
    "external_id",
    "first_name",
    "last_name",
    "organization",
    "title",
    "locale",
    "image",
    "created",
    "updated",
    "last_event_date",
    "predictive_analytics",
)
_ATTR_KEY = {name: PREFIX + name for name in _STATIC_ATTRIBUTES}
_HANDLED_ATTRIBUTES = frozenset({"email", "phone_number", "location", "properties", "subscriptions"})
_LOCATION_FIELDS = (
    "address1", "address2", "city", "country", "latitude", "longitude", "region", "zip", "timezone", "ip",
)
_LOCATION_KEY = {name: f"{PREFIX}location_{name}" for name in _LOCATION_FIELDS}

# (source key in the Klaviyo object, property key)
_EMAIL_MARKETING = (
    ("consent", "kla_email_consent"),
    ("consent_timestamp", "kla_email_consent_timestamp"),
    ("method", "kla_email_consent_method"),
    ("method_detail", "kla_email_consent_method_detail"),
    ("custom_method_detail", "kla_email_consent_custom_method_detail"),
    ("last_updated", "kla_email_consent_last_updated"),
    ("double_optin", "kla_email_double_optin"),
    ("can_receive_email_marketing", "kla_email_can_receive_marketing"),
    ("suppression", "kla_email_suppressions"),
    ("list_suppressions", "kla_email_list_suppressions"),
)
_SMS_MARKETING = (
    ("consent", "kla_sms_consent"),
    ("consent_timestamp", "kla_sms_consent_timestamp"),
    ("method", "kla_sms_consent_method"),
    ("method_detail", "kla_sms_consent_method_detail"),
    ("last_updated", "kla_sms_consent_last_updated"),
    ("can_receive_sms_marketing", "kla_sms_can_receive_marketing"),
)
_SMS_TRANSACTIONAL = (
    ("consent", "kla_sms_transactional_consent"),
    ("consent_timestamp", "kla_sms_transactional_consent_timestamp"),
    ("method", "kla_sms_transactional_consent_method"),
    ("method_detail", "kla_sms_transactional_consent_method_detail"),
    ("last_updated", "kla_sms_transactional_consent_last_updated"),
    ("can_receive_sms_transactional", "kla_sms_can_receive_transactional"),
)
_EMAIL_MARKETING_SRC = frozenset(src for src, _ in _EMAIL_MARKETING)
_SMS_MARKETING_SRC = frozenset(src for src, _ in _SMS_MARKETING)
_SMS_TRANSACTIONAL_SRC = frozenset(src for src, _ in _SMS_TRANSACTIONAL)
_OTHER_CHANNELS = ("mobile_push", "whatsapp")
_CHANNEL_KEY = {name: f"{PREFIX}subscriptions_{name}" for name in _OTHER_CHANNELS}

EMAIL_EVIDENCE_KEYS = tuple(dst for _, dst in _EMAIL_MARKETING)
SMS_EVIDENCE_KEYS = tuple(dst for _, dst in _SMS_MARKETING)

RESERVED_PROPERTY_KEYS: frozenset[str] = frozenset(
    {
        "kla_phone_number",
        "kla_phone_number_raw",
        "kla_email_raw",
        "kla_email_open_tracking",
        *_ATTR_KEY.values(),
        *_LOCATION_KEY.values(),
        *EMAIL_EVIDENCE_KEYS,
        *SMS_EVIDENCE_KEYS,
        *(dst for _, dst in _SMS_TRANSACTIONAL),
        *_CHANNEL_KEY.values(),
    }
)
"""Keys the standard mapping may produce: a custom property never takes one of them."""

_DUMPS = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode


def _make_fast_dumps():
    """The C encoder behind ``_DUMPS`` without its per-call set-up (3x faster for small values)."""
    try:
        from json.encoder import c_encode_basestring, c_make_encoder

        if c_make_encoder is None or c_encode_basestring is None:
            return None
        encoder = c_make_encoder(None, str, c_encode_basestring, None, ":", ",", False, False, True)
        probe = [{"a": "é", "b": [1, 2.5, None, True]}]
        if "".join(encoder(probe, 0)) != _DUMPS(probe):
            return None
        return lambda value: "".join(encoder(value, 0))
    except Exception:  # noqa: BLE001 - another interpreter: the portable encoder is fine
        return None


_FAST_DUMPS = _make_fast_dumps() or _DUMPS


def _json_bytes(value: Any) -> int:
    """UTF-8 size of the compact JSON of ``value`` (``ensure_ascii=False``)."""
    return len(_FAST_DUMPS(value).encode("utf-8", "surrogatepass"))


_STR_FAST_MAX = (MAX_PROPERTY_BYTES - 2) // 6
"""Strings up to this length cannot exceed MAX_PROPERTY_BYTES (6 bytes per char at most: ``\\u0000``)."""


def _too_large(props: dict[str, Any]) -> bool:
    """Whether one value's JSON exceeds MAX_PROPERTY_BYTES or the whole object MAX_PROPERTIES_BYTES.

    Cheap upper bounds first (exact sizes only when a bound is over a limit), so the
    decision is exactly the one of measuring the compact UTF-8 JSON, at a fraction of the cost.
    """
    total = 2
    for key, value in props.items():
        t = type(value)
        if t is str:
            n = len(value)
            if n <= _STR_FAST_MAX:
                size = 6 * n + 2
            else:
                size = _json_bytes(value)
                if size > MAX_PROPERTY_BYTES:
                    return True
        elif value is None or t is bool or t is float:
            size = 32
        elif t is int and -(10**20) < value < 10**20:
            size = 32
        elif not value and (t is list or t is dict):
            size = 2
        else:
            size = _json_bytes(value)
            if size > MAX_PROPERTY_BYTES:
                return True
        total += 6 * len(key) + 4 + size
    if total > MAX_PROPERTIES_BYTES:
        return _json_bytes(props) > MAX_PROPERTIES_BYTES
    return False


def _free_key(base: str, taken: dict[str, Any]) -> str:
    if base not in taken and base not in RESERVED_PROPERTY_KEYS:
        return base
    n = 2
    while f"{base}_{n}" in taken or f"{base}_{n}" in RESERVED_PROPERTY_KEYS:
        n += 1
    return f"{base}_{n}"


# --------------------------------------------------------------------------- status
_EMAIL_CONSENT = {"UNSUBSCRIBED": UNSUBSCRIBED, "NEVER_SUBSCRIBED": NEVER_SUBSCRIBED}


def _email_status(marketing: dict, warnings: list[str]) -> SubscriptionStatus | None:
    consent = marketing.get("consent")
    c = consent.strip().upper() if isinstance(consent, str) else None
    if c == "SUBSCRIBED":
        suppression = marketing.get("suppression")
        suppressed = bool(suppression) or marketing.get("can_receive_email_marketing") is False
        return UNSUBSCRIBED if suppressed else SUBSCRIBED
    status = _EMAIL_CONSENT.get(c) if c else None
    if status is None:
        warnings.append("unknown_email_consent")
    return status


def _sms_status(marketing: dict, warnings: list[str]) -> SubscriptionStatus | None:
    consent = marketing.get("consent")
    c = consent.strip().upper() if isinstance(consent, str) else None
    if c == "SUBSCRIBED":
        return UNSUBSCRIBED if marketing.get("can_receive_sms_marketing") is False else SUBSCRIBED
    status = _EMAIL_CONSENT.get(c) if c else None
    if status is None:
        warnings.append("unknown_sms_consent")
    return status


def merge_status(
    existing: SubscriptionStatus | None, incoming: SubscriptionStatus | None
) -> SubscriptionStatus | None:
    """Incoming ``subscribed`` overwrites; other incoming values only fill an unknown status."""
    if incoming is None:
        return existing
    if incoming == SUBSCRIBED:
        return SUBSCRIBED
    return incoming if existing is None else existing


# --------------------------------------------------------------------------- profile
def map_profile(resource: dict) -> MappedProfile | Skip:
    """Map one Klaviyo profile resource (JSON:API dict). Never raises."""
    kid = ""
    try:
        if not isinstance(resource, dict):
            return Skip("", "malformed: resource")
        rid = resource.get("id")
        if not isinstance(rid, str) or not rid.strip():
            return Skip(rid if isinstance(rid, str) else "", "missing_id")
        kid = rid
        return _map(resource, rid)
    except Exception as exc:  # noqa: BLE001 - one bad profile must not stop a sync
        return Skip(kid, f"unexpected: {type(exc).__name__}")


def _map(resource: dict, kid: str) -> MappedProfile | Skip:
    attrs = resource.get("attributes")
    if attrs is None:
        return Skip(kid, "no_email_or_phone")
    if type(attrs) is not dict:
        return Skip(kid, "malformed: attributes")
    warnings: list[str] = []
    props: dict[str, Any] = {}
    extras: list[tuple[str, Any]] = []  # keys decided only after custom properties (see docs)

    # -- email
    email = None
    email_problem = None
    raw = attrs.get("email")
    if raw is not None:
        if type(raw) is str:
            text = raw.strip()
            if text:
                if is_valid_email(text):
                    email = text
                else:
                    email_problem = "invalid_email"
        else:
            email_problem = "malformed: email"
        if email_problem is not None:
            props["kla_email_raw"] = raw
            warnings.append(email_problem)

    # -- location (also the phone's default region)
    location = attrs.get("location")
    country = None
    if type(location) is dict:
        for key, value in location.items():
            if value is None:
                continue
            pkey = _LOCATION_KEY.get(key)
            if pkey is None:
                extras.append((f"{PREFIX}location_{key}", value))
            else:
                props[pkey] = value
        c = location.get("country")
        if type(c) is str:
            country = c.strip() or None
    elif location is not None:
        warnings.append("malformed: location")

    # -- phone
    phone = None
    phone_problem = None
    raw = attrs.get("phone_number")
    if raw is not None:
        if type(raw) is str:
            text = raw.strip()
            if text:
                region = None
                if text[0] != "+":
                    region = country_to_region(country) or _locale_region(attrs.get("locale"))
                phone = parse_phone(text, region)
                if phone is None:
                    phone_problem = "invalid_phone"
        else:
            phone_problem = "malformed: phone_number"
        if phone_problem is not None:
            props["kla_phone_number_raw"] = raw
            warnings.append(phone_problem)
        elif phone is not None:
            props["kla_phone_number"] = phone

    if email is None and phone is None:
        if email_problem == "invalid_email":
            return Skip(kid, "invalid_email_no_phone")
        if email_problem is not None:
            return Skip(kid, email_problem)
        if phone_problem == "invalid_phone":
            return Skip(kid, "invalid_phone_no_email")
        if phone_problem is not None:
            return Skip(kid, phone_problem)
        return Skip(kid, "no_email_or_phone")

    # -- other attributes
    for key, value in attrs.items():
        if value is None or key in _HANDLED_ATTRIBUTES:
            continue
        pkey = _ATTR_KEY.get(key)
        if pkey is None:
            extras.append((f"{PREFIX}{key}", value))
        else:
            props[pkey] = value

    first = attrs.get("first_name")
    last = attrs.get("last_name")
    first = first.strip() if type(first) is str else ""
    last = last.strip() if type(last) is str else ""
    name = f"{first} {last}" if first and last else (first or last or None)

    updated = None
    raw = attrs.get("updated")
    if raw is not None:
        updated = parse_datetime(raw)
        if updated is None:
            warnings.append("malformed: updated")
    raw = attrs.get("created")
    created = parse_datetime(raw) if raw is not None else None

    # -- subscriptions
    email_status = sms_status = None
    subs = attrs.get("subscriptions")
    if type(subs) is dict:
        email_status, sms_status = _subscriptions(subs, props, extras, warnings)
    elif subs is not None:
        warnings.append("malformed: subscriptions")
    if email is None:
        email_status = None  # a status belongs to an address
    if phone is None:
        sms_status = None

    # -- custom properties: kla_<key>, unless that is a standard key
    custom = attrs.get("properties")
    if type(custom) is dict:
        renamed = None
        for key, value in custom.items():
            pkey = PREFIX + key
            if pkey in RESERVED_PROPERTY_KEYS:
                if renamed is None:
                    renamed = []
                renamed.append(key)
            else:
                props[pkey] = value
        if renamed:
            for key in sorted(renamed):
                props[_free_key(f"{PREFIX}prop_{key}", props)] = custom[key]
                warnings.append(f"property_collision:{key}")
    elif custom is not None:
        warnings.append("malformed: properties")

    # -- attributes this mapping does not know: after custom properties, which win
    for pkey, value in extras:
        if pkey in props or pkey in RESERVED_PROPERTY_KEYS:
            new_key = _free_key(f"{PREFIX}attr_{pkey[len(PREFIX):]}", props)
            warnings.append(f"attribute_collision:{pkey[len(PREFIX):]}")
            pkey = new_key
        props[pkey] = value

    if _too_large(props):
        return Skip(kid, "property_too_large")

    return MappedProfile(
        klaviyo_id=kid,
        email=email,
        email_key=normalize_email_key(email) if email is not None else None,
        phone=phone,
        name=name,
        country=country,
        email_status=email_status,
        sms_status=sms_status,
        properties=props,
        updated=updated,
        created=created,
        warnings=warnings,
    )


def _copy_fields(obj: dict, table, known, extra_prefix: str, props: dict, extras: list) -> None:
    for src, dst in table:
        value = obj.get(src)
        if value is not None:
            props[dst] = value
    for key, value in obj.items():
        if key not in known and value is not None:
            extras.append((f"{extra_prefix}{key}", value))


# Per channel: the objects mapped field by field ((field, property) table, known fields) and
# the keys kept as one property each. Anything else goes to the extras.
_CHANNEL_OBJECTS = {
    "email": {"marketing": (_EMAIL_MARKETING, _EMAIL_MARKETING_SRC)},
    "sms": {"marketing": (_SMS_MARKETING, _SMS_MARKETING_SRC),
            "transactional": (_SMS_TRANSACTIONAL, _SMS_TRANSACTIONAL_SRC)},
}
_CHANNEL_PLAIN = {"email": frozenset({"open_tracking"}), "sms": frozenset()}


def _subscriptions(subs: dict, props: dict, extras: list, warnings: list[str]):
    email_status = sms_status = None
    for channel, value in subs.items():
        if value is None:
            continue
        if channel == "email":
            email_status = _channel(channel, value, _email_status, props, extras, warnings)
        elif channel == "sms":
            sms_status = _channel(channel, value, _sms_status, props, extras, warnings)
        else:
            pkey = _CHANNEL_KEY.get(channel)
            if pkey is None:
                extras.append((f"kla_subscriptions_{channel}", value))
            else:
                props[pkey] = value
    return email_status, sms_status


def _channel(channel: str, value, status_of, props: dict, extras: list, warnings: list[str]):
    """One channel of ``subscriptions`` (email or SMS) into properties; returns the
    channel's status, read from its ``marketing`` object (``None``: none given)."""
    if type(value) is not dict:
        warnings.append(f"malformed: subscriptions.{channel}")
        return None
    objects, plain = _CHANNEL_OBJECTS[channel], _CHANNEL_PLAIN[channel]
    status = None
    for key, sub in value.items():
        if sub is None:
            continue
        fields = objects.get(key)
        if fields is not None:
            if type(sub) is dict:
                _copy_fields(sub, fields[0], fields[1], f"kla_{channel}_{key}_", props, extras)
                if key == "marketing":
                    status = status_of(sub, warnings)
            else:
                warnings.append(f"malformed: subscriptions.{channel}.{key}")
        elif key in plain:
            props[f"kla_{channel}_{key}"] = sub
        else:
            extras.append((f"kla_subscriptions_{channel}_{key}", sub))
    return status


