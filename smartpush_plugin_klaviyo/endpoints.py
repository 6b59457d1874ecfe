"""The one table of the Klaviyo endpoints the plugin reads (spec revision 2026-07-15).

Everything the plugin embeds about an endpoint lives here: path template, scopes, page-size
maximum, rate limits (``x-klaviyo-ratelimit``) and the stricter limits an operation's
description states for an additional field (which STACK on the endpoint's: such a request
counts against both), the filters (field -> operators), sorts, additional fields and sparse
``fields[profile]`` sets the plugin uses. ``client.ENDPOINT_SCOPES`` and
``ratelimit.ENDPOINT_LIMITS`` are views derived from it (:func:`scopes`, :func:`limits`);
tests/test_spec_agreement.py checks the table against stable.json, the stacked limits
parsed from the operations' descriptions included.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "Endpoint",
    "ENDPOINTS",
    "STACKED_SEPARATOR",
    "scopes",
    "limits",
    "page_size_max",
    "filters_used",
    "sorts_used",
    "additional_fields_used",
]

STACKED_SEPARATOR = "+"
"""Budget key of a stacked limit: template + "+" + additional field (``/api/lists/{id}+profile_count``)."""

_RANGE = frozenset({"greater-than", "less-than", "greater-or-equal", "less-or-equal"})
_SUPPRESSION = "subscriptions.email.marketing.suppression.timestamp"
_LIST_SUPPRESSIONS = "subscriptions.email.marketing.list_suppressions.timestamp"


@dataclass(frozen=True)
class Endpoint:
    """One GET endpoint the plugin reads and what it uses of it."""

    template: str
    scopes: tuple[str, ...]
    burst: int  # per second
    steady: int  # per minute
    page_size_max: int | None = None
    # additional field -> (burst, steady) of its own limit, stacked on the endpoint's
    stacked: dict[str, tuple[int, int]] = field(default_factory=dict)
    # (parameter, value) pairs of additional fields the plugin asks for
    additional: tuple[tuple[str, str], ...] = ()
    filters: dict[str, frozenset[str]] = field(default_factory=dict)
    sorts: tuple[str, ...] = ()
    # named sparse fieldsets (``fields[<type>]``) the plugin may ask for
    sparse_fields: dict[str, tuple[str, ...]] = field(default_factory=dict)


_MEMBERS = dict(page_size_max=100, filters={"joined_group_at": _RANGE}, sorts=("joined_group_at",))

ENDPOINTS: dict[str, Endpoint] = {e.template: e for e in (
    Endpoint(
        "/api/profiles", ("profiles:read",), 75, 750, page_size_max=100,
        stacked={"predictive_analytics": (10, 150)},  # never requested (client.FORBIDDEN_FIELDS)
        additional=(("additional-fields[profile]", "subscriptions"),),
        filters={
            "updated": frozenset({"greater-than", "less-than"}),
            "created": frozenset({"greater-than", "less-than"}),
            "id": frozenset({"any", "equals"}),
            _SUPPRESSION: _RANGE,
            _LIST_SUPPRESSIONS: _RANGE,
        },
        sorts=("updated", "-updated", "created", "-created",
               _SUPPRESSION, "-" + _SUPPRESSION, _LIST_SUPPRESSIONS, "-" + _LIST_SUPPRESSIONS),
        sparse_fields={
            # the rolling sweep (deletions, merges): identity only, cheap in bytes
            "sweep": ("email", "phone_number", "external_id", "created"),
            # consent re-reads: both channels' marketing consent and the suppressions
            "consent": ("email", "phone_number", "subscriptions.email.marketing",
                        "subscriptions.sms.marketing"),
        },
    ),
    Endpoint("/api/lists", ("lists:read",), 75, 750, page_size_max=10),
    Endpoint("/api/segments", ("segments:read",), 75, 750, page_size_max=10),
    Endpoint("/api/lists/{id}", ("lists:read",), 75, 750, stacked={"profile_count": (1, 15)},
             additional=(("additional-fields[list]", "profile_count"),)),
    Endpoint("/api/segments/{id}", ("segments:read",), 75, 750, stacked={"profile_count": (1, 15)},
             additional=(("additional-fields[segment]", "profile_count"),)),
    # The description states a predictive_analytics limit although the operation takes no
    # additional-fields parameter: recorded as the spec says (the plugin never asks for it).
    Endpoint("/api/lists/{id}/relationships/profiles", ("lists:read", "profiles:read"), 75, 750,
             stacked={"predictive_analytics": (10, 150)}, **_MEMBERS),
    Endpoint("/api/segments/{id}/relationships/profiles", ("profiles:read", "segments:read"), 75, 750,
             **_MEMBERS),
)}


# ------------------------------------------------------------------ derived views
def scopes() -> dict[str, tuple[str, ...]]:
    """template -> ``x-klaviyo-scopes``."""
    return {t: e.scopes for t, e in ENDPOINTS.items()}


def limits() -> dict[str, tuple[int, int]]:
    """budget key -> (burst/s, steady/min): each template, and template + "+" + field for
    each stacked limit."""
    out: dict[str, tuple[int, int]] = {}
    for t, e in ENDPOINTS.items():
        out[t] = (e.burst, e.steady)
        for name, pair in e.stacked.items():
            out[t + STACKED_SEPARATOR + name] = pair
    return out


def page_size_max() -> dict[str, int]:
    return {t: e.page_size_max for t, e in ENDPOINTS.items() if e.page_size_max is not None}


def filters_used() -> dict[str, dict[str, frozenset[str]]]:
    return {t: dict(e.filters) for t, e in ENDPOINTS.items() if e.filters}


def sorts_used() -> dict[str, tuple[str, ...]]:
    return {t: e.sorts for t, e in ENDPOINTS.items() if e.sorts}


def additional_fields_used() -> dict[str, tuple[str, str]]:
    """template -> (parameter, value), the shape of ``pagination.ADDITIONAL_FIELDS_USED``."""
    return {t: e.additional[0] for t, e in ENDPOINTS.items() if e.additional}
