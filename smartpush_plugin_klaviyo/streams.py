"""Stream definitions: what each resumable cursor asks Klaviyo for.

A stream is a row of :class:`state.KlaviyoStream`; this module turns one into the
request to start it with, and into the request that restarts it after Klaviyo
refused its cursor (from the last value it delivered, not from scratch).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from smartpush_plugin_klaviyo.pagination import and_, greater_or_equal, greater_than, less_than
from smartpush_plugin_klaviyo.timeutil import format_iso, parse_iso

PROFILES_PATH = "/api/profiles"
MEMBER_PATHS = {"list": "/api/lists/{id}/relationships/profiles", "segment": "/api/segments/{id}/relationships/profiles"}
PAGE_SIZE = 100
RESTART_OVERLAP = timedelta(seconds=1)


def profile_request(lo: str | None, hi: str | None, *, after: str | None = None) -> tuple[str, dict]:
    """The first request of a profile window ``(lo, hi)`` on ``updated``.

    ``after`` restarts the window from a value already delivered (minus a second of
    overlap, so equal timestamps are not lost; the writer dedupes by id).
    """
    start = parse_iso(lo)
    restart = parse_iso(after)
    if restart is not None:
        start = restart - RESTART_OVERLAP
    end = parse_iso(hi)
    params: dict = {
        "additional-fields[profile]": "subscriptions",
        "page[size]": PAGE_SIZE,
        "sort": "updated",
    }
    flt = and_(
        greater_than("updated", start) if start else None,
        less_than("updated", end) if end else None,
    )
    if flt:
        params["filter"] = flt
    return PROFILES_PATH, params


def member_request(kind: str, group_id: str, lo: str | None, hi: str | None) -> tuple[str, dict]:
    """The first request of a membership slice on ``joined_group_at`` in ``[lo, hi)``."""
    start, end = parse_iso(lo), parse_iso(hi)
    params: dict = {"page[size]": PAGE_SIZE}
    flt = and_(
        greater_or_equal("joined_group_at", start) if start else None,
        less_than("joined_group_at", end) if end else None,
    )
    if flt:
        params["filter"] = flt
    return MEMBER_PATHS[kind].replace("{id}", group_id), params


def time_slices(start: datetime | None, end: datetime | None, count: int) -> list[tuple[str | None, str | None]]:
    """``count`` contiguous slices covering everything: the first has no lower bound,
    the last no upper bound, so records outside ``[start, end]`` are never lost."""
    if count <= 1 or start is None or end is None or end <= start:
        return [(None, None)]
    step = (end - start) / count
    cuts = [format_iso(start + step * i) for i in range(1, count)]
    bounds: list[str | None] = [None, *cuts, None]
    return [(bounds[i], bounds[i + 1]) for i in range(count)]
