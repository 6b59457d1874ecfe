"""Property-based tests: profile resources generated from the official OpenAPI spec's schema.

The strategy builder below walks the spec's schema (``$ref``, ``allOf``, ``oneOf``,
``nullable``, ``enum``, ``format: date-time``, objects, arrays) and adds what real data
has: missing fields, extra unknown attributes, wrong types anywhere, arbitrary custom
properties with arbitrary keys and JSON values. (hypothesis-jsonschema does not read
OpenAPI's ``nullable`` nor ``#/components`` references, hence the small builder.)
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hookspecs.interfaces import Contact
from smartpush_plugin_klaviyo.mapping import normalize as mapping_normalize
from smartpush_plugin_klaviyo.mapping import profile as mapping_profile
from smartpush_plugin_klaviyo import mapping
from smartpush_plugin_klaviyo.mapping import GroupInfo, MappedProfile, Skip, assign_tags, map_profile, merge_into

ROOT = Path(__file__).resolve().parent.parent
SPEC = Path(os.environ.get("KLAVIYO_OPENAPI_SPEC", ROOT.parent / "shared" / "klaviyo" / "openapi" / "stable.json"))
PROFILE_DOC = "GetProfileResponsePluralConversationsCollectionCompoundDocument"

pytestmark = pytest.mark.skipif(not SPEC.exists(), reason=f"Klaviyo OpenAPI spec not found at {SPEC}")

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FASTER = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@lru_cache(maxsize=1)
def spec() -> dict:
    return json.loads(SPEC.read_text())


# ------------------------------------------------------------------ JSON values
json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
nasty_keys = st.text(max_size=12) | st.sampled_from(
    ["locale", "title", "$source", "phone_number", "email_consent", "location_city", "prop_locale", "kla_x", "a.b",
     "with space", "größe", "🎉", "", "created", "first_name", "email_raw", "subscriptions_whatsapp"]
)

# Field-specific generators: realistic values mixed with garbage.
emails = st.one_of(
    st.sampled_from(
        ["sarah.mason@klaviyo-demo.com", " Sarah.Mason@Klaviyo-Demo.com ", "a@b.co", "x@y.test", "bad@@x.com",
         "no-at-sign", "", "  ", "ü@bü.de", "first.last+tag@sub.example.co.uk", "a@localhost", "a..b@x.com"]
    ),
    st.emails().map(str),
    st.text(max_size=30),
)
phones = st.one_of(
    st.sampled_from(
        ["+15005550006", "+14155552671", "(415) 555-2671", "030 1234567", "+49 30 1234567", "0049301234567",
         "123", "call me", "", "+999999", "+1 500 555 0006"]
    ),
    st.from_regex(r"\+?[0-9 ()-]{0,16}", fullmatch=True),
    st.text(max_size=20),
)
countries = st.sampled_from(
    ["United States", "US", "us", "Deutschland", "Germany", "DE", "France", "United Kingdom", "UK", "Atlantis", "", " "]
) | st.text(max_size=15)
consents = st.sampled_from(["SUBSCRIBED", "UNSUBSCRIBED", "NEVER_SUBSCRIBED", "subscribed", " SUBSCRIBED ", "", "MAYBE"]) | st.text(max_size=10)
datetimes = st.datetimes(timezones=st.none() | st.timezones()).map(lambda d: d.isoformat()) | st.text(max_size=25)

OVERRIDES = {  # (parent key, key) -> strategy
    ("attributes", "email"): emails,
    ("attributes", "phone_number"): phones,
    ("location", "country"): countries,
    ("marketing", "consent"): consents,
    ("attributes", "properties"): st.dictionaries(nasty_keys, json_values, max_size=6),
}


# Keys generated as if required (they may still be null or of a wrong type), so that most
# examples reach the interesting rules; every other optional key is present or not.
USUALLY_PRESENT = {"attributes", "email", "phone_number", "subscriptions", "sms", "marketing", "consent", "location"}


def weighted(usual: st.SearchStrategy, rare: st.SearchStrategy, ratio: int) -> st.SearchStrategy:
    """``usual`` about ``ratio`` times as often as ``rare``."""
    return st.sampled_from(range(ratio + 1)).flatmap(lambda i: rare if i == ratio else usual)


def _resolve(schema: dict) -> dict:
    seen = 0
    while "$ref" in schema and seen < 20:
        ref = schema["$ref"].split("/")[-1]
        nullable = schema.get("nullable", False)
        schema = dict(spec()["components"]["schemas"][ref])
        if nullable:
            schema["nullable"] = True
        seen += 1
    return schema


def from_schema(schema: dict, depth: int = 0, path: tuple = ()) -> st.SearchStrategy:
    """A strategy for values matching ``schema`` (OpenAPI 3.0 dialect), plus nasty deviations."""
    if path[-2:] in OVERRIDES:
        base = OVERRIDES[path[-2:]]
    else:
        base = _from_schema(_resolve(schema), depth, path)
    schema = _resolve(schema)
    if schema.get("nullable"):
        base = weighted(base, st.none(), 4)
    if depth >= 2:
        # Data in the wild: now and then any JSON value where a field is expected.
        base = weighted(base, json_values, 15)
    return base


def _from_schema(schema: dict, depth: int, path: tuple = ()) -> st.SearchStrategy:
    if depth > 8:
        return json_scalars
    if "allOf" in schema:
        merged: dict = {"type": "object", "properties": {}, "required": []}
        for part in schema["allOf"]:
            part = _resolve(part)
            for key, sub in part.get("properties", {}).items():
                if key in merged["properties"] and "properties" in _resolve(sub):
                    # deep-merge object parts (attributes are split between allOf branches)
                    a = _resolve(merged["properties"][key])
                    b = _resolve(sub)
                    merged["properties"][key] = {
                        **a,
                        **b,
                        "type": "object",
                        "properties": {**a.get("properties", {}), **b.get("properties", {})},
                    }
                else:
                    merged["properties"][key] = sub
            merged["required"] += part.get("required", [])
        return _from_schema(merged, depth, path)
    if "oneOf" in schema or "anyOf" in schema:
        return st.one_of(*[from_schema(s, depth + 1, path) for s in schema.get("oneOf", schema.get("anyOf"))])
    if "enum" in schema:
        return st.sampled_from(schema["enum"]) | st.text(max_size=8)
    kind = schema.get("type")
    if kind == "string":
        if schema.get("format") == "date-time":
            return datetimes
        return st.text(max_size=20)
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(-(2**31), 2**31)
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False) | st.integers(-1000, 1000)
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {}), depth + 1, path), max_size=3)
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        if not props:
            return st.dictionaries(st.text(max_size=8), json_values, max_size=3)
        required = set(schema.get("required", [])) | USUALLY_PRESENT
        fixed = {k: from_schema(v, depth + 1, (*path, k)) for k, v in props.items() if k in required}
        optional = {k: from_schema(v, depth + 1, (*path, k)) for k, v in props.items() if k not in required}
        known = st.fixed_dictionaries(fixed, optional=optional)
        extra = st.dictionaries(st.text(min_size=1, max_size=8), json_values, max_size=2)
        return st.builds(lambda a, b: {**b, **a}, known, st.one_of(st.just({}), extra))
    return json_values


@lru_cache(maxsize=1)
def profile_resources() -> st.SearchStrategy:
    doc = spec()["components"]["schemas"][PROFILE_DOC]
    item = doc["properties"]["data"]["items"]
    wellformed = _from_schema(item, 0)
    good_ids = st.sampled_from(["01GDDKASAP8TKDDA2GRZDSVP4H", "X"]) | st.text(min_size=1, max_size=8).filter(str.strip)
    bad_ids = st.sampled_from(["", "  "]) | st.none() | st.integers()
    ids = weighted(good_ids, bad_ids, 8)

    def with_id(resource, rid, drop_id):
        resource = dict(resource)
        if drop_id:
            resource.pop("id", None)
        else:
            resource["id"] = rid
        return resource

    shaped = st.builds(with_id, wellformed, ids, st.just(False))
    # a few completely malformed resources too
    return weighted(shaped, st.builds(with_id, wellformed, ids, st.just(True)) | json_values, 15)


def _consent_of(resource, channel: str):
    try:
        return resource["attributes"]["subscriptions"][channel]["marketing"]["consent"]
    except (KeyError, TypeError):
        return None


def _is_subscribed_input(consent) -> bool:
    return isinstance(consent, str) and consent.strip().upper() == "SUBSCRIBED"


# ------------------------------------------------------------------ properties
def test_spec_schema_is_where_we_expect():
    schemas = spec()["components"]["schemas"]
    attrs = schemas["ProfileResponsePluralConversationsObjectResource"]["properties"]["attributes"]["properties"]
    assert {"email", "phone_number", "location", "properties"} <= set(attrs)
    # every location field of the spec has its documented property key
    assert {f"kla_location_{k}" for k in _resolve(attrs["location"])["properties"]} <= mapping.RESERVED_PROPERTY_KEYS
    # every standard attribute other than the identity/struct ones has a reserved key
    for key in attrs:
        if key not in {"email", "phone_number", "location", "properties"}:
            assert f"kla_{key}" in mapping.RESERVED_PROPERTY_KEYS, key


@FAST
@given(resource=st.deferred(lambda: profile_resources()))
def test_map_profile_invariants(resource):
    result = map_profile(resource)  # must never raise
    assert isinstance(result, (MappedProfile, Skip))
    rid = resource.get("id") if isinstance(resource, dict) else None
    if isinstance(rid, str) and rid:
        assert result.klaviyo_id == rid
    if isinstance(result, Skip):
        assert isinstance(result.reason, str) and result.reason
        assert "@" not in result.reason
        return
    assert result.email is not None or result.phone is not None
    assert all(isinstance(k, str) and k.startswith("kla_") for k in result.properties)
    if result.email is not None:
        assert result.email == result.email.strip() and result.email_key == result.email.lower()
    if result.phone is not None:
        assert result.phone.startswith("+") and result.phone[1:].isdigit()
        assert result.properties["kla_phone_number"] == result.phone
    if result.email_status == "subscribed":
        assert _is_subscribed_input(_consent_of(resource, "email"))
    if result.sms_status == "subscribed":
        assert _is_subscribed_input(_consent_of(resource, "sms"))
    for status in (result.email_status, result.sms_status):
        assert status in (None, "subscribed", "unsubscribed", "never_subscribed")
    # nothing silently dropped: every custom property value is kept under some key
    custom = resource["attributes"].get("properties")
    if isinstance(custom, dict):
        values = list(result.properties.values())
        for value in custom.values():
            assert any(v is value for v in values)
    # no None standard attribute is stored
    for key, value in resource["attributes"].items():
        if value is None and key in mapping_profile._ATTR_KEY:
            assert mapping_profile._ATTR_KEY[key] not in result.properties or key in (custom or {})
    # deterministic and PII-free repr
    assert map_profile(resource) == result
    text = repr(result)
    if result.email:
        assert result.email not in text
    if result.phone:
        assert result.phone not in text


@FASTER
@given(
    resource=st.deferred(lambda: profile_resources()),
    existing=st.builds(
        Contact,
        uid=st.just("u"),
        email=st.none() | emails,
        phone=st.none() | st.sampled_from(["+15005550006", "+14155552671"]),
        name=st.none() | st.text(max_size=5),
        country=st.none() | countries,
        email_subscription=st.sampled_from([None, "subscribed", "unsubscribed", "never_subscribed"]),
        sms_subscription=st.sampled_from([None, "subscribed", "unsubscribed", "never_subscribed"]),
        properties=st.dictionaries(st.sampled_from(["plain", "kla_title", "kla_email_consent", "x"]), json_values, max_size=3),
    ),
    owned=st.sets(st.sampled_from(["email", "phone", "name", "country"])),
    primary=st.booleans(),
)
def test_merge_into_invariants(resource, existing, owned, primary):
    m = map_profile(resource)
    if not isinstance(m, MappedProfile):
        return
    before = (existing.email, existing.phone, existing.name, existing.country, dict(existing.properties))
    merged, new_owned, notes = merge_into(existing, m, owned_fields=set(owned), primary=primary)
    assert (existing.email, existing.phone, existing.name, existing.country, existing.properties) == before
    assert owned <= new_owned
    for f in ("email", "phone", "name", "country"):
        cur, new = getattr(existing, f), getattr(m, f)
        if cur and f not in owned:
            assert getattr(merged, f) == cur  # never overwrite a value the plugin does not own
        if not cur and new:
            assert getattr(merged, f) == new and f in new_owned
    for key, value in existing.properties.items():
        if not key.startswith("kla_"):
            assert merged.properties[key] is value
        elif not primary:
            assert merged.properties[key] is value
    for key in m.properties:
        assert key in merged.properties
    for ch in ("email_subscription", "sms_subscription"):
        if getattr(merged, ch) == "subscribed" and getattr(existing, ch) != "subscribed":
            assert (m.email_status if ch == "email_subscription" else m.sms_status) == "subscribed"
    for note in notes:
        assert "@" not in note


_local = st.text(alphabet="abcXYZ019.!#$%&'*+/=?^_`{|}~-", min_size=1, max_size=12)
_domain = st.lists(st.text(alphabet="abzAZ09-", min_size=1, max_size=8), min_size=1, max_size=4).map(".".join)
_tld = st.sampled_from(["com", "de", "c", "test", "local", "localhost", "c1", "1", "arpa", "x-y", "onion"])


@settings(max_examples=400, deadline=None)
@given(local=_local, domain=_domain, tld=_tld)
def test_fast_email_path_agrees_with_email_validator(local, domain, tld):
    email = f"{local}@{domain}.{tld}"
    try:
        validate_email(email, check_deliverability=False)
        reference = True
    except EmailNotValidError:
        reference = False
    if mapping_normalize._fast_email_ok(email):
        assert reference, email
    assert mapping.is_valid_email(email) == reference


@settings(max_examples=150, deadline=None)
@given(
    groups=st.lists(
        st.builds(
            GroupInfo,
            group_id=st.text(alphabet="abAB12", min_size=1, max_size=3),
            kind=st.sampled_from(["list", "segment"]),
            name=st.none() | st.sampled_from(["VIP", "vip", " Vip ", "VIP  Club", "vip club", "", "ab", "vip_ab"]),
            created=st.none() | st.datetimes(),
        ),
        max_size=8,
        unique_by=lambda g: g.group_id,
    ),
    seed=st.randoms(use_true_random=False),
)
def test_assign_tags_deterministic_and_unique(groups, seed):
    tags, collisions = assign_tags(groups)
    assert set(tags) == {g.group_id for g in groups}
    assert len(set(tags.values())) == len(tags)
    for g in groups:
        assert tags[g.group_id].startswith(f"kla_{g.kind}_")
    shuffled = list(groups)
    seed.shuffle(shuffled)
    assert assign_tags(shuffled) == (tags, collisions)
