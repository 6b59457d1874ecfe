"""The stand-in's transcription of the spec (klaviyo_standin.spec) agrees with stable.json."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from klaviyo_standin import ALL_SCOPES, REVISION
from klaviyo_standin.spec import OPERATIONS

REPO = Path(__file__).resolve().parents[1]
SPEC_PATH = Path(os.environ.get("KLAVIYO_OPENAPI_SPEC") or REPO.parent / "shared" / "klaviyo" / "openapi" / "stable.json")
pytestmark = pytest.mark.skipif(not SPEC_PATH.is_file(), reason=f"OpenAPI spec not found at {SPEC_PATH}")


@pytest.fixture(scope="module")
def spec() -> dict:
    return json.loads(SPEC_PATH.read_bytes())


def _param(op: dict, name: str) -> dict | None:
    return next((p for p in op["parameters"] if p["name"] == name), None)


def _rate(text: str) -> int:
    n, unit = re.fullmatch(r"(\d+)/([sm])", text).groups()
    return int(n)


def test_revision_matches(spec):
    assert spec["info"]["version"] == REVISION


def test_all_scopes_is_the_union_of_spec_scopes(spec):
    union = {s for item in spec["paths"].values() for op in item.values()
             if isinstance(op, dict) for s in op.get("x-klaviyo-scopes", [])}
    assert ALL_SCOPES == union


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda o: o.operation_id)
def test_operation_matches_spec(spec, operation):
    op = spec["paths"][operation.template]["get"]
    assert op["operationId"] == operation.operation_id
    assert sorted(op["x-klaviyo-scopes"]) == sorted(operation.scopes)
    limits = op["x-klaviyo-ratelimit"]
    assert (_rate(limits["burst"]), _rate(limits["steady"])) == (operation.burst, operation.steady)
    size = _param(op, "page[size]")
    if size is None:
        assert operation.page_max is None
    else:
        assert (size["schema"]["default"], size["schema"]["maximum"]) == (operation.page_default, operation.page_max)
    sort = _param(op, "sort")
    assert (tuple(sort["schema"]["enum"]) if sort else ()) == operation.sorts
    filt = _param(op, "filter")
    allowed: dict[str, set[str]] = {}
    if filt:
        tail = filt["description"].partition("Allowed field(s)/operator(s):")[2]
        for m in re.finditer(r"`([^`]+)`: ((?:`[^`]+`(?:, )?)+)", tail):
            allowed[m.group(1)] = set(re.findall(r"`([^`]+)`", m.group(2)))
    assert {k: set(v) for k, v in operation.filters.items()} == allowed
    if operation.additional_param:
        extra = _param(op, operation.additional_param)
        assert tuple(extra["schema"]["items"]["enum"]) == operation.additional_values
        described = set(re.findall(r"`additional-fields\[\w+\]=(\w+)` parameter", op["description"]))
        assert described == set(operation.expensive)
        for value, (burst, steady) in operation.expensive.items():
            # "Rate limits when using the `additional-fields[...]=<value>` parameter ...: Burst: `n/s`"
            tail = op["description"].split(f"={value}` parameter", 1)[1]
            b, s = re.findall(r"`(\d+)/[sm]`", tail)[:2]
            assert (int(b), int(s)) == (burst, steady)
