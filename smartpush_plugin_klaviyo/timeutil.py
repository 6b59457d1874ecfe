"""Timestamps: always timezone-aware UTC (the database columns round-trip them)."""

from __future__ import annotations

from datetime import datetime, timezone


def utcnow() -> datetime:
    """Now, aware, in UTC."""
    return datetime.now(timezone.utc)


def to_utc(value: datetime) -> datetime:
    """Aware UTC; a naive value is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def parse_iso(value: str | None) -> datetime | None:
    """Parse a Klaviyo timestamp to aware UTC; ``None`` for missing or malformed values."""
    if not value or not isinstance(value, str):
        return None
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        return to_utc(datetime.fromisoformat(text))
    except ValueError:
        return None


def format_iso(value: datetime) -> str:
    """Format for a Klaviyo filter: ISO 8601, microseconds, explicit ``+00:00``."""
    return to_utc(value).strftime("%Y-%m-%dT%H:%M:%S.%f") + "+00:00"
