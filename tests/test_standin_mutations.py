"""Mutations real accounts see every day (issue #12 item 3): quiet consent changes that
leave `updated` alone but are found by the spec's suppression-timestamp filters and sorts
over HTTP, merges and deletions, and `daily_churn`."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import httpx
import pytest

from klaviyo_standin import DEFAULT_API_KEY, REVISION, StandInServer, daily_churn, generate_account
from klaviyo_standin.churn import QUIET_KINDS

HEADERS = {"Authorization": f"Klaviyo-API-Key {DEFAULT_API_KEY}", "revision": REVISION,
           "Accept": "application/vnd.api+json"}
SUPP = "subscriptions.email.marketing.suppression.timestamp"
LIST_SUPP = "subscriptions.email.marketing.list_suppressions.timestamp"


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _walk(http: httpx.Client, url: str, params: dict) -> list[str]:
    """Every id of a paginated read, following links.next (page size 1: cursors matter)."""
    ids: list[str] = []
    r = http.get(url, params=params)
    while True:
        assert r.status_code == 200, r.text
        doc = r.json()
        ids += [d["id"] for d in doc["data"]]
        nxt = doc["links"].get("next")
        if not nxt:
            return ids
        r = http.get(nxt)


@pytest.fixture()
def setup():
    account = generate_account(500, seed=21)
    with StandInServer(account, rate_limits=False) as server, \
            httpx.Client(headers=HEADERS, timeout=10) as http:
        yield account, server, http


def _email_ids(account, n: int) -> list[str]:
    return [p["id"] for p in account.iter_profiles() if p["attributes"]["email"]][:n]


def test_quiet_suppressions_keep_updated_and_are_found_by_the_spec_filters(setup):
    account, server, http = setup
    since = datetime.now(timezone.utc) - timedelta(seconds=2)
    a, b, c, d = _email_ids(account, 4)
    before = {pid: account.get_profile(pid)["attributes"]["updated"] for pid in (a, b, c, d)}
    account.set_subscription(a, "email", "SUBSCRIBED", suppression=[{"reason": "HARD_BOUNCE"}], touch_updated=False)
    account.set_subscription(b, "email", "UNSUBSCRIBED", suppression=[{"reason": "SPAM_COMPLAINT"}],
                             touch_updated=False)
    lid = account.lists()[0]["id"]
    account.set_subscription(c, "email", "SUBSCRIBED",
                             list_suppressions=[{"list_id": lid, "reason": "UNSUBSCRIBE"}], touch_updated=False)
    account.set_subscription(d, "email", "SUBSCRIBED", suppression=[], list_suppressions=[], touch_updated=False)
    for pid in (a, b, c, d):
        attrs = account.get_profile(pid)["attributes"]
        assert attrs["updated"] == before[pid]  # none of them moved `updated`
    assert account.get_profile(a)["attributes"]["subscriptions"]["email"]["marketing"]["can_receive_email_marketing"] is False
    assert account.get_profile(d)["attributes"]["subscriptions"]["email"]["marketing"]["consent"] == "SUBSCRIBED"
    url = server.base_url + "/api/profiles"
    # nothing newer than `since` by `updated`...
    assert _walk(http, url, {"filter": f"greater-than(updated,{_iso(since)})"}) == []
    # ...but the suppression filters find them, with cursors, for every range operator listed
    for op in ("greater-than", "greater-or-equal"):
        got = _walk(http, url, {"filter": f"{op}({SUPP},{_iso(since)})", "page[size]": "1"})
        assert sorted(got) == sorted([a, b])
        got = _walk(http, url, {"filter": f"{op}({LIST_SUPP},{_iso(since)})", "page[size]": "1"})
        assert got == [c]
    got = _walk(http, url, {"filter": f"less-than({SUPP},{_iso(since)})", "page[size]": "50"})
    assert a not in got and b not in got
    # sorted by the suppression timestamp (descending: newest first), paginated by cursor
    got = _walk(http, url, {"filter": f"greater-than({SUPP},{_iso(since)})", "sort": f"-{SUPP}",
                            "page[size]": "1"})
    assert sorted(got) == sorted([a, b]) and len(got) == 2
    got = _walk(http, url, {"filter": f"greater-than({LIST_SUPP},{_iso(since)})", "sort": LIST_SUPP})
    assert got == [c]
    # an operator the spec does not list for the field is refused
    r = http.get(url, params={"filter": f"equals({SUPP},{_iso(since)})"})
    assert r.status_code == 400 and r.json()["errors"][0]["source"] == {"parameter": "filter"}


def test_set_subscription_still_moves_updated_by_default(setup):
    account, _, _ = setup
    pid = _email_ids(account, 1)[0]
    before = account.get_profile(pid)["attributes"]["updated"]
    account.set_subscription(pid, "email", "UNSUBSCRIBED")
    assert account.get_profile(pid)["attributes"]["updated"] > before
    with pytest.raises(ValueError):
        account.set_subscription(pid, "sms", "SUBSCRIBED", suppression=[{"reason": "HARD_BOUNCE"}])


def test_merge_makes_the_gone_id_disappear(setup):
    account, server, http = setup
    keep, gone = _email_ids(account, 2)
    gone_groups = [g["id"] for g in account.lists() + account.segments()
                   if gone in {pid for pid, _ in account.iter_members(g["id"])}]
    account.merge_profiles(keep, gone)
    assert account.get_profile(gone) is None
    r = http.get(server.base_url + "/api/profiles", params={"filter": f'equals(id,"{gone}")'})
    assert r.status_code == 200 and r.json()["data"] == []
    for gid in gone_groups:
        members = {pid for pid, _ in account.iter_members(gid)}
        assert gone not in members and keep in members


def test_daily_churn_applies_a_realistic_day_deterministically():
    def run():
        account = generate_account(2000, seed=4, groups=20)
        before = account.profile_count
        churn = daily_churn(account, 99, updates=20, creates=5, deletes=4, merges=3,
                            quiet_consent=10, joins=6, leaves=6)
        return account, before, churn

    account, before, churn = run()
    _, _, again = run()
    assert churn.summary() == again.summary()
    assert churn.deleted == again.deleted and churn.quiet_consent == again.quiet_consent
    assert {k: v for k, v in churn.summary().items() if k not in ("joined",)} == {
        "updated": 20, "created": 5, "deleted": 4, "merged": 3, "quiet_consent": 10, "left": 6}
    assert churn.summary()["joined"] >= 1
    assert account.profile_count == before + 5 - 4 - 3
    for pid in churn.deleted + [gone for _, gone in churn.merged]:
        assert account.get_profile(pid) is None
    assert {kind for _, kind in churn.quiet_consent} == set(QUIET_KINDS)
    fresh = generate_account(2000, seed=4, groups=20)  # the account before the day
    for pid, kind in churn.quiet_consent:  # every quiet change changes something, quietly
        old, new = fresh.get_profile(pid)["attributes"], account.get_profile(pid)["attributes"]
        assert new["updated"] == old["updated"], kind
        assert new["subscriptions"]["email"]["marketing"] != old["subscriptions"]["email"]["marketing"], kind
    for gid, pid in churn.left:
        assert pid not in {p for p, _ in account.iter_members(gid)}
    for gid, pid in churn.joined:
        assert pid in {p for p, _ in account.iter_members(gid)}
