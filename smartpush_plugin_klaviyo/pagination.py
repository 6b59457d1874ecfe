"""Cursor pagination over ``links.next`` and Klaviyo filter builders.

Klaviyo paginates with opaque cursors: each page carries ``links.next`` (absent on the
last page). :func:`paginate`, the one paginator of every read, follows them holding one
page at a time (from a saved ``next_url`` too, for callers that checkpoint it).

Filters use Klaviyo's grammar, e.g.
``and(greater-than(updated,2026-01-02T03:04:05+00:00),less-than(updated,…))`` (the
engine only sends whole seconds, the one datetime form of the spec's own filter example).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any

from smartpush_plugin_klaviyo import endpoints
from smartpush_plugin_klaviyo.errors import BadRequestError, PaginationError

__all__ = [
    "Page",
    "paginate",
    "format_value",
    "format_datetime",
    "greater_than",
    "less_than",
    "greater_or_equal",
    "less_or_equal",
    "equals",
    "any_of",
    "and_",
    "PAGE_SIZE_MAX",
    "FILTERS_USED",
    "SORTS_USED",
    "ADDITIONAL_FIELDS_USED",
]

# Views of the one table of the endpoints the plugin reads (smartpush_plugin_klaviyo.endpoints;
# tests/test_spec_agreement.py checks it against the spec): page[size] maxima, the filter
# fields/operators, sorts and additional fields the plugin uses, per endpoint template.
PAGE_SIZE_MAX: dict[str, int] = endpoints.page_size_max()
FILTERS_USED: dict[str, dict[str, frozenset[str]]] = endpoints.filters_used()
SORTS_USED: dict[str, tuple[str, ...]] = endpoints.sorts_used()
ADDITIONAL_FIELDS_USED: dict[str, tuple[str, str]] = endpoints.additional_fields_used()


# ------------------------------------------------------------------ filters
def format_datetime(value: datetime) -> str:
    """ISO 8601 with an explicit offset (naive values are UTC), in UTC; whole seconds
    exactly as the spec's filter example (``2022-11-08T00:00:00+00:00``), a fraction
    only when the value has one: ``2026-01-02T03:04:05.123456+00:00``."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    else:
        value = value.astimezone(timezone.utc)
    return value.isoformat(timespec="microseconds" if value.microsecond else "seconds")


def format_value(value: Any) -> str:
    """A filter operand: datetimes as ISO 8601, strings quoted, lists bracketed."""
    if isinstance(value, datetime):
        return format_datetime(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if value is None:
        return "null"
    text = str(value)
    if "'" in text and '"' not in text:
        return f'"{text}"'
    return "'" + text.replace("'", "\\'") + "'"


def _cond(op: str, field_name: str, value: Any) -> str:
    return f"{op}({field_name},{format_value(value)})"


def greater_than(field_name: str, value: Any) -> str:
    return _cond("greater-than", field_name, value)


def less_than(field_name: str, value: Any) -> str:
    return _cond("less-than", field_name, value)


def greater_or_equal(field_name: str, value: Any) -> str:
    return _cond("greater-or-equal", field_name, value)


def less_or_equal(field_name: str, value: Any) -> str:
    return _cond("less-or-equal", field_name, value)


def equals(field_name: str, value: Any) -> str:
    return _cond("equals", field_name, value)


def any_of(field_name: str, values: Any) -> str:
    return f"any({field_name},{format_value(list(values))})"


def and_(*conds: str | None) -> str | None:
    """Join conditions with ``and(...)``; ``None``/empty ones are dropped. One condition
    is returned as is, none gives ``None``."""
    kept = [c for c in conds if c]
    if not kept:
        return None
    if len(kept) == 1:
        return kept[0]
    return "and(" + ",".join(kept) + ")"


# --------------------------------------------------------------- pagination
@dataclass
class Page:
    """One page of a JSON:API collection."""

    data: list[dict]
    next_url: str | None = None
    self_url: str | None = None
    included: list[dict] | None = field(default=None)

    @classmethod
    def from_document(cls, body: Mapping[str, Any]) -> Page:
        data = body.get("data")
        if data is None:
            data = []
        elif isinstance(data, dict):
            data = [data]
        links = body.get("links") or {}
        return cls(
            data=data,
            next_url=links.get("next") or None,
            self_url=links.get("self") or None,
            included=body.get("included"),
        )


Restart = Callable[[], "tuple[str, Mapping[str, Any] | None]"]
"""Gives the first request (path, params) a chain restarts from after Klaviyo refused its
cursor: from the last value delivered when the read is sorted, else from scratch."""

MAX_RESTARTS = 3
"""Refused cursors in a row (no page delivered in between) before a chain gives up."""
MAX_RESTARTS_TOTAL = 12
"""Refused cursors in one read before it gives up: a read restarted from scratch whose
cursors expire faster than it reads would otherwise never end (it fails, and resumes)."""


def paginate(
    client,
    path: str | None = None,
    params: Mapping[str, Any] | None = None,
    *,
    start_url: str | None = None,
    restart: Restart | None = None,
    decode=None,
    max_pages: int | None = None,
    on_restart: Callable[[], None] | None = None,
) -> Iterator[Any]:
    """Every page of one read: the one paginator every read of the plugin goes through.

    Starts from ``path`` + ``params`` (or from ``start_url``, a saved ``links.next``) and
    follows ``links.next`` until it is absent, holding one page at a time. Yields
    :class:`Page` objects, or what ``decode`` makes of each body (it must have a
    ``next_url``; see :class:`smartpush_plugin_klaviyo.profile_pages.ProfilePage`).

    * A cursor Klaviyo refuses (400 on ``page[cursor]``: cursors expire) restarts the
      read from ``restart()`` (default: the first request again, so the caller must
      tolerate pages it has seen: every reader dedupes by id); ``on_restart`` is told.
      :data:`MAX_RESTARTS` refusals in a row without a page in between, or
      :data:`MAX_RESTARTS_TOTAL` in all, end the read with :class:`PaginationError`.
    * A chain that repeats a ``links.next`` (a loop), or goes past ``max_pages``, ends
      with :class:`PaginationError` instead of running forever.
    """
    if restart is None:
        if path is None:
            raise ValueError("a read from a saved cursor needs restart=")
        first = (path, dict(params) if params else None)
        restart = lambda: first  # noqa: E731
    url = start_url
    request = None if url else (path, dict(params) if params else None)
    seen: set[str] = set()
    refusals = pages = restarts = 0
    while True:
        try:
            if url:
                body = client.get_url(url, decode=decode) if decode else client.get_url(url)
            else:
                p, q = request
                body = client.get(p, q, decode=decode) if decode else client.get(p, q)
        except BadRequestError as exc:
            if not (url and exc.invalid_cursor):
                raise
            refusals += 1
            restarts += 1
            if refusals > MAX_RESTARTS or restarts > MAX_RESTARTS_TOTAL:
                raise PaginationError(
                    f"Klaviyo refused this read's cursor {restarts} times", endpoint=exc.endpoint, status=400
                ) from None
            if on_restart is not None:
                on_restart()
            url, request, seen = None, restart(), set()
            continue
        page = body if decode else Page.from_document(body)
        body = None
        refusals = 0
        pages += 1
        next_url = page.next_url
        if next_url:
            if next_url in seen or next_url == url:
                raise PaginationError("Klaviyo's links.next repeated a cursor (a pagination loop)")
            seen.add(next_url)
            if max_pages is not None and pages >= max_pages:
                raise PaginationError(f"Klaviyo's links.next did not end after {pages} pages")
        yield page
        if not next_url:
            return
        page = None  # drop the previous page before fetching the next
        url = next_url
