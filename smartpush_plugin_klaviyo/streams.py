"""Stream definitions: what each resumable cursor asks Klaviyo for.

A stream is a row of :class:`state.KlaviyoStream`; this module turns one into the
request to start it with, and into the request that restarts it after Klaviyo
refused its cursor (from the last value it delivered, not from scratch).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from smartpush_plugin_klaviyo.pagination import and_, greater_or_equal, greater_than, less_than
from smartpush_plugin_klaviyo.timeutil import ceil_second, floor_second, format_iso, parse_iso

PROFILES_PATH = "/api/profiles"
MEMBER_PATHS = {"list": "/api/lists/{id}/relationships/profiles", "segment": "/api/segments/{id}/relationships/profiles"}
PAGE_SIZE = 100
RESTART_OVERLAP = timedelta(seconds=1)
WINDOW_OVERLAP = timedelta(seconds=1)
"""A profile window's lower bound is moved back this much. ``updated`` only has the strict
``greater-than``/``less-than`` (the spec allows nothing else), so windows that merely met
at a cut would both exclude a profile updated exactly at it; the writer dedupes by id."""

# Filter datetimes are whole seconds (lower bounds rounded down, upper bounds up, so a
# range only widens): the one datetime form of the spec's own filter example,
# ``less-or-equal(created,2022-11-08T00:00:00+00:00)``, which any server accepts.


def profile_request(lo: str | None, hi: str | None, *, after: str | None = None) -> tuple[str, dict]:
    """The first request of a profile window ``(lo, hi)`` on ``updated``.

    ``after`` restarts the window from a value already delivered (minus a second of
    overlap, so equal timestamps are not lost; the writer dedupes by id).
    """
    start = parse_iso(lo)
    restart = parse_iso(after)
    if restart is not None:
        start = restart - RESTART_OVERLAP
    elif start is not None:
        start = start - WINDOW_OVERLAP
    end = parse_iso(hi)
    params: dict = {
        "additional-fields[profile]": "subscriptions",
        "page[size]": PAGE_SIZE,
        "sort": "updated",
    }
    flt = and_(
        greater_than("updated", floor_second(start)) if start else None,
        less_than("updated", ceil_second(end)) if end else None,
    )
    if flt:
        params["filter"] = flt
    return PROFILES_PATH, params


SUPPRESSION_FIELDS = {
    "email": "subscriptions.email.marketing.suppression.timestamp",
    "list": "subscriptions.email.marketing.list_suppressions.timestamp",
}
"""``suppressed:<which>`` streams: profiles with a global (``email``) or list suppression
newer than the last run. Klaviyo does not promise that a suppression moves ``updated``;
these filters (and sorts) are the spec's own for ``GET /api/profiles``."""


def suppression_request(which: str, since: str | None) -> tuple[str, dict]:
    """Profiles suppressed (globally, or from a list) after ``since``, oldest first."""
    field_name = SUPPRESSION_FIELDS[which]
    params: dict = {"additional-fields[profile]": "subscriptions", "page[size]": PAGE_SIZE, "sort": field_name}
    start = parse_iso(since)
    if start is not None:
        params["filter"] = greater_than(field_name, floor_second(start - WINDOW_OVERLAP))
    return PROFILES_PATH, params


def sweep_request(position: str | None, *, after: str | None = None) -> tuple[str, dict]:
    """The rolling sweep's read: every profile created at or after ``position`` (``after``:
    restart from a value already delivered), oldest first. ``created`` only has the strict
    filters, so the bound is moved back a second (the writer dedupes by id)."""
    start = parse_iso(after) or parse_iso(position)
    params: dict = {"additional-fields[profile]": "subscriptions", "page[size]": PAGE_SIZE, "sort": "created"}
    if start is not None:
        params["filter"] = greater_than("created", floor_second(start) - WINDOW_OVERLAP)
    return PROFILES_PATH, params


def member_request(kind: str, group_id: str, lo: str | None, hi: str | None) -> tuple[str, dict]:
    """The first request of a membership slice on ``joined_group_at`` in ``[lo, hi)``
    (both rounded down to a whole second: adjacent slices still meet exactly)."""
    start, end = parse_iso(lo), parse_iso(hi)
    params: dict = {"page[size]": PAGE_SIZE}
    flt = and_(
        greater_or_equal("joined_group_at", floor_second(start)) if start else None,
        less_than("joined_group_at", floor_second(end)) if end else None,
    )
    if flt:
        params["filter"] = flt
    return MEMBER_PATHS[kind].replace("{id}", group_id), params


def time_slices(start: datetime | None, end: datetime | None, count: int) -> list[tuple[str | None, str | None]]:
    """Up to ``count`` contiguous slices covering everything: the first has no lower
    bound, the last no upper bound, so records outside ``[start, end]`` are never lost.
    Cuts are whole seconds (filters send whole seconds); a range too short for ``count``
    distinct cuts gets fewer slices."""
    if count <= 1 or start is None or end is None or end <= start:
        return [(None, None)]
    step = (end - start) / count
    cuts: list[datetime] = []
    for i in range(1, count):
        cut = floor_second(start + step * i)
        if (not cuts or cut > cuts[-1]) and cut > start:
            cuts.append(cut)
    bounds: list[str | None] = [None, *(format_iso(c) for c in cuts), None]
    return [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]
