"""Pure mapping from Klaviyo resources to SmartPush contacts, tags and statuses.

No I/O, no database. Every rule here is written down as tables in ``docs/mapping.md``;
keep the two in step.

The profile hot path (:func:`map_profile`) works on the raw JSON:API dict instead of a
pydantic model: it runs for every profile of every sync and must stay far below
100 µs per profile.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import phonenumbers
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

from hookspecs.interfaces import Contact, NewContact, normalize_email_key
from hookspecs.types import SubscriptionStatus
from smartpush_plugin_klaviyo.models import (  # re-exported: the engine imports them from here
    GroupKind,
    KlaviyoGroup,
    KlaviyoProfile,
    parse_datetime,
    parse_group,
    parse_profile,
)

__all__ = [
    "MAX_PROPERTY_BYTES",
    "MAX_PROPERTIES_BYTES",
    "PREFIX",
    "RESERVED_PROPERTY_KEYS",
    "STANDARD_FIELDS",
    "Collision",
    "GroupInfo",
    "GroupKind",
    "KlaviyoGroup",
    "KlaviyoProfile",
    "MappedProfile",
    "Skip",
    "assign_tags",
    "base_tag",
    "country_to_region",
    "is_valid_email",
    "map_profile",
    "merge_into",
    "merge_status",
    "new_contact",
    "normalize_group_name",
    "owned_fields_of",
    "parse_group",
    "parse_phone",
    "parse_profile",
]

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


# --------------------------------------------------------------------------- email
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_FAST_EMAIL = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*@(?:{_LABEL}\.)+[A-Za-z]{{1,63}}")
_SPECIAL_USE = frozenset(SPECIAL_USE_DOMAIN_NAMES)


def _fast_email_ok(email: str) -> bool:
    """A cheap test accepting only plain ASCII addresses that email-validator also accepts.

    ``False`` means "not sure" (the caller then asks email-validator), never "invalid".
    """
    if len(email) > 254 or _FAST_EMAIL.fullmatch(email) is None:
        return False
    local, _, domain = email.rpartition("@")
    if len(local) > 64 or len(domain) > 253 or "--" in domain:
        return False
    domain = domain.lower()
    tld = domain.rpartition(".")[2]
    if tld in _SPECIAL_USE or domain in _SPECIAL_USE:
        return False
    for special in _SPECIAL_USE:
        if domain.endswith("." + special):
            return False
    return True


def is_valid_email(email: str) -> bool:
    """``email_validator.validate_email(check_deliverability=False)`` accepts it (fast path first)."""
    if _fast_email_ok(email):
        return True
    try:
        validate_email(email, check_deliverability=False)
    except EmailNotValidError:
        return False
    except Exception:  # noqa: BLE001 - garbage input must never escape
        return False
    return True


# --------------------------------------------------------------------------- countries
def _country_key(text: str) -> str:
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).casefold()
    text = text.replace("&", " and ")
    text = re.sub(r"[.,'’()]", "", text)
    text = re.sub(r"[\s_-]+", " ", text).strip()
    if text.startswith("the "):
        text = text[4:]
    return text


# Common English and local names and codes that CLDR display names (below) miss.
_COMMON_COUNTRY_NAMES: dict[str, str] = {
    "usa": "US", "us": "US", "u s a": "US", "united states": "US", "united states of america": "US",
    "america": "US", "estados unidos": "US", "etats unis": "US", "vereinigte staaten": "US",
    "uk": "GB", "united kingdom": "GB", "great britain": "GB", "britain": "GB", "england": "GB",
    "scotland": "GB", "wales": "GB", "northern ireland": "GB", "gbr": "GB",
    "united kingdom of great britain and northern ireland": "GB",
    "deutschland": "DE", "germany": "DE", "deu": "DE", "allemagne": "DE", "alemania": "DE",
    "holland": "NL", "netherlands": "NL", "nederland": "NL", "nld": "NL",
    "russia": "RU", "russian federation": "RU", "south korea": "KR", "korea": "KR",
    "republic of korea": "KR", "korea republic of": "KR", "north korea": "KP",
    "czech republic": "CZ", "czechia": "CZ", "turkey": "TR", "turkiye": "TR",
    "vietnam": "VN", "viet nam": "VN", "ivory coast": "CI", "cote divoire": "CI",
    "uae": "AE", "united arab emirates": "AE", "hong kong": "HK", "hong kong sar": "HK",
    "hong kong sar china": "HK", "macau": "MO", "macao": "MO", "taiwan": "TW", "iran": "IR",
    "syria": "SY", "bolivia": "BO", "venezuela": "VE", "tanzania": "TZ", "laos": "LA",
    "moldova": "MD", "brunei": "BN", "cape verde": "CV", "swaziland": "SZ", "eswatini": "SZ",
    "burma": "MM", "myanmar": "MM", "republic of ireland": "IE", "ireland": "IE", "eire": "IE",
    "schweiz": "CH", "suisse": "CH", "svizzera": "CH", "switzerland": "CH", "osterreich": "AT",
    "austria": "AT", "espana": "ES", "spain": "ES", "italia": "IT", "italy": "IT", "france": "FR",
    "belgique": "BE", "belgie": "BE", "belgium": "BE", "sverige": "SE", "sweden": "SE",
    "norge": "NO", "norway": "NO", "danmark": "DK", "denmark": "DK", "suomi": "FI", "finland": "FI",
    "polska": "PL", "poland": "PL", "brasil": "BR", "brazil": "BR", "mexico": "MX", "canada": "CA",
    "australia": "AU", "new zealand": "NZ", "japan": "JP", "nippon": "JP", "china": "CN",
    "peoples republic of china": "CN", "india": "IN", "south africa": "ZA", "singapore": "SG",
    "israel": "IL", "portugal": "PT", "greece": "GR", "hellas": "GR", "hungary": "HU",
    "magyarorszag": "HU", "romania": "RO", "argentina": "AR", "chile": "CL", "colombia": "CO",
    "palestine": "PS", "vatican": "VA", "vatican city": "VA", "kosovo": "XK",
    "can": "CA", "aus": "AU", "fra": "FR", "esp": "ES", "ita": "IT", "che": "CH", "aut": "AT",
    "bel": "BE", "swe": "SE", "nor": "NO", "dnk": "DK", "fin": "FI", "irl": "IE", "prt": "PT",
    "pol": "PL", "mex": "MX", "bra": "BR", "jpn": "JP", "chn": "CN", "ind": "IN", "nzl": "NZ",
    "zaf": "ZA", "sgp": "SG", "hkg": "HK", "are": "AE", "isr": "IL", "kor": "KR", "arg": "AR",
    "chl": "CL", "col": "CO", "cze": "CZ", "grc": "GR", "hun": "HU", "rou": "RO", "tur": "TR",
}

_REGIONS = frozenset(phonenumbers.SUPPORTED_REGIONS)
_country_table: dict[str, str] | None = None
_country_cache: dict[str, str | None] = {}
_COUNTRY_CACHE_MAX = 4096


def _build_country_table() -> dict[str, str]:
    """ISO alpha-2 codes, the common names above, and CLDR display names in every language."""
    table: dict[str, str] = {}
    ambiguous: set[str] = set()
    try:
        from phonenumbers.geodata.locale import LOCALE_DATA  # ~0.5 s, once, on first unknown name
    except Exception:  # noqa: BLE001 - names only improve matching
        LOCALE_DATA = {}
    for region in sorted(LOCALE_DATA):
        if region not in _REGIONS:
            continue
        names = LOCALE_DATA[region]
        for lang in sorted(names):
            name = names[lang]
            for _ in range(4):  # '*xx' points at another language's entry
                if isinstance(name, str) and name.startswith("*"):
                    name = names.get(name[1:])
            if not isinstance(name, str) or not name:
                continue
            key = _country_key(name)
            if not key:
                continue
            if key in table and table[key] != region:
                ambiguous.add(key)
            else:
                table[key] = region
    for key in ambiguous:
        table.pop(key, None)
    table.update(_COMMON_COUNTRY_NAMES)
    for region in _REGIONS:
        table[region.lower()] = region
    return table


def country_to_region(country: Any) -> str | None:
    """The phonenumbers region code (``"US"``) for a Klaviyo country name or ISO code, else ``None``."""
    if not isinstance(country, str):
        return None
    cached = _country_cache.get(country, False)
    if cached is not False:
        return cached  # type: ignore[return-value]
    text = country.strip()
    region: str | None = None
    if len(text) == 2 and text.isascii() and text.upper() in _REGIONS:
        region = text.upper()
    elif text:
        key = _country_key(text)
        region = _COMMON_COUNTRY_NAMES.get(key)
        if region is None:
            global _country_table
            if _country_table is None:
                _country_table = _build_country_table()
            region = _country_table.get(key)
    if len(_country_cache) < _COUNTRY_CACHE_MAX:
        _country_cache[country] = region
    return region


_LOCALE_REGION = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z]{4})?[-_]([A-Za-z]{2})(?:$|[-_.@])")


def _locale_region(locale: Any) -> str | None:
    if not isinstance(locale, str):
        return None
    m = _LOCALE_REGION.match(locale.strip())
    if m is None:
        return None
    region = m.group(1).upper()
    return region if region in _REGIONS else None


# --------------------------------------------------------------------------- phone
_PHONE_JUNK = re.compile(r"[^\d+]")


def parse_phone(raw: str, region: str | None) -> str | None:
    """``raw`` as an E.164 number, or ``None`` when it is not a valid number.

    Numbers starting with ``+`` (or ``00``/another international prefix of ``region``) are
    read as international; others as national numbers of ``region`` (none: invalid).
    """
    text = raw.strip()
    if not text or len(text) > 64:
        return None
    try:
        number = phonenumbers.parse(text, region if region else None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


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


def _subscriptions(subs: dict, props: dict, extras: list, warnings: list[str]):
    email_status = sms_status = None
    for channel, value in subs.items():
        if value is None:
            continue
        if channel == "email":
            if type(value) is not dict:
                warnings.append("malformed: subscriptions.email")
                continue
            for key, sub in value.items():
                if sub is None:
                    continue
                if key == "marketing":
                    if type(sub) is dict:
                        _copy_fields(sub, _EMAIL_MARKETING, _EMAIL_MARKETING_SRC, "kla_email_marketing_", props, extras)
                        email_status = _email_status(sub, warnings)
                    else:
                        warnings.append("malformed: subscriptions.email.marketing")
                elif key == "open_tracking":
                    props["kla_email_open_tracking"] = sub
                else:
                    extras.append((f"kla_subscriptions_email_{key}", sub))
        elif channel == "sms":
            if type(value) is not dict:
                warnings.append("malformed: subscriptions.sms")
                continue
            for key, sub in value.items():
                if sub is None:
                    continue
                if key == "marketing":
                    if type(sub) is dict:
                        _copy_fields(sub, _SMS_MARKETING, _SMS_MARKETING_SRC, "kla_sms_marketing_", props, extras)
                        sms_status = _sms_status(sub, warnings)
                    else:
                        warnings.append("malformed: subscriptions.sms.marketing")
                elif key == "transactional":
                    if type(sub) is dict:
                        _copy_fields(
                            sub, _SMS_TRANSACTIONAL, _SMS_TRANSACTIONAL_SRC, "kla_sms_transactional_", props, extras
                        )
                    else:
                        warnings.append("malformed: subscriptions.sms.transactional")
                else:
                    extras.append((f"kla_subscriptions_sms_{key}", sub))
        else:
            pkey = _CHANNEL_KEY.get(channel)
            if pkey is None:
                extras.append((f"kla_subscriptions_{channel}", value))
            else:
                props[pkey] = value
    return email_status, sms_status


# --------------------------------------------------------------------------- contacts
def owned_fields_of(contact: NewContact | Contact) -> set[str]:
    """The standard fields a contact created by the plugin owns: every non-empty one."""
    return {f for f in STANDARD_FIELDS if getattr(contact, f)}


def new_contact(mapped: MappedProfile) -> NewContact:
    """A new SmartPush contact from a mapped profile (owned fields: :func:`owned_fields_of`)."""
    return NewContact(
        email=mapped.email,
        phone=mapped.phone,
        name=mapped.name,
        country=mapped.country,
        email_subscription=mapped.email_status,
        sms_subscription=mapped.sms_status,
        properties=dict(mapped.properties),
    )


def _same_value(fname: str, a: str, b: str) -> bool:
    if fname == "email":
        return normalize_email_key(a) == normalize_email_key(b)
    return a == b


def _evidence(props: dict[str, Any], keys: tuple[str, ...]) -> tuple:
    return tuple(props.get(k) for k in keys)


def _cannot_receive(channel: str, props: dict[str, Any]) -> bool:
    """Whether the mirrored evidence says this address is globally barred from marketing.

    The spec gives two signals (components.schemas.EmailMarketing): a non-empty
    ``suppression`` array, and ``can_receive_email_marketing`` (required; "True if [the]
    profile does not have any global suppressions"). ``suppression`` is optional and
    nullable, so ``can_receive_email_marketing: false`` alone must count too.
    """
    if channel == "email":
        return bool(props.get("kla_email_suppressions")) or props.get("kla_email_can_receive_marketing") is False
    return props.get("kla_sms_can_receive_marketing") is False


def _mirrored_status(channel: str, props: dict[str, Any]) -> SubscriptionStatus | None:
    """The status the Klaviyo consent evidence mirrored in ``props`` maps to."""
    table, status_of = (_EMAIL_MARKETING, _email_status) if channel == "email" else (_SMS_MARKETING, _sms_status)
    return status_of({src: props.get(dst) for src, dst in table}, [])


def _merge_channel(
    channel: str,
    existing_status: SubscriptionStatus | None,
    incoming: SubscriptionStatus | None,
    *,
    address_matches: bool,
    old_props: dict[str, Any],
    mapped_props: dict[str, Any],
    keys: tuple[str, ...],
    primary: bool,
    notes: list[str],
) -> SubscriptionStatus | None:
    if incoming is None:
        return existing_status
    if not address_matches:
        notes.append(f"{channel}_status_not_applied:address_differs")
        return existing_status
    mirrored = any(k in old_props for k in keys)
    if not primary and incoming == SUBSCRIBED and _cannot_receive(channel, old_props):
        # Another Klaviyo profile of this address is globally suppressed (bounce, spam
        # complaint) or cannot receive marketing: a second profile's SUBSCRIBED must not
        # make the address sendable.
        notes.append(f"{channel}_status_not_applied:suppressed_elsewhere")
        return existing_status
    if primary and mirrored and existing_status is not None:
        if _evidence(old_props, keys) == _evidence(mapped_props, keys):
            # Klaviyo's consent did not change since it was last mirrored: SmartPush's own
            # later changes (an unsubscribe in SmartPush) must not be reverted by stale data.
            # An unknown status is still filled: the evidence may have been mirrored while
            # the profile had no address on this channel (a phone number that came later).
            return existing_status
        if existing_status == _mirrored_status(channel, old_props) and incoming != existing_status:
            # The status SmartPush holds is the one Klaviyo gave it (nobody changed it in
            # SmartPush since), and Klaviyo's consent changed: a suppression (hard bounce,
            # spam complaint), an unsubscribe or a re-subscribe. Klaviyo is the source of
            # that status, so it follows Klaviyo, both ways.
            notes.append(f"{channel}_status:{incoming}")
            return incoming
    # Consent precedence (the product rule): only a Klaviyo SUBSCRIBED overwrites a status
    # SmartPush holds; UNSUBSCRIBED / NEVER_SUBSCRIBED only fill an unknown one.
    result = merge_status(existing_status, incoming)
    if result != existing_status:
        notes.append(f"{channel}_status:{result}")
    return result


def merge_into(
    existing: Contact, mapped: MappedProfile, *, owned_fields: set[str], primary: bool
) -> tuple[Contact, set[str], list[str]]:
    """Merge a mapped profile into an existing contact; returns (new contact, owned fields, notes).

    ``existing`` is not modified. Notes are PII-free strings (``filled:phone``,
    ``kept_existing:name`` ...).
    """
    owned = set(owned_fields)
    notes: list[str] = []
    values: dict[str, Any] = {}
    for fname in STANDARD_FIELDS:
        new = getattr(mapped, fname)
        cur = getattr(existing, fname)
        if not new:
            continue  # an empty Klaviyo value never clears a contact's field
        if not cur:
            values[fname] = new
            owned.add(fname)
            notes.append(f"filled:{fname}")
        elif _same_value(fname, cur, new):
            if cur != new and fname in owned:
                values[fname] = new
                notes.append(f"updated:{fname}")
        elif fname in owned:
            values[fname] = new
            notes.append(f"updated:{fname}")
        else:
            notes.append(f"kept_existing:{fname}")
    final_email = values.get("email", existing.email)
    final_phone = values.get("phone", existing.phone)
    old_props = existing.properties or {}
    email_status = _merge_channel(
        "email",
        existing.email_subscription,
        mapped.email_status,
        address_matches=bool(final_email) and mapped.email_key == normalize_email_key(final_email),
        old_props=old_props,
        mapped_props=mapped.properties,
        keys=EMAIL_EVIDENCE_KEYS,
        primary=primary,
        notes=notes,
    )
    sms_status = _merge_channel(
        "sms",
        existing.sms_subscription,
        mapped.sms_status,
        address_matches=bool(final_phone) and mapped.phone == final_phone,
        old_props=old_props,
        mapped_props=mapped.properties,
        keys=SMS_EVIDENCE_KEYS,
        primary=primary,
        notes=notes,
    )
    props = dict(old_props)
    if primary:
        props.update(mapped.properties)
    else:
        for key, value in mapped.properties.items():
            if key not in props:
                props[key] = value
    merged = replace(
        existing,
        **values,
        email_subscription=email_status,
        sms_subscription=sms_status,
        properties=props,
    )
    return merged, owned, notes


# --------------------------------------------------------------------------- tags
_WHITESPACE = re.compile(r"\s+")


def normalize_group_name(name: Any) -> str:
    """Trimmed, NFC, ``str.lower()``, each run of whitespace one ``_``; ``""`` for no name."""
    if not isinstance(name, str):
        return ""
    return _WHITESPACE.sub("_", unicodedata.normalize("NFC", name).strip().lower())


def base_tag(kind: str, name: Any, group_id: str) -> str:
    """``kla_list_<name>`` / ``kla_segment_<name>``; a group without a name uses its id."""
    n = normalize_group_name(name) or normalize_group_name(group_id)
    return f"{PREFIX}{kind}_{n}"


@dataclass(frozen=True, slots=True)
class GroupInfo:
    group_id: str
    kind: str
    name: str | None
    created: datetime | None = None


@dataclass(frozen=True, slots=True)
class Collision:
    """Groups of one kind whose names normalize to the same tag (group names are not PII)."""

    kind: str
    base_tag: str
    winner: str
    """The group that keeps :attr:`base_tag` (created first; ties: smaller id)."""
    tags: tuple[tuple[str, str], ...]
    """``(group_id, tag)`` of every group involved, winner first."""

    def __str__(self) -> str:
        others = ", ".join(f"{gid} -> {tag}" for gid, tag in self.tags[1:])
        return f"{self.kind} tag {self.base_tag} kept by {self.winner}; {others}"


_FAR_FUTURE = datetime.max.replace(tzinfo=timezone.utc)


def _created_key(created: datetime | None) -> datetime:
    if not isinstance(created, datetime):
        return _FAR_FUTURE
    return created if created.tzinfo else created.replace(tzinfo=timezone.utc)


def assign_tags(groups: Iterable[GroupInfo]) -> tuple[dict[str, str], list[Collision]]:
    """A unique tag per group id, deterministic whatever the input order.

    Groups whose base tags collide: the one created first (unknown creation date counts as
    last; ties: smaller id) keeps the base tag, each other gets ``<base>_<id lowercased>``
    (and ``_2``, ``_3`` ... in the pathological case that this is taken as well).
    """
    unique: dict[str, GroupInfo] = {}
    for g in groups:
        unique.setdefault(g.group_id, g)  # the same id twice: the first one describes it
    ordered = sorted(unique.values(), key=lambda g: (_created_key(g.created), g.group_id))
    by_base: dict[str, list[GroupInfo]] = {}
    for g in ordered:
        by_base.setdefault(base_tag(g.kind, g.name, g.group_id), []).append(g)
    tags: dict[str, str] = {}
    taken: set[str] = set(by_base)
    for base, members in by_base.items():
        tags[members[0].group_id] = base
    collisions: list[Collision] = []
    for base in sorted(by_base):
        members = by_base[base]
        if len(members) < 2:
            continue
        for g in members[1:]:
            tag = f"{base}_{g.group_id.lower()}"
            if tag in taken:
                n = 2
                while f"{tag}_{n}" in taken:
                    n += 1
                tag = f"{tag}_{n}"
            taken.add(tag)
            tags[g.group_id] = tag
        collisions.append(
            Collision(
                kind=members[0].kind,
                base_tag=base,
                winner=members[0].group_id,
                tags=tuple((g.group_id, tags[g.group_id]) for g in members),
            )
        )
    return tags, collisions
