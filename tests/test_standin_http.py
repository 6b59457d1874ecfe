"""The stand-in over real HTTP: responses valid against the official spec, pagination,
filters, sorting, errors, rate limits, latency, fault injection and the CLI process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from klaviyo_standin import ALL_SCOPES, DEFAULT_API_KEY, REVISION, StandInServer, generate_account

REPO = Path(__file__).resolve().parents[1]
SPEC_PATH = Path(os.environ.get("KLAVIYO_OPENAPI_SPEC") or REPO.parent / "shared" / "klaviyo" / "openapi" / "stable.json")
HEADERS = {"Authorization": f"Klaviyo-API-Key {DEFAULT_API_KEY}", "revision": REVISION,
           "Accept": "application/vnd.api+json"}


@pytest.fixture(scope="module")
def account():
    return generate_account(400, seed=11)


@pytest.fixture(scope="module")
def server(account):
    with StandInServer(account, rate_limits=False) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.base_url, headers=HEADERS, timeout=10) as c:
        yield c


@pytest.fixture(scope="module")
def spec() -> dict:
    if not SPEC_PATH.is_file():
        pytest.skip(f"OpenAPI spec not found at {SPEC_PATH}")
    return json.loads(SPEC_PATH.read_bytes())


@pytest.fixture(scope="module")
def validate(spec):
    """validate(template, doc, status=200): check `doc` against the spec's response schema,
    resolving $refs anywhere in the whole spec document."""
    from openapi_schema_validator import OAS30Validator, oas30_format_checker
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT4

    registry = Registry().with_resource("urn:klaviyo", Resource.from_contents(spec, default_specification=DRAFT4))
    cache: dict = {}

    def check(template: str, doc: dict, status: int = 200) -> None:
        if status == 200:
            ref = spec["paths"][template]["get"]["responses"]["200"]["content"]["application/vnd.api+json"]["schema"]["$ref"]
            ref = "urn:klaviyo" + ref
        else:
            ref = "urn:klaviyo#/components/responses/ClientError/content/application~1vnd.api+json/schema"
        if ref not in cache:
            cache[ref] = OAS30Validator({"$ref": ref}, registry=registry, format_checker=oas30_format_checker)
        errors = sorted(cache[ref].iter_errors(doc), key=lambda e: list(e.path))
        assert not errors, [(list(e.path), e.message[:300]) for e in errors[:5]]

    return check


def _group_id(account, kind, name):
    groups = account.lists() if kind == "list" else account.segments()
    return next(g["id"] for g in groups if g["attributes"]["name"] == name)


# ---------------------------------------------------------------------------- schemas
@pytest.mark.parametrize("extra", [{}, {"additional-fields[profile]": "subscriptions"},
                                   {"additional-fields[profile]": "subscriptions,predictive_analytics"}])
def test_profiles_validate_against_spec(client, validate, extra):
    pages = 0
    url, params = "/api/profiles", {"page[size]": "100", **extra}
    while url and pages < 4:
        r = client.get(url, params=params)
        assert r.status_code == 200 and r.headers["content-type"] == "application/vnd.api+json"
        doc = r.json()
        validate("/api/profiles", doc)
        for res in doc["data"]:
            assert ("subscriptions" in res["attributes"]) == ("subscriptions" in extra.get("additional-fields[profile]", ""))
            assert ("predictive_analytics" in res["attributes"]) == ("predictive" in str(extra))
        url, params, pages = doc["links"].get("next"), None, pages + 1


def test_every_other_endpoint_validates(client, account, validate):
    lid = _group_id(account, "list", "Newsletter")
    sid = _group_id(account, "segment", "Repeat Purchasers")
    cases = [
        ("/api/lists", "/api/lists", {}),
        ("/api/segments", "/api/segments", {}),
        ("/api/accounts", "/api/accounts", {}),
        (f"/api/lists/{lid}", "/api/lists/{id}", {"additional-fields[list]": "profile_count"}),
        (f"/api/lists/{lid}", "/api/lists/{id}", {}),
        (f"/api/segments/{sid}", "/api/segments/{id}", {"additional-fields[segment]": "profile_count"}),
        (f"/api/lists/{lid}/relationships/profiles", "/api/lists/{id}/relationships/profiles", {"page[size]": "100"}),
        (f"/api/segments/{sid}/relationships/profiles", "/api/segments/{id}/relationships/profiles", {}),
        (f"/api/lists/{lid}/profiles", "/api/lists/{id}/profiles", {"page[size]": "50"}),
        (f"/api/lists/{lid}/profiles", "/api/lists/{id}/profiles", {"additional-fields[profile]": "subscriptions"}),
        (f"/api/segments/{sid}/profiles", "/api/segments/{id}/profiles",
         {"additional-fields[profile]": "subscriptions,predictive_analytics", "page[size]": "100"}),
    ]
    for path, template, params in cases:
        r = client.get(path, params=params)
        assert r.status_code == 200, (path, r.text)
        doc = r.json()
        validate(template, doc)
        if "profile_count" in str(params):
            assert doc["data"]["attributes"]["profile_count"] == account.member_count(doc["data"]["id"])
        if template.endswith("/relationships/profiles"):
            assert all(set(x) == {"type", "id"} for x in doc["data"])
        if template.endswith("}/profiles"):
            assert all("joined_group_at" in x["attributes"] for x in doc["data"])
            subs = "subscriptions" in str(params)
            assert all(("subscriptions" in x["attributes"]) == subs for x in doc["data"])


# ---------------------------------------------------------------------------- pagination
def _walk(client, url, params):
    ids, pages = [], 0
    while url:
        r = client.get(url, params=params)
        assert r.status_code == 200, r.text
        doc = r.json()
        ids.extend(x["id"] for x in doc["data"])
        url, params, pages = doc["links"].get("next"), None, pages + 1
        if url:
            assert url.startswith("http://127.0.0.1:") and "page%5Bcursor%5D=" in url
    return ids, pages


def test_pagination_visits_every_profile_exactly_once(client, account):
    for sort in ("id", "updated", "-updated", "created", "-email",
                 "subscriptions.email.marketing.suppression.timestamp"):
        ids, pages = _walk(client, "/api/profiles", {"page[size]": "37", "sort": sort})
        assert len(ids) == len(set(ids)) == account.profile_count, sort
        assert pages == -(-account.profile_count // 37)
    ids, _ = _walk(client, "/api/profiles", {})
    assert len(ids) == account.profile_count  # default page size 20


def test_prev_link_returns_previous_page(client):
    first = client.get("/api/profiles", params={"page[size]": "5", "sort": "updated"}).json()
    assert "prev" not in first["links"]
    second = client.get(first["links"]["next"]).json()
    back = client.get(second["links"]["prev"]).json()
    assert [x["id"] for x in back["data"]] == [x["id"] for x in first["data"]]


def test_member_pagination_and_sort(client, account):
    lid = _group_id(account, "list", "Newsletter")
    expected = [pid for pid, _ in account.iter_members(lid)]
    ids, _ = _walk(client, f"/api/lists/{lid}/relationships/profiles", {"page[size]": "33"})
    assert ids == expected
    ids, _ = _walk(client, f"/api/lists/{lid}/profiles", {"page[size]": "100", "sort": "-joined_group_at"})
    assert ids == expected[::-1]
    empty = _group_id(account, "list", "Empty list (never used)")
    doc = client.get(f"/api/lists/{empty}/relationships/profiles").json()
    assert doc["data"] == [] and "next" not in doc["links"]


def test_lists_and_segments_pages_of_ten(client, account):
    ids, pages = _walk(client, "/api/segments", {"page[size]": "2", "sort": "name"})
    assert sorted(ids) == sorted(s["id"] for s in account.segments()) and pages == 3
    names = [account.get_group(i)["name"] or "" for i in ids]
    assert names == sorted(names)
    assert client.get("/api/lists", params={"page[size]": "11"}).status_code == 400


# ---------------------------------------------------------------------------- filters
def test_profile_updated_window_filter(client, account):
    lo, hi = "2025-06-01T00:00:00+00:00", "2025-09-01T00:00:00+00:00"
    flt = f"and(greater-than(updated,{lo}),less-than(updated,{hi}))"
    ids, _ = _walk(client, "/api/profiles", {"filter": flt, "sort": "updated", "page[size]": "100"})
    expected = [p["id"] for p in account.iter_profiles() if lo < p["attributes"]["updated"] < hi]
    assert ids == expected and ids
    # top-level comma == and()
    ids2, _ = _walk(client, "/api/profiles", {"filter": f"greater-than(updated,{lo}),less-than(updated,{hi})",
                                              "sort": "updated", "page[size]": "100"})
    assert ids2 == expected


def test_profile_equality_filters(client, account):
    p = next(p for p in account.iter_profiles() if p["attributes"]["email"] and "@" in p["attributes"]["email"]
             and p["attributes"]["phone_number"])
    for flt in (f"equals(id,'{p['id']}')", f"any(id,['{p['id']}','nope'])",
                f"equals(email,'{p['attributes']['email'].strip()}')",
                f"equals(phone_number,'{p['attributes']['phone_number']}')"):
        doc = client.get("/api/profiles", params={"filter": flt}).json()
        assert p["id"] in [x["id"] for x in doc["data"]], flt


def test_subscription_filters(client, account):
    flt = "equals(subscriptions.email.marketing.suppression.reason,'HARD_BOUNCE')"
    ids, _ = _walk(client, "/api/profiles", {"filter": flt, "page[size]": "100"})
    expected = {p["id"] for p in account.iter_profiles()
                if any(s["reason"] == "HARD_BOUNCE" for s in p["attributes"]["subscriptions"]["email"]["marketing"]["suppression"])}
    assert set(ids) == expected and expected


def test_member_filters(client, account):
    sid = _group_id(account, "segment", "Repeat Purchasers")
    members = list(account.iter_members(sid))
    pivot = members[len(members) // 3][1].isoformat()
    doc = client.get(f"/api/segments/{sid}/relationships/profiles",
                     params={"filter": f"greater-or-equal(joined_group_at,{pivot})", "page[size]": "100"}).json()
    assert [x["id"] for x in doc["data"]] == [pid for pid, t in members if t.isoformat() >= pivot][:100]
    target = members[5][0]
    doc = client.get(f"/api/segments/{sid}/profiles", params={"filter": f"equals(profile_id,'{target}')"}).json()
    assert [x["id"] for x in doc["data"]] == [target]


def test_group_filters(client, account):
    doc = client.get("/api/lists", params={"filter": "equals(name,'VIP')"}).json()
    assert [x["attributes"]["name"] for x in doc["data"]] == ["VIP"]
    doc = client.get("/api/segments", params={"filter": "equals(is_active,false)"}).json()
    assert [x["attributes"]["is_active"] for x in doc["data"]] == [False]
    doc = client.get("/api/lists", params={"filter": "any(name,['VIP','vip','Clientes Fiéis'])"}).json()
    assert len(doc["data"]) == 3


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize("path,params,headers,status,code,parameter", [
    ("/api/profiles", {}, {"Authorization": None}, 401, "not_authenticated", None),
    ("/api/profiles", {}, {"Authorization": "Klaviyo-API-Key pk_nope"}, 401, "not_authenticated", None),
    ("/api/profiles", {}, {"revision": None}, 400, "invalid", "revision"),
    ("/api/profiles", {}, {"revision": "2099-01-01"}, 400, "invalid", "revision"),
    ("/api/profiles", {}, {"revision": "yesterday"}, 400, "invalid", "revision"),
    ("/api/profiles", {"page[size]": "101"}, {}, 400, "invalid", "page[size]"),
    ("/api/profiles", {"page[size]": "0"}, {}, 400, "invalid", "page[size]"),
    ("/api/profiles", {"sort": "first_name"}, {}, 400, "invalid", "sort"),
    ("/api/profiles", {"filter": "equals(first_name,'x')"}, {}, 400, "invalid", "filter"),
    ("/api/profiles", {"filter": "greater-or-equal(updated,2026-01-01T00:00:00+00:00)"}, {}, 400, "invalid", "filter"),
    ("/api/profiles", {"filter": "greater-than(updated,"}, {}, 400, "invalid", "filter"),
    ("/api/profiles", {"page[cursor]": "bm90LWEtY3Vyc29y"}, {}, 400, "invalid", "page[cursor]"),
    ("/api/profiles", {"additional-fields[profile]": "everything"}, {}, 400, "invalid", "additional-fields[profile]"),
    ("/api/lists/NOPE00", {}, {}, 404, "not_found", None),
    ("/api/flows", {}, {}, 404, "not_found", None),
])
def test_error_shapes(client, validate, path, params, headers, status, code, parameter):
    hdrs = {**HEADERS, **{k: v for k, v in headers.items() if v is not None}}
    for k, v in headers.items():
        if v is None:
            hdrs.pop(k)
    r = httpx.get(str(client.base_url) + path, params=params, headers=hdrs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/vnd.api+json"
    doc = r.json()
    validate("/api/profiles", doc, status)
    assert doc["errors"][0]["code"] == code
    assert doc["errors"][0].get("source", {}).get("parameter") == parameter


def test_cursor_for_another_sort_is_refused(client):
    nxt = client.get("/api/profiles", params={"sort": "updated"}).json()["links"]["next"]
    cursor = httpx.URL(nxt).params["page[cursor]"]
    r = client.get("/api/profiles", params={"sort": "-updated", "page[cursor]": cursor})
    assert r.status_code == 400


def test_lenient_revisions(client):
    # 2026-10-15: the default revision of the official SDK (klaviyo-api 25.0.0)
    for rev in ("2026-07-15", "2026-01-15", "2025-01-15.pre", "2026-10-15"):
        assert client.get("/api/accounts", headers={"revision": rev}).status_code == 200, rev


def test_retired_revisions_are_gone(client):
    """Klaviyo retires a revision two years after its release: 410 Gone."""
    for rev in ("2024-10-15", "2023-02-22"):
        r = client.get("/api/accounts", headers={"revision": rev})
        assert r.status_code == 410, rev
        assert r.json()["errors"][0]["code"] == "gone"


def test_missing_scope_is_403(account, validate):
    keys = {"pk_" + "1" * 34: {"profiles:read", "lists:read"}}
    with StandInServer(account, api_keys=keys, rate_limits=False) as srv:
        h = {**HEADERS, "Authorization": "Klaviyo-API-Key pk_" + "1" * 34}
        assert httpx.get(srv.base_url + "/api/profiles", headers=h).status_code == 200
        sid = account.segments()[0]["id"]
        r = httpx.get(srv.base_url + f"/api/segments/{sid}/relationships/profiles", headers=h)
        assert r.status_code == 403
        validate("/api/segments", r.json(), 403)
        err = r.json()["errors"][0]
        assert err["code"] == "permission_denied"
        assert err["detail"] == "This API key is missing required scopes: segments:read"


# ---------------------------------------------------------------------------- rate limits
def test_rate_limit_windows(account, validate):
    limits = {"get_lists": (5, 20), "get_profiles:predictive_analytics": (2, 4)}
    with StandInServer(account, rate_limits=limits, clock_scale=10) as srv, \
            httpx.Client(base_url=srv.base_url, headers=HEADERS) as c:
        statuses = []
        deadline = time.monotonic() + 1.2  # well inside the first 6 s steady window
        while time.monotonic() < deadline:
            r = c.get("/api/lists")
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert int(r.headers["Retry-After"]) >= 1
                validate("/api/lists", r.json(), 429)
                assert r.json()["errors"][0]["code"] == "throttled"
            else:
                assert r.headers["RateLimit-Limit"] == "20"
                assert 0 <= int(r.headers["RateLimit-Remaining"]) < 20
            time.sleep(0.005)
        assert statuses.count(200) == 20 and 429 in statuses
        # no 0.1 s burst window ever saw more than 5 successes
        t0 = srv.limiter._t0
        per_window: dict[int, int] = {}
        for t, name, status in srv.request_log:
            if status == 200:
                per_window[int((t - t0) // 0.1)] = per_window.get(int((t - t0) // 0.1), 0) + 1
        assert max(per_window.values()) <= 5
        # once the steady window is spent the wait is most of 6 s
        assert int(c.get("/api/lists").headers["Retry-After"]) >= 4
        # predictive analytics has its own, smaller bucket; plain profile reads are unaffected
        pa = {"additional-fields[profile]": "predictive_analytics"}
        codes = [c.get("/api/profiles", params=pa).status_code for _ in range(6)]
        assert codes.count(200) <= 4 and codes.count(429) >= 2  # steady 4 per (scaled) minute
        assert c.get("/api/profiles").status_code == 200
        assert srv.stats["429"] >= 2


def test_accounts_endpoint_uses_spec_limit(account):
    with StandInServer(account) as srv, httpx.Client(base_url=srv.base_url, headers=HEADERS) as c:
        # Burst 1/s in fixed one-second windows: two requests may straddle a boundary, but
        # of three sent within a second two share a window, and the second of those is refused.
        responses = [c.get("/api/accounts") for _ in range(3)]
        codes = [r.status_code for r in responses]
        assert codes[0] == 200 and 429 in codes and codes.count(200) <= 2, codes
        assert all(r.headers["Retry-After"] == "1" for r in responses if r.status_code == 429)


# ---------------------------------------------------------------------------- latency
def test_latency_does_not_serialize_requests(account):
    with StandInServer(account, latency=0.2, rate_limits=False) as srv, \
            httpx.Client(base_url=srv.base_url, headers=HEADERS, limits=httpx.Limits(max_connections=40)) as c:
        results = []

        def one():
            results.append(c.get("/api/profiles").status_code)

        threads = [threading.Thread(target=one) for _ in range(20)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        assert results == [200] * 20
        assert 0.2 <= elapsed < 2.0  # serialized it would be >= 4 s (a loaded machine adds a lot to 0.2)


# ---------------------------------------------------------------------------- faults
def test_fault_injection(account):
    with StandInServer(account, rate_limits=False) as srv, \
            httpx.Client(base_url=srv.base_url, headers=HEADERS) as c:
        srv.inject("/api/profiles", 503, count=2)
        assert [c.get("/api/profiles").status_code for _ in range(3)] == [503, 503, 200]
        assert c.get("/api/lists").status_code == 200

        srv.inject("/api/profiles", 429, retry_after=3)
        r = c.get("/api/profiles")
        assert r.status_code == 429 and r.headers["Retry-After"] == "3"
        assert r.json()["errors"][0]["code"] == "throttled"

        srv.inject(None, 403, kind="html")
        r = c.get("/api/segments")
        assert r.status_code == 403 and r.headers["content-type"].startswith("text/html")

        srv.inject("/api/profiles", 403)
        r = c.get("/api/profiles")
        assert r.status_code == 403 and r.json()["errors"][0]["code"] == "permission_denied"

        for status in (500, 502, 524):
            srv.inject(None, status)
            assert c.get("/api/accounts").status_code == status

        srv.inject("/api/profiles", 400, kind="invalid_cursor")
        r = c.get("/api/profiles")
        assert r.status_code == 400 and r.json()["errors"][0]["source"]["parameter"] == "page[cursor]"

        srv.inject("/api/profiles", 200, kind="slow", delay=0.3)
        t0 = time.perf_counter()
        assert c.get("/api/profiles").status_code == 200
        assert time.perf_counter() - t0 >= 0.3

        srv.inject("/api/profiles", 0, kind="reset")
        with pytest.raises(httpx.TransportError):
            c.get("/api/profiles")
        assert c.get("/api/profiles").status_code == 200  # the client reconnects

        srv.inject("/api/profiles", 502, body="<html>bad gateway</html>", headers={"Content-Type": "text/html"})
        r = c.get("/api/profiles")
        assert r.status_code == 502 and r.text == "<html>bad gateway</html>"

        stats = srv.stats
        assert stats["GET /api/profiles"] >= 10 and stats["429"] == 1
        srv.reset_stats()
        assert srv.stats == {} and srv.request_log == []


def test_stats_and_request_log(server, client):
    server.reset_stats()
    client.get("/api/profiles")
    client.get("/api/lists")
    log = server.request_log
    assert [(name, status) for _, name, status in log] == [("GET /api/profiles", 200), ("GET /api/lists", 200)]
    assert log[0][0] <= log[1][0]
    assert server.stats["GET /api/profiles"] == 1


# ---------------------------------------------------------------------------- process
def test_module_entry_point_serves_in_a_separate_process():
    proc = subprocess.Popen([sys.executable, "-m", "klaviyo_standin", "--profiles", "50", "--seed", "3",
                             "--no-rate-limits"], stdout=subprocess.PIPE, text=True)
    try:
        base = proc.stdout.readline().strip()
        key = proc.stdout.readline().strip()
        assert base.startswith("http://127.0.0.1:") and key == DEFAULT_API_KEY
        r = httpx.get(base + "/api/profiles", params={"page[size]": "100"}, headers=HEADERS)
        assert r.status_code == 200 and len(r.json()["data"]) == 50
        expected = [p["id"] for p in generate_account(50, seed=3).iter_profiles()]
        assert sorted(x["id"] for x in r.json()["data"]) == sorted(expected)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_default_key_looks_like_a_private_key():
    import re
    assert re.fullmatch(r"pk_[0-9a-f]{34}", DEFAULT_API_KEY)


def test_all_scopes_cover_every_operation():
    from klaviyo_standin.spec import OPERATIONS
    assert all(set(op.scopes) <= ALL_SCOPES for op in OPERATIONS)


# ---------------------------------------------------------------------------- cursors vs mutations
def test_cursor_resumes_correctly_after_mutations():
    account = generate_account(150, seed=12)
    with StandInServer(account, rate_limits=False) as srv, \
            httpx.Client(base_url=srv.base_url, headers=HEADERS) as c:
        first = c.get("/api/profiles", params={"sort": "updated", "page[size]": "50"}).json()
        seen = [x["id"] for x in first["data"]]
        ids = account.profile_ids()
        unseen_updated, unseen_deleted = ids[80], ids[90]
        account.update_profile(seen[0], {"first_name": "Again"})
        account.update_profile(unseen_updated, {"first_name": "Moved"})
        account.delete_profile(unseen_deleted)
        created = account.create_profile({"email": "fresh@example.com"})
        lid = account.lists()[0]["id"]
        m_first = c.get(f"/api/lists/{lid}/relationships/profiles", params={"page[size]": "10"}).json()
        outsider = next(pid for pid in ids if pid not in {m for m, _ in account.iter_members(lid)}
                        and pid != unseen_deleted)
        account.add_member(lid, outsider)
        rest, url = [], first["links"]["next"]
        while url:
            doc = c.get(url).json()
            rest.extend(x["id"] for x in doc["data"])
            url = doc["links"].get("next")
        assert len(rest) == len(set(rest))
        assert unseen_deleted not in rest
        assert set(seen) | set(rest) == set(account.profile_ids())
        assert rest[-3:] == [seen[0], unseen_updated, created]  # updated "now", in that order
        assert rest.count(unseen_updated) == 1
        members, url = [], m_first["links"]["next"]
        while url:
            doc = c.get(url).json()
            members.extend(x["id"] for x in doc["data"])
            url = doc["links"].get("next")
        assert members[-1] == outsider
        assert [x["id"] for x in m_first["data"]] + members == [pid for pid, _ in account.iter_members(lid)]


def test_stop_closes_keep_alive_connections(account):
    srv = StandInServer(account, rate_limits=False).start()
    with httpx.Client(base_url=srv.base_url, headers=HEADERS) as c:
        assert c.get("/api/accounts").status_code == 200
        srv.stop()
        with pytest.raises(httpx.TransportError):
            c.get("/api/accounts")
