"""The constants the client embeds agree with the official OpenAPI spec (stable.json).

The plugin never reads the spec at runtime; this test proves the transcription:
paths, scopes, rate limits (incl. the ``profile_count`` additional field), page-size
maxima, filter fields/operators and sort values used, additional fields, revision.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from smartpush_plugin_klaviyo import client as client_mod
from smartpush_plugin_klaviyo import endpoints, pagination, ratelimit

REPO = Path(__file__).resolve().parents[1]
SPEC_PATH = Path(os.environ.get("KLAVIYO_OPENAPI_SPEC") or REPO.parent / "shared" / "klaviyo" / "openapi" / "stable.json")

pytestmark = pytest.mark.skipif(not SPEC_PATH.is_file(), reason=f"OpenAPI spec not found at {SPEC_PATH}")


@pytest.fixture(scope="module")
def spec() -> dict:
    with SPEC_PATH.open("rb") as fh:
        return json.load(fh)


def get_op(spec: dict, template: str) -> dict:
    assert template in spec["paths"], f"{template} is not in the spec"
    assert "get" in spec["paths"][template], f"{template} has no GET"
    return spec["paths"][template]["get"]


def param(op: dict, name: str) -> dict | None:
    for p in op.get("parameters", []):
        if p.get("name") == name:
            return p
    return None


def parse_rate(text: str) -> tuple[int, str]:
    m = re.fullmatch(r"(\d+)/([sm])", text)
    assert m, text
    return int(m.group(1)), m.group(2)


def allowed_filters(op: dict) -> dict[str, set[str]]:
    """``Allowed field(s)/operator(s)`` of the filter parameter description."""
    desc = param(op, "filter")["description"]
    _, _, tail = desc.partition("Allowed field(s)/operator(s):")
    out: dict[str, set[str]] = {}
    for m in re.finditer(r"`([^`]+)`: ((?:`[^`]+`(?:, )?)+)", tail):
        out[m.group(1)] = set(re.findall(r"`([^`]+)`", m.group(2)))
    return out


def test_revision_matches_spec(spec):
    assert spec["info"]["version"] == client_mod.REVISION
    for template in client_mod.ENDPOINT_SCOPES:
        rev = param(get_op(spec, template), "revision")
        assert rev["in"] == "header"
        assert rev["schema"]["default"] == client_mod.REVISION


def test_server_matches_default_base_url(spec):
    urls = [s["url"].rstrip("/") for s in spec.get("servers", [])]
    assert client_mod.DEFAULT_BASE_URL in urls


def test_every_embedded_endpoint_exists_with_the_same_templates(spec):
    base = {k for k in ratelimit.ENDPOINT_LIMITS if endpoints.STACKED_SEPARATOR not in k}
    assert base == set(client_mod.ENDPOINT_SCOPES)
    for template in (
        set(client_mod.ENDPOINT_SCOPES) | set(pagination.PAGE_SIZE_MAX) | set(pagination.FILTERS_USED)
        | set(pagination.SORTS_USED) | set(pagination.ADDITIONAL_FIELDS_USED)
    ):
        get_op(spec, template)


def test_scopes_match(spec):
    for template, scopes in client_mod.ENDPOINT_SCOPES.items():
        assert sorted(scopes) == sorted(get_op(spec, template)["x-klaviyo-scopes"]), template


def test_rate_limits_match(spec):
    for template, limit in ratelimit.ENDPOINT_LIMITS.items():
        if endpoints.STACKED_SEPARATOR in template:
            continue
        rl = get_op(spec, template)["x-klaviyo-ratelimit"]
        assert parse_rate(rl["burst"]) == (limit.burst, "s"), template
        assert parse_rate(rl["steady"]) == (limit.steady, "m"), template


def test_profile_count_rate_limits_match_description(spec):
    for template in ("/api/lists/{id}", "/api/segments/{id}"):
        op = get_op(spec, template)
        kind = "list" if "lists" in template else "segment"
        desc = op["description"]
        m = re.search(
            rf"additional-fields\[{kind}\]=profile_count` parameter in your API request:"
            r"<br>Burst: `(\d+)/s`<br>Steady: `(\d+)/m`",
            desc,
        )
        assert m, f"no profile_count rate limits in the description of {template}"
        limit = ratelimit.ENDPOINT_LIMITS[template + ratelimit.PROFILE_COUNT_SUFFIX]
        assert (limit.burst, limit.steady) == (int(m.group(1)), int(m.group(2)))


def stacked_limits_in_description(op: dict) -> dict[str, tuple[int, int]]:
    """``additional-fields[x]=<field>`` limits an operation's description states (they
    stack on the endpoint's own)."""
    return {m.group(1): (int(m.group(2)), int(m.group(3))) for m in re.finditer(
        r"additional-fields\[\w+\]=(\w+)` parameter in your API request:<br>Burst: `(\d+)/s`<br>Steady: `(\d+)/m`",
        op["description"])}


def test_the_endpoint_table_matches_the_spec(spec):
    """endpoints.ENDPOINTS, the one table: scopes, limits, the stacked limits parsed from
    each description (every one the spec states, none it does not), page size maxima,
    filters (operators per field), sorts, additional fields and sparse fieldsets."""
    for template, e in endpoints.ENDPOINTS.items():
        op = get_op(spec, template)
        assert sorted(e.scopes) == sorted(op["x-klaviyo-scopes"]), template
        rl = op["x-klaviyo-ratelimit"]
        assert (parse_rate(rl["burst"]), parse_rate(rl["steady"])) == ((e.burst, "s"), (e.steady, "m")), template
        assert e.stacked == stacked_limits_in_description(op), template
        size = param(op, "page[size]")
        assert (size["schema"]["maximum"] if size else None) == e.page_size_max, template
        allowed = allowed_filters(op) if e.filters else {}
        for name, ops in e.filters.items():
            assert name in allowed and set(ops) <= allowed[name], f"{template}: filter {name} {ops}"
        if e.sorts:
            enum = param(op, "sort")["schema"]["enum"]
            assert set(e.sorts) <= set(enum), template
        for name, value in e.additional:
            assert value in param(op, name)["schema"]["items"]["enum"], template
        for fields in e.sparse_fields.values():
            kind = "profile" if template == "/api/profiles" else template.split("/")[2].rstrip("s")
            enum = param(op, f"fields[{kind}]")["schema"]["items"]["enum"]
            assert set(fields) <= set(enum), f"{template}: {set(fields) - set(enum)}"


def test_embedded_tables_are_views_of_the_endpoint_table():
    assert client_mod.ENDPOINT_SCOPES == endpoints.scopes()
    assert {k: (v.burst, v.steady) for k, v in ratelimit.ENDPOINT_LIMITS.items()} == endpoints.limits()
    assert ratelimit.ENDPOINT_LIMITS["/api/lists/{id}" + ratelimit.PROFILE_COUNT_SUFFIX] == ratelimit.Limit(1, 15)
    # pagination.py keeps its own names (importers): views of the table
    assert pagination.PAGE_SIZE_MAX == endpoints.page_size_max()
    assert pagination.ADDITIONAL_FIELDS_USED == endpoints.additional_fields_used()
    table_filters, table_sorts = endpoints.filters_used(), endpoints.sorts_used()
    for template, fields in pagination.FILTERS_USED.items():
        for name, ops in fields.items():
            assert set(ops) <= set(table_filters[template][name]), (template, name)
    for template, sorts in pagination.SORTS_USED.items():
        assert set(sorts) <= set(table_sorts[template]), template


def test_page_size_maxima_match(spec):
    for template, maximum in pagination.PAGE_SIZE_MAX.items():
        schema = param(get_op(spec, template), "page[size]")["schema"]
        assert schema["maximum"] == maximum, template
        assert schema["minimum"] == 1


def test_filter_fields_and_operators_used_are_allowed(spec):
    for template, fields in pagination.FILTERS_USED.items():
        allowed = allowed_filters(get_op(spec, template))
        for field_name, ops in fields.items():
            assert field_name in allowed, f"{template}: filter field {field_name} not allowed"
            assert set(ops) <= allowed[field_name], f"{template}: {field_name} {set(ops) - allowed[field_name]}"


def test_sort_values_used_are_in_the_enum(spec):
    for template, sorts in pagination.SORTS_USED.items():
        enum = param(get_op(spec, template), "sort")["schema"]["enum"]
        for value in sorts:
            assert value in enum, f"{template}: sort {value}"


def test_additional_fields_used_exist_and_predictive_analytics_is_forbidden(spec):
    for template, (name, value) in pagination.ADDITIONAL_FIELDS_USED.items():
        p = param(get_op(spec, template), name)
        assert p is not None, f"{template}: no {name}"
        assert value in p["schema"]["items"]["enum"]
    # the field the client refuses is the one the spec offers on profiles
    enum = param(get_op(spec, "/api/profiles"), "additional-fields[profile]")["schema"]["items"]["enum"]
    assert set(client_mod.FORBIDDEN_FIELDS) <= set(enum)


def test_uses_of_other_modules_agree(spec):
    """Page sizes and sparse fieldsets the sync modules request are allowed by the spec."""
    streams = pytest.importorskip("smartpush_plugin_klaviyo.streams")
    assert streams.PAGE_SIZE <= pagination.PAGE_SIZE_MAX["/api/profiles"]
    for template in streams.MEMBER_PATHS.values():
        assert streams.PAGE_SIZE <= pagination.PAGE_SIZE_MAX[template]
    try:
        groups = __import__("smartpush_plugin_klaviyo.groups", fromlist=["GROUP_FIELDS"])
    except Exception:  # pragma: no cover - module under construction
        pytest.skip("groups module not importable")
    for kind, fields in groups.GROUP_FIELDS.items():
        enum = param(get_op(spec, f"/api/{kind}s"), f"fields[{kind}]")["schema"]["items"]["enum"]
        assert set(fields.split(",")) <= set(enum), kind


def test_endpoint_templates_derive_to_spec_paths(spec):
    cases = {
        "/api/profiles": "/api/profiles",
        "/api/profiles/": "/api/profiles",
        "/api/lists": "/api/lists",
        "/api/lists/XyZ123": "/api/lists/{id}",
        "/api/segments/AbC": "/api/segments/{id}",
        "/api/lists/XyZ/relationships/profiles": "/api/lists/{id}/relationships/profiles",
        "/api/segments/XyZ/relationships/profiles/": "/api/segments/{id}/relationships/profiles",
    }
    for path, template in cases.items():
        assert client_mod.endpoint_template(path) == template
        get_op(spec, template)
