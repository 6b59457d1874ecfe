"""Accounts shaped like real merchants (issue #12 item 2): hundreds to thousands of lists and
segments with log-uniform sizes, deterministic and cheap; the default account's 275-character
segment name (issue #16 item 1)."""

from __future__ import annotations

import math
import time

import httpx

from klaviyo_standin import DEFAULT_API_KEY, REVISION, StandInServer, generate_account
from klaviyo_standin.generator import LONG_GROUP_NAME

HEADERS = {"Authorization": f"Klaviyo-API-Key {DEFAULT_API_KEY}", "revision": REVISION,
           "Accept": "application/vnd.api+json"}


def _counts(account) -> dict[str, int]:
    return {g["id"]: account.member_count(g["id"]) for g in account.lists() + account.segments()}


def test_merchant_shaped_account_spreads_group_sizes_log_uniformly():
    started = time.process_time()
    account = generate_account(20_000, seed=3, groups=224, group_sizes=(20, 10_000))
    counts = _counts(account)
    assert time.process_time() - started < 10  # hash scans would cost 4.5M hashes here
    assert len(counts) == 224
    sizes = sorted(counts.values())
    assert 15 <= sizes[0] <= 40 and 6_000 <= sizes[-1] <= 10_000
    # log-uniform: about half the groups below the geometric mean (~447)
    below = sum(1 for c in sizes if c < math.sqrt(20 * 10_000))
    assert 80 <= below <= 144
    # deterministic
    assert _counts(generate_account(20_000, seed=3, groups=224, group_sizes=(20, 10_000))) == counts
    assert _counts(generate_account(20_000, seed=4, groups=224, group_sizes=(20, 10_000))) != counts


def test_sized_groups_serve_exactly_their_members_over_http():
    account = generate_account(3_000, seed=8, groups=40, group_sizes=(5, 900))
    gid = account.segments()[3]["id"]
    expected = account.member_count(gid)
    with StandInServer(account, rate_limits=False) as server, httpx.Client(headers=HEADERS, timeout=10) as http:
        for path in (f"/api/segments/{gid}/relationships/profiles", f"/api/segments/{gid}/profiles"):
            for sort in ("joined_group_at", "-joined_group_at"):
                ids, url, params = [], server.base_url + path, {"page[size]": "100", "sort": sort}
                while url:
                    doc = http.get(url, params=params).json()
                    ids += [d["id"] for d in doc["data"]]
                    url, params = doc["links"].get("next"), None
                assert len(ids) == len(set(ids)) == expected, (path, sort)
        r = http.get(f"{server.base_url}/api/segments/{gid}", params={"additional-fields[segment]": "profile_count"})
        assert r.json()["data"]["attributes"]["profile_count"] == expected
    # mutations keep working on sampled membership
    member = next(iter(account.iter_members(gid)))[0]
    account.remove_member(gid, member)
    assert account.member_count(gid) == expected - 1
    account.delete_profile(next(iter(account.iter_members(gid)))[0])
    assert account.member_count(gid) == expected - 2 == sum(1 for _ in account.iter_members(gid))


def test_thousand_groups_at_100k_profiles_are_cheap():
    started = time.process_time()
    account = generate_account(100_000, seed=1, groups=1_000, group_sizes=(20, 10_000))
    total = sum(_counts(account).values())
    assert time.process_time() - started < 20
    assert 800_000 < total < 2_500_000  # mean of log-uniform(20, 10000) is ~1,600


def test_default_account_has_a_segment_with_a_275_character_name():
    account = generate_account(200, seed=0)
    names = [s["attributes"]["name"] for s in account.segments()]
    assert LONG_GROUP_NAME in names and len(LONG_GROUP_NAME) == 275
    with StandInServer(account, rate_limits=False) as server, httpx.Client(headers=HEADERS, timeout=10) as http:
        got = http.get(server.base_url + "/api/segments").json()
        served = []
        while True:
            served += [d["attributes"]["name"] for d in got["data"]]
            if not got["links"].get("next"):
                break
            got = http.get(got["links"]["next"]).json()
        assert LONG_GROUP_NAME in served
