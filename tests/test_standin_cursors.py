"""Cursors that expire (issue #12 item 4): `cursor_ttl` refuses an old `page[cursor]` with
the same 400 as an invalid one on every paginated endpoint, and the `expired_cursor` fault
refuses only requests that carry a cursor."""

from __future__ import annotations

import time

import httpx
import pytest

from klaviyo_standin import DEFAULT_API_KEY, REVISION, StandInServer, cursors, generate_account

HEADERS = {"Authorization": f"Klaviyo-API-Key {DEFAULT_API_KEY}", "revision": REVISION,
           "Accept": "application/vnd.api+json"}
TTL = 0.6


@pytest.fixture(scope="module")
def account():
    return generate_account(300, seed=3, groups=30)


def _paths(account) -> list[tuple[str, dict]]:
    # a group with enough members for two pages of 1
    lid = next(g["id"] for g in account.lists() if account.member_count(g["id"]) >= 2)
    sid = next(g["id"] for g in account.segments() if account.member_count(g["id"]) >= 2)
    one = {"page[size]": "1"}
    return [("/api/profiles", one), ("/api/lists", {}), ("/api/segments", {}),
            (f"/api/lists/{lid}/relationships/profiles", one),
            (f"/api/segments/{sid}/relationships/profiles", one),
            (f"/api/lists/{lid}/profiles", one), (f"/api/segments/{sid}/profiles", one)]


def _is_cursor_refusal(r: httpx.Response) -> bool:
    return r.status_code == 400 and r.json()["errors"][0]["source"] == {"parameter": "page[cursor]"}


def test_cursor_ttl_refuses_old_cursors_on_every_paginated_endpoint(account):
    with StandInServer(account, rate_limits=False, cursor_ttl=TTL) as server, \
            httpx.Client(headers=HEADERS, timeout=10) as http:
        nexts = []
        for path, params in _paths(account):
            first = http.get(server.base_url + path, params=params)
            assert first.status_code == 200, path
            nxt = first.json()["links"].get("next")
            assert nxt, path
            assert http.get(nxt).status_code == 200, path  # fresh: served
            nexts.append((path, params, nxt))
        time.sleep(TTL + 0.2)
        for path, params, nxt in nexts:
            assert _is_cursor_refusal(http.get(nxt)), path
            again = http.get(server.base_url + path, params=params)
            assert again.status_code == 200  # restarting the read works
            assert http.get(again.json()["links"]["next"]).status_code == 200


def test_cursors_carry_their_issue_time_and_stay_signed():
    c = cursors.Cursor("id", "abc", "01X", issued=1234.5)
    token = cursors.encode(c)
    assert cursors.decode(token, "id").issued == 1234.5
    tampered = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    with pytest.raises(cursors.CursorError):
        cursors.decode(tampered, "id")


def test_without_ttl_cursors_never_expire(account):
    with StandInServer(account, rate_limits=False) as server, httpx.Client(headers=HEADERS, timeout=10) as http:
        nxt = http.get(server.base_url + "/api/profiles", params={"page[size]": "1"}).json()["links"]["next"]
        time.sleep(0.3)
        assert http.get(nxt).status_code == 200


def test_expired_cursor_fault_spares_first_pages(account):
    with StandInServer(account, rate_limits=False) as server, httpx.Client(headers=HEADERS, timeout=10) as http:
        server.inject("/api/profiles", kind="expired_cursor", count=1)
        first = http.get(server.base_url + "/api/profiles", params={"page[size]": "1"})
        assert first.status_code == 200  # a first page carries no cursor: untouched
        assert server.faults.pending == 1
        nxt = first.json()["links"]["next"]
        assert _is_cursor_refusal(http.get(nxt))
        assert server.faults.pending == 0
        assert http.get(nxt).status_code == 200  # one shot
