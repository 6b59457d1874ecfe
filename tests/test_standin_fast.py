"""The stand-in's fast paths give exactly what the plain definitions give.

The stand-in serves pages cheaply (it shares the benchmark's CPUs): an inlined profile
generator, cached ids, pre-encoded resource templates, a fast request-header path. These
tests pin each one to its readable counterpart, and the generated data to digests taken
before any of it existed, so the same --profiles/--seed keeps serving the same bytes.
"""

from __future__ import annotations

import hashlib
import random
import socket
import time

import httpx
import orjson
import pytest
from klaviyo_standin import DEFAULT_API_KEY, REVISION, StandInServer, generate_account
from klaviyo_standin.generator import (
    _CROCKFORD,
    ProfileGenerator,
    group_specs,
    iso,
    ulid,
)
from klaviyo_standin.resources import (
    encode_profile_resource,
    encode_relationship_items,
    profile_resource,
)

HEADERS = {"Authorization": f"Klaviyo-API-Key {DEFAULT_API_KEY}", "revision": REVISION}


# --------------------------------------------------------------------------- generator
# sha256 over orjson.dumps([id, created_s, updated_s, joined_s(12345, i), attributes(i)]),
# computed with the original (pre-optimisation) generator.
GOLDEN = [
    (7, 20000, range(3000), "2d3d904d4f07114d84700652025ebfd9b57f93c37879b600c4d6e7185da8a4b4"),
    (0, 1000, range(1000), "1e1f693c6c82d1bfd8a272ccc5038ec97c2aef79ce592c818b91c923dff38ff0"),
    (12345, 1_000_000, [*range(0, 1_000_000, 997), *range(20)],
     "45dd615dfcdce0a016b9d8389a5f8b222207883f66c73896971a230eced368c0"),
    (3, 200000, range(0, 200000, 101), "0c47c7a7976a1fc178bf350fed77a3cce1d03d5fe68b32e00a5301a94ad9b7ff"),
]


@pytest.mark.parametrize("seed,n,indexes,digest", GOLDEN, ids=[f"seed{g[0]}-n{g[1]}" for g in GOLDEN])
def test_generated_data_is_unchanged(seed, n, indexes, digest):
    g = ProfileGenerator(n, seed)
    h = hashlib.sha256()
    for i in indexes:
        h.update(orjson.dumps([g.profile_id(i), g.created_s(i), g.updated_s(i), g.joined_s(12345, i),
                               g.attributes(i)]))
    assert h.hexdigest() == digest


def test_iso_and_groups_are_unchanged():
    h = hashlib.sha256()
    for s in [0, 1, 59, 86399, 86400, 1577836800, 1700000000.0, 1700000000.5, 1782000000, 1500000000.123456]:
        h.update(iso(s).encode())
    assert h.hexdigest() == "27c675cac951285cb51a54d67e50b58257ec417d4ccf53f03128a54bc94aa732"
    assert hashlib.sha256(orjson.dumps(group_specs(7, 30, 20000))).hexdigest() == \
        "42ea6f75ad78278dcbc32f69f5d25e48deb27265224a1e636f9630889f88c5c3"  # + the 275-char segment (#16)


@pytest.mark.parametrize("seed,n", [(7, 5000), (0, 300), (-5, 400), (2**70, 2000), (99, 1_000_000)])
def test_fast_attributes_equal_the_reference(seed, n):
    g = ProfileGenerator(n, seed)
    indexes = range(n) if n <= 5000 else [*range(3000), *range(3000, n, 331)]
    for i in indexes:
        fast, ref = g.attributes(i), g.attributes_reference(i)
        assert orjson.dumps(fast) == orjson.dumps(ref), i
        assert fast == ref
        without = g.attributes(i, predictive=False)
        ref.pop("predictive_analytics")
        without.pop("predictive_analytics", None)
        assert without == ref


def test_generated_attributes_share_no_mutable_objects():
    g = ProfileGenerator(2000, 1)
    a, b = g.attributes(500), g.attributes(500)
    a["properties"]["$consent"].append("x")
    a["properties"]["tags"].append("x")
    a["subscriptions"]["email"]["marketing"]["suppression"].append({})
    assert b == g.attributes_reference(500)
    assert g.attributes(500) == b


def test_iso_matches_strftime():
    rnd = random.Random(3)
    values = [0, 1, 86399, 86400, -1, -86401, 951782400, 4102444799] + \
        [rnd.randrange(-10**9, 4 * 10**9) for _ in range(5000)]
    for s in values:
        assert iso(s) == time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(s)), s
        assert iso(float(s)) == iso(s)


def _ulid_reference(millis: int, rand80: int) -> str:
    value = ((millis & ((1 << 48) - 1)) << 80) | (rand80 & ((1 << 80) - 1))
    out = []
    for _ in range(26):
        out.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(out))


def test_ulid_matches_reference():
    rnd = random.Random(5)
    for _ in range(5000):
        m, r = rnd.getrandbits(rnd.choice([10, 48, 50])), rnd.getrandbits(rnd.choice([20, 80, 90]))
        assert ulid(m, r) == _ulid_reference(m, r)
    assert ulid(0, 0) == "0" * 26
    assert ulid((1 << 48) - 1, (1 << 80) - 1) == "7" + "Z" * 25


def test_cached_ids_equal_computed_ones():
    g = ProfileGenerator(3000, 9)
    first = [g.profile_id(i) for i in range(3000)]
    assert first == [g._make_id(i) for i in range(3000)]
    assert first == [g.profile_id(i) for i in range(3000)]  # now from the cache
    assert all(g.index_of(pid) == i for i, pid in enumerate(first[:200]))


# --------------------------------------------------------------------------- resources
VARIANTS = [
    {},
    {"additional": ("subscriptions",)},
    {"additional": ("predictive_analytics", "subscriptions")},
    {"fields": ["email", "updated"]},
    {"fields": ["subscriptions.email.marketing.consent", "location.city", "nope"],
         "additional": ("subscriptions",)},
    {"member": True, "joined_at": 1_600_000_000},
    {"member": True, "joined_at": "2020-09-13T12:26:40.123456+00:00", "additional": ("subscriptions",)},
    {"member": True, "joined_at": 1_600_000_000.25, "fields": ["joined_group_at", "email"]},
]


@pytest.mark.parametrize("base", ["http://127.0.0.1:8123", "https://a.klaviyo.com", "http://h/ü\"x"])
@pytest.mark.parametrize("variant", range(len(VARIANTS)))
def test_encoded_profile_resources_equal_encoding_the_dicts(base, variant):
    kw = VARIANTS[variant]
    g = ProfileGenerator(400, 4)
    for i in [*range(20), 211 * 1 + 5, 997 + 11, 399]:
        pid = g.profile_id(i)
        expected = orjson.dumps(profile_resource(base, pid, g.attributes(i), **kw))
        stored = g.attributes(i)
        snapshot = orjson.dumps(stored)
        assert encode_profile_resource(orjson.dumps, base, pid, stored, **kw) == expected
        assert orjson.dumps(stored) == snapshot  # not fresh: left untouched
        assert encode_profile_resource(orjson.dumps, base, pid, g.attributes(i), fresh=True, **kw) == expected
    odd = 'x"y\\z'
    assert encode_profile_resource(orjson.dumps, base, odd, {"email": None}, **kw) == \
        orjson.dumps(profile_resource(base, odd, {"email": None}, **kw))


def test_encoded_relationship_items():
    ids = [ProfileGenerator(50, 2).profile_id(i) for i in range(50)]
    for chunk in ([], ids[:1], ids, ["a\"b", *ids[:3]]):
        assert encode_relationship_items(chunk, orjson.dumps) == \
            orjson.dumps([{"type": "profile", "id": i} for i in chunk])


# --------------------------------------------------------------------------- server
@pytest.fixture(scope="module")
def served():
    account = generate_account(700, seed=5)
    account.update_profile(account.profile_ids()[3], {"first_name": "Changed"})
    with StandInServer(account, rate_limits=False) as srv:
        yield account, srv


@pytest.mark.parametrize("params", [
    {"page[size]": "100", "additional-fields[profile]": "subscriptions", "sort": "updated"},
    {"page[size]": "37", "additional-fields[profile]": "predictive_analytics,subscriptions", "sort": "-updated",
     "filter": "greater-than(updated,2025-06-01T00:00:00+00:00)"},
    {"page[size]": "5", "fields[profile]": "email,location.city", "sort": "email"},
])
def test_profile_pages_equal_the_dict_documents(served, params):
    account, srv = served
    with httpx.Client(base_url=srv.base_url, headers=HEADERS) as c:
        url, pages = "/api/profiles", 0
        while url and pages < 8:
            r = c.get(url, params=params if pages == 0 else None)
            assert r.status_code == 200, r.text
            doc = orjson.loads(r.content)
            assert orjson.dumps(doc) == r.content  # compact, canonical encoding
            additional = tuple(v for v in params.get("additional-fields[profile]", "").split(",") if v)
            fields = params["fields[profile]"].split(",") if "fields[profile]" in params else None
            for item in doc["data"]:
                full = account.get_profile(item["id"], base_url=srv.base_url)
                attrs = dict(full["attributes"])
                expected = profile_resource(srv.base_url, item["id"], attrs, additional=additional, fields=fields)
                assert item == expected
            url, pages = doc["links"].get("next"), pages + 1


def test_member_pages_equal_the_dict_documents(served):
    account, srv = served
    gid = account.lists()[0]["id"]
    with httpx.Client(base_url=srv.base_url, headers=HEADERS) as c:
        rel = c.get(f"/api/lists/{gid}/relationships/profiles", params={"page[size]": "100"})
        full = c.get(f"/api/lists/{gid}/profiles", params={"page[size]": "100"})
    assert rel.status_code == full.status_code == 200
    rdoc, fdoc = orjson.loads(rel.content), orjson.loads(full.content)
    assert orjson.dumps(rdoc) == rel.content and orjson.dumps(fdoc) == full.content
    members = list(account.iter_members(gid))[:100]
    assert [d["id"] for d in rdoc["data"]] == [pid for pid, _ in members]
    assert rdoc["data"] == [{"type": "profile", "id": pid} for pid, _ in members]
    for item, (pid, joined) in zip(fdoc["data"], members):
        attrs = account.get_profile(pid)["attributes"]
        assert item == profile_resource(srv.base_url, pid, attrs, member=True, joined_at=joined.timestamp())


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        chunks = []
        while True:
            try:
                data = s.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            chunks.append(data)
            if b"\r\n\r\n" in b"".join(chunks):
                head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                if len(body) >= length:
                    break
        return b"".join(chunks)


@pytest.mark.parametrize("request_lines,status", [
    # the fast path: plain headers, any case, repeated (the first counts)
    ([b"GET /api/accounts HTTP/1.1", b"host: x", f"authorization: Klaviyo-API-Key {DEFAULT_API_KEY}".encode(),
      b"REVISION:" + REVISION.encode(), b"revision: 1999-01-01"], 200),
    ([b"GET /api/accounts HTTP/1.1", b"Host: x", b"Authorization: Klaviyo-API-Key pk_nope",
      b"revision: " + REVISION.encode()], 401),
    # the standard path: HTTP/1.0, a folded header line
    ([b"GET /api/accounts HTTP/1.0", f"Authorization: Klaviyo-API-Key {DEFAULT_API_KEY}".encode(),
      b"revision: " + REVISION.encode()], 200),
    ([b"GET /api/accounts HTTP/1.1", b"Host: x", f"Authorization: Klaviyo-API-Key {DEFAULT_API_KEY}".encode(),
      b"revision: " + REVISION.encode(), b"X-Folded: a", b"  b"], 200),
    ([b"GET /api/accounts HTTP/1.1", b"Host: x", b"revision: " + REVISION.encode()], 401),
])
def test_request_header_parsing(served, request_lines, status):
    _, srv = served
    raw = _raw(srv.port, b"\r\n".join(request_lines) + b"\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0].startswith(f"HTTP/1.1 {status} ".encode()), raw[:300]
    names = [line.split(b":")[0] for line in lines[1:]]
    assert names[:4] == [b"Server", b"Date", b"Content-Type", b"Content-Length"]
    assert b"Server: klaviyo-standin " in lines
    assert len(body) == int(dict(line.split(b": ", 1) for line in lines[1:])[b"Content-Length"])
    orjson.loads(body)


@pytest.mark.parametrize("seed,n", [(7, 20000), (-3, 1000), (2**66, 500000)])
def test_member_fast_paths_equal_the_plain_ones(seed, n):
    from klaviyo_standin.account import member_filter
    from klaviyo_standin.generator import mix64

    g = ProfileGenerator(n, seed)
    for gkey in (12345, 2**63 + 17, mix64(5)):
        key = g.member_key_fn(gkey)
        for i in [*range(1500), n - 1]:
            assert key(i) == (g.joined_s(gkey, i) * 1_000_000, g.profile_id(i))
        thr, mo, deleted = int(0.3 * (1 << 64)), {5: None, 9: 1.0}, {11, 12}
        assert list(member_filter(gkey, thr, mo, deleted)(range(2000))) == \
            [i for i in range(2000) if mix64(gkey ^ i) < thr and i not in mo and i not in deleted]
        assert list(member_filter(gkey, thr, mo, deleted)(range(1999, -1, -1))) == \
            [i for i in range(1999, -1, -1) if mix64(gkey ^ i) < thr and i not in mo and i not in deleted]


def test_link_query_encoding_equals_urlencode():
    from urllib.parse import urlencode

    from klaviyo_standin.server import _urlencode

    for params in [{}, {"page[size]": "100", "sort": "-updated", "k": ""},
                   {"filter": "and(greater-or-equal(joined_group_at,2019-08-19T03:59:14.764517+00:00),"
                              "less-than(email,\"é ü+/&=?#\"))", "page[cursor]": "abc-_DEF"}]:
        for _ in range(2):  # second time from the cache
            assert _urlencode(params) == urlencode(params)
