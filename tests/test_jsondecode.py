"""``jsondecode.loads``: exact values whatever the literal, orjson's speed when nothing can be lost."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from smartpush_plugin_klaviyo import jsondecode
from smartpush_plugin_klaviyo.jsondecode import exact_float, exact_int, loads


def reference(content: bytes):
    """The standard library, keeping every literal exactly (the slow path, always)."""
    return json.loads(content, parse_int=exact_int, parse_float=exact_float, parse_constant=str)


digits = st.text("0123456789", min_size=1, max_size=30)
integers = st.builds(lambda sign, d: sign + d.lstrip("0") if d.lstrip("0") else "0", st.sampled_from(["", "-"]), digits)
decimals = st.builds(
    lambda i, f, e: i + "." + f + e,
    integers, digits, st.sampled_from(["", "e5", "E-7", "e+308", "e400", "E0123", "e-999"]),
)
exponents = st.builds(lambda i, e: i + e, integers, st.sampled_from(["e3", "E400", "e+0400", "e-330", "e22"]))
doubles = st.floats(allow_nan=False, allow_infinity=False).map(repr)
literals = st.one_of(integers, decimals, exponents, doubles, st.sampled_from(["NaN", "-Infinity", "Infinity"]))
# strings that look like numbers (ids, hashes): never values, never a reason to lose speed
number_like = st.builds(lambda a, lit, b: a + lit + b, st.sampled_from(["", "x", "3E", "-", "id:"]),
                        literals, st.sampled_from(["", "a", "E067", " "]))


@st.composite
def documents(draw) -> bytes:
    items = draw(st.lists(st.one_of(literals, number_like.map(json.dumps)), min_size=1, max_size=8))
    keys = [f'"k{i}"' for i in range(len(items))]
    sep = draw(st.sampled_from([",", ", ", " ,\n"]))
    colon = draw(st.sampled_from([":", ": ", " : "]))
    body = sep.join(f"{k}{colon}{v}" for k, v in zip(keys, items))
    shape = draw(st.sampled_from(["obj", "list", "nested"]))
    if shape == "list":
        return ("[" + sep.join(items) + "]").encode()
    if shape == "nested":
        return ('{"data": [{' + body + '}], "links": {"next": null}}').encode()
    return ("{" + body + "}").encode()


@settings(max_examples=400, deadline=None)
@given(documents())
def test_loads_equals_the_exact_reading(doc):
    assert loads(doc) == reference(doc)


def test_number_like_strings_keep_the_fast_path():
    """Ids and hashes inside strings look like long or exponent literals to a byte scan."""
    page = json.dumps({"data": [{"id": "01D0BTVX977SQA4P8XN3E067SA", "attributes": {
        "properties": {"order": "1234567890123456789012", "hash": "3e474ab1E0999", "n": 12.5}}}]}).encode()
    assert not jsondecode._lossy(page)
    assert loads(page) == reference(page)


def test_literals_that_do_not_fit_are_kept_exactly():
    doc = b'{"a": 18446744073709552653, "b": 0.1234567890123456789012, "c": [-1E+400, 12345678901234567e2]}'
    assert jsondecode._lossy(doc)
    assert loads(doc) == {"a": 18446744073709552653, "b": "0.1234567890123456789012",
                          "c": ["-1E+400", "12345678901234567e2"]}
    assert loads(b"99999999999999999999") == 99999999999999999999  # a value with nothing before it
