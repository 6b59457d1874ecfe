"""What the import should produce, derived independently from the stand-in's own data.

Deliberately re-derived here with plain code instead of calling the plugin's mapping,
so a mapping bug cannot hide behind itself.
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from datetime import datetime, timezone

import phonenumbers
from email_validator import EmailNotValidError, validate_email


def tag_for(kind: str, name, gid: str) -> str:
    norm = ""
    if isinstance(name, str):
        norm = re.sub(r"\s+", "_", unicodedata.normalize("NFC", name).strip().lower())
    if not norm:
        norm = re.sub(r"\s+", "_", gid.strip().lower())
    return f"kla_{kind}_{norm}"


def expected_group_tags(account) -> dict[str, str]:
    """group id -> tag, with the documented collision rule (first created keeps the base)."""
    groups = [("list", g) for g in account.lists()] + [("segment", g) for g in account.segments()]
    by_base: dict[str, list] = defaultdict(list)
    for kind, g in groups:
        attrs = g.get("attributes") or {}
        by_base[tag_for(kind, attrs.get("name"), g["id"])].append((attrs.get("created") or "9999", g["id"]))
    tags = {}
    for base, members in by_base.items():
        members.sort(key=lambda m: (datetime.fromisoformat(m[0]) if m[0] != "9999" else datetime.max.replace(tzinfo=timezone.utc), m[1]))
        tags[members[0][1]] = base
        for _created, gid in members[1:]:
            tags[gid] = f"{base}_{gid.lower()}"
    return tags


def expected_profile_tags(account) -> dict[str, set[str]]:
    """Klaviyo profile id -> the tags its memberships give."""
    tags = expected_group_tags(account)
    out: dict[str, set[str]] = defaultdict(set)
    for gid, tag in tags.items():
        for pid, _joined in account.iter_members(gid):
            out[pid].add(tag)
    return out


def valid_email(raw) -> str | None:
    if not isinstance(raw, str) or not raw.strip():
        return None
    try:
        validate_email(raw.strip(), check_deliverability=False)
    except EmailNotValidError:
        return None
    return raw.strip()


def phone_digits(raw) -> str | None:
    if not isinstance(raw, str):
        return None
    digits = re.sub(r"\D", "", raw)
    return digits or None


def is_e164_of(exported: str, raw: str) -> bool:
    """The exported number is valid E.164 and carries the raw number's national digits."""
    try:
        parsed = phonenumbers.parse(exported, None)
    except phonenumbers.NumberParseException:
        return False
    if phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164) != exported:
        return False
    national = str(parsed.national_number)
    return (phone_digits(raw) or "").endswith(national)


def email_status(attrs) -> str | None:
    marketing = (((attrs.get("subscriptions") or {}).get("email") or {}).get("marketing")) or None
    if not marketing:
        return None
    consent = marketing.get("consent")
    if consent == "SUBSCRIBED":
        if marketing.get("suppression") or marketing.get("can_receive_email_marketing") is False:
            return "unsubscribed"
        return "subscribed"
    return {"UNSUBSCRIBED": "unsubscribed", "NEVER_SUBSCRIBED": "never_subscribed"}.get(consent)


def sms_status(attrs) -> str | None:
    marketing = (((attrs.get("subscriptions") or {}).get("sms") or {}).get("marketing")) or None
    if not marketing:
        return None
    consent = marketing.get("consent")
    if consent == "SUBSCRIBED":
        return "unsubscribed" if marketing.get("can_receive_sms_marketing") is False else "subscribed"
    return {"UNSUBSCRIBED": "unsubscribed", "NEVER_SUBSCRIBED": "never_subscribed"}.get(consent)


def expected_name(attrs) -> str | None:
    parts = [p.strip() for p in (attrs.get("first_name"), attrs.get("last_name")) if isinstance(p, str) and p.strip()]
    return " ".join(parts) or None
