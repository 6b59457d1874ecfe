"""Timestamps: always timezone-aware UTC (the database columns round-trip them)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

# RFC 3339 ``date-time`` (the spec's ``format: date-time``) in the forms
# ``datetime.fromisoformat`` refuses on some Python versions: ``Z``/``z``, a lower-case
# ``t``, a fraction of any length, an offset without a colon.
_RFC3339_RE = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}(?::\d{2})?)(?:[.,](\d+))?\s*([Zz]|[+-]\d{2}(?::?\d{2})?)?"
)


def utcnow() -> datetime:
    """Now, aware, in UTC."""
    return datetime.now(timezone.utc)


def to_utc(value: datetime) -> datetime:
    """Aware UTC; a naive value is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def parse_timestamp(value: object) -> datetime | None:
    """An ISO 8601 / RFC 3339 string as an aware datetime, its offset kept (naive means
    UTC); ``None`` for anything else. Accepts every RFC 3339 ``date-time`` whatever the
    Python version: ``Z`` or ``z``, ``t``, any number of fractional digits (kept to the
    microsecond), ``+0000``."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        m = _RFC3339_RE.fullmatch(text)
        if m is None:
            return None
        date, clock, frac, offset = m.groups()
        if frac:
            clock += "." + frac[:6].ljust(6, "0")
        if offset is None:
            offset = ""
        elif offset in ("Z", "z"):
            offset = "+00:00"
        elif len(offset) == 3:
            offset += ":00"
        elif ":" not in offset:
            offset = offset[:3] + ":" + offset[3:]
        try:
            dt = datetime.fromisoformat(f"{date}T{clock}{offset}")
        except ValueError:
            return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt


def parse_iso(value: str | None) -> datetime | None:
    """Parse a Klaviyo timestamp to aware UTC; ``None`` for missing or malformed values."""
    dt = parse_timestamp(value)
    return None if dt is None else dt.astimezone(timezone.utc)


def format_iso(value: datetime) -> str:
    """Format for storage: ISO 8601, microseconds, explicit ``+00:00``."""
    # isoformat is ~5x cheaper than strftime (the writer formats one per profile); an
    # aware UTC value ends in "+00:00" by itself
    return to_utc(value).isoformat(timespec="microseconds")


def floor_second(value: datetime) -> datetime:
    """``value`` in UTC without its fraction of a second."""
    return to_utc(value).replace(microsecond=0)


def ceil_second(value: datetime) -> datetime:
    """``value`` in UTC rounded up to a whole second."""
    value = to_utc(value)
    if value.microsecond:
        value = value.replace(microsecond=0) + timedelta(seconds=1)
    return value

