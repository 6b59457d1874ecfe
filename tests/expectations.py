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


# --------------------------------------------------------------------------------------------
# Additions for tests/test_fidelity.py (identity, skips, PII needles), same independent spirit.

# The countries the stand-in's generator uses, with their phonenumbers regions.
COUNTRY_REGIONS = {
    "united states": "US",
    "united kingdom": "GB",
    "france": "FR",
    "brazil": "BR",
    "germany": "DE",
    "canada": "CA",
    "japan": "JP",
}


def expected_phone(attrs) -> str | None:
    """The E.164 number a profile's ``phone_number`` should become, or None (unparseable/absent).

    ``+…`` numbers are international; national ones use the region of ``location.country``,
    else the region of ``locale`` (``de-DE``)."""
    raw = attrs.get("phone_number")
    if not isinstance(raw, str) or not raw.strip():
        return None
    text = raw.strip()
    region = None
    if not text.startswith("+"):
        country = (attrs.get("location") or {}).get("country")
        if isinstance(country, str):
            region = COUNTRY_REGIONS.get(country.strip().lower())
            if region is None and len(country.strip()) == 2:
                region = country.strip().upper()
        if region is None and isinstance(attrs.get("locale"), str) and "-" in attrs["locale"]:
            region = attrs["locale"].rsplit("-", 1)[1].upper()
        if region is None:
            return None
    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def _compact_json_bytes(value) -> int:
    import json

    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"))


def _input_problem(raw, parsed, field: str, invalid: str) -> str | None:
    """Why a given email/phone value was not usable: not a string, or a non-blank invalid one."""
    if raw is None or parsed is not None:
        return None
    if not isinstance(raw, str):
        return f"malformed: {field}"
    return invalid if raw.strip() else None


def expected_skip_reason(attrs) -> str | None:
    """The documented skip reason of a profile (docs/mapping.md, "Skips"), None when imported."""
    if attrs is None:
        return "no_email_or_phone"
    email = valid_email(attrs.get("email"))
    email_problem = _input_problem(attrs.get("email"), email, "email", "invalid_email")
    phone = expected_phone(attrs)
    phone_problem = _input_problem(attrs.get("phone_number"), phone, "phone_number", "invalid_phone")
    if email is None and phone is None:
        if email_problem == "invalid_email":
            return "invalid_email_no_phone"
        if email_problem is not None:
            return email_problem
        if phone_problem == "invalid_phone":
            return "invalid_phone_no_email"
        if phone_problem is not None:
            return phone_problem
        return "no_email_or_phone"
    custom = attrs.get("properties")
    if isinstance(custom, dict):
        if any(_compact_json_bytes(v) > 64 * 1024 for v in custom.values()):
            return "property_too_large"
        if _compact_json_bytes(custom) > 512 * 1024:
            return "property_too_large"
    return None


def identity_clusters(profiles) -> list[list[str]]:
    """Klaviyo ids that must end up on one contact: profiles sharing a normalized email or
    an E.164 phone (union-find), among the profiles that are imported. Sorted id lists."""
    parent: dict[str, str] = {}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    first_by_key: dict[tuple[str, str], str] = {}
    for p in profiles:
        attrs = p["attributes"]
        if expected_skip_reason(attrs) is not None:
            continue
        kid = p["id"]
        parent.setdefault(kid, kid)
        email = valid_email(attrs.get("email"))
        keys = []
        if email:
            keys.append(("email", email.lower()))
        phone = expected_phone(attrs)
        if phone:
            keys.append(("phone", phone))
        for key in keys:
            other = first_by_key.setdefault(key, kid)
            if other != kid:
                parent[find(kid)] = find(other)
    clusters: dict[str, list[str]] = defaultdict(list)
    for kid in parent:
        clusters[find(kid)].append(kid)
    return sorted(sorted(c) for c in clusters.values())


def pii_needles(profiles, min_len: int = 8) -> set[str]:
    """Every email and phone number of the profiles, raw and normalized (lowercase, E.164,
    digits only), as strings long enough not to appear by chance in random bytes."""
    out: set[str] = set()
    for p in profiles:
        attrs = p["attributes"]
        raw = attrs.get("email")
        if isinstance(raw, str) and raw.strip():
            out.update({raw.strip(), raw.strip().lower()})
        raw = attrs.get("phone_number")
        if isinstance(raw, str) and raw.strip():
            out.add(raw.strip())
            digits = phone_digits(raw)
            if digits and len(digits) >= 9:
                out.add(digits)
        e164 = expected_phone(attrs)
        if e164:
            out.update({e164, e164[1:]})
    return {n for n in out if len(n) >= min_len}


def assert_exact_import(account, contacts) -> None:
    """``contacts`` (an export) hold exactly the stand-in's data: every importable profile
    once, no two contacts with one email, every contact's tags exactly its groups'."""
    kids = [k for c in contacts for k in c["klaviyo_ids"]]
    assert len(kids) == len(set(kids)), "a Klaviyo profile mapped twice"
    importable = {p["id"] for p in account.iter_profiles() if valid_email(p["attributes"].get("email"))}
    assert importable <= set(kids), f"{len(importable - set(kids))} importable profiles lost"
    emails = [c["email"].strip().lower() for c in contacts if c["email"]]
    assert len(emails) == len(set(emails)), "two contacts with the same email"
    expected = expected_profile_tags(account)
    for c in contacts:
        want = set()
        for kid in c["klaviyo_ids"]:
            want |= expected.get(kid, set())
        assert set(c["tags"]) == want
