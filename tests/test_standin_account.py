"""The generated account: determinism, awkward data, scale, mutations, filters and cursors."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from klaviyo_standin import generate_account
from klaviyo_standin import cursors
from klaviyo_standin import filters as flt
from klaviyo_standin.spec import BY_TEMPLATE

UTC = timezone.utc
PROFILE_FILTERS = BY_TEMPLATE["/api/profiles"].filters
MEMBER_FILTERS = BY_TEMPLATE["/api/segments/{id}/profiles"].filters


class Clock:
    """A controllable clock for the account (starts now, advances on demand)."""

    def __init__(self):
        self.t = datetime.now(UTC)

    def __call__(self):
        return self.t

    def tick(self, seconds: float = 1.0):
        self.t += timedelta(seconds=seconds)


def test_deterministic_for_profiles_and_seed():
    a, b = generate_account(300, seed=5), generate_account(300, seed=5)
    assert list(a.iter_profiles()) == list(b.iter_profiles())
    assert a.lists() == b.lists() and a.segments() == b.segments()
    c = generate_account(300, seed=6)
    assert [p["id"] for p in c.iter_profiles()] != [p["id"] for p in a.iter_profiles()]


def test_awkward_data_is_present():
    profiles = [p["attributes"] for p in generate_account(2000, seed=1).iter_profiles()]
    emails = [p["email"] for p in profiles]
    assert any(e and e != e.strip() and e != e.lower() for e in emails)  # padded + mixed case
    assert "not-an-email" in emails and "a@@b" in emails
    assert any(p["email"] is None and p["phone_number"] for p in profiles)  # phone only
    assert any(p["email"] is None and p["phone_number"] is None for p in profiles)
    lowered = [e.strip().lower() for e in emails if e]
    assert len(lowered) > len(set(lowered))  # duplicates differing in case
    assert any(p["phone_number"] and p["phone_number"].startswith("(") and p["location"]["country"]
               for p in profiles)
    assert any(p["first_name"] is None for p in profiles) and any(p["last_name"] == "" for p in profiles)
    props = [p["properties"] for p in profiles]
    assert all("$source" in pr for pr in props if pr)
    assert any({"email", "first_name", "locale"} <= set(pr) for pr in props)
    assert any(len(str(v)) >= 20_000 for pr in props for v in pr.values())
    assert any("shoe.size" in pr and "Favorite Color" in pr for pr in props)
    marketing = [p["subscriptions"]["email"]["marketing"] for p in profiles]
    assert {m["consent"] for m in marketing} == {"SUBSCRIBED", "UNSUBSCRIBED", "NEVER_SUBSCRIBED"}
    assert any(m["consent"] == "SUBSCRIBED" and m["suppression"] and not m["can_receive_email_marketing"]
               for m in marketing)
    assert any(m["list_suppressions"] for m in marketing)
    reasons = {s["reason"] for m in marketing for s in m["suppression"]}
    assert {"HARD_BOUNCE", "INVALID_EMAIL", "UNSUBSCRIBE"} <= reasons
    sms = {p["subscriptions"]["sms"]["marketing"]["consent"] for p in profiles if p["phone_number"]}
    assert sms == {"SUBSCRIBED", "UNSUBSCRIBED", "NEVER_SUBSCRIBED"}


def test_groups_have_awkward_names_and_memberships():
    account = generate_account(1000, seed=2)
    names = [g["attributes"]["name"] for g in account.lists() + account.segments()]
    assert "VIP" in names and "vip" in names and "Clientes Fiéis" in names and "Repeat Purchasers" in names
    assert None in names and any(n and "  " in n for n in names) and any(n and n != n.rstrip() for n in names)
    assert any(not s["attributes"]["is_active"] for s in account.segments())
    counts = {g["id"]: account.member_count(g["id"]) for g in account.lists() + account.segments()}
    assert 0 in counts.values() and max(counts.values()) > 900
    gid = account.lists()[0]["id"]
    members = list(account.iter_members(gid))
    assert len(members) == counts[gid]
    assert [m[1] for m in members] == sorted(m[1] for m in members)


def test_million_profiles_are_lazy_and_pages_are_fast():
    account = generate_account(1_000_000, seed=3)
    assert account.profile_count == 1_000_000
    t0 = time.perf_counter()
    rows, more = account.query_profiles("updated", False, None, 100, [])
    for _ in range(20):  # deep pages cost the same as the first
        rows, more = account.query_profiles("updated", False, rows[-1][0], 100, [])
    nodes = flt.parse_filter("greater-than(updated,2026-03-01T00:00:00+00:00)", PROFILE_FILTERS)
    rows, _ = account.query_profiles("updated", False, None, 100, nodes)
    assert rows and all(datetime.fromtimestamp(k[0] / 1e6, UTC) > datetime(2026, 3, 1, tzinfo=UTC) for k, _ in rows)
    for k, i in rows:
        account.profile_attributes(i)
    assert time.perf_counter() - t0 < 2.0


def test_update_moves_profile_to_the_end_and_cursor_resumes():
    clock = Clock()
    account = generate_account(50, seed=4, clock=clock)
    first, _ = account.query_profiles("updated", False, None, 10, [])
    seen = [k[1] for k, _ in first]
    clock.tick()
    account.update_profile(seen[2], {"first_name": "Changed", "location": {"city": "Lyon"}})
    target_unseen = account.profile_ids()[30]
    account.update_profile(target_unseen, {"properties": {"new": 1}})
    new_id = account.create_profile({"email": "new@example.com"})
    account.delete_profile(account.profile_ids()[12])
    rest, after = [], first[-1][0]
    while True:
        rows, more = account.query_profiles("updated", False, after, 7, [])
        rest.extend(k[1] for k, _ in rows)
        if not more:
            break
        after = rows[-1][0]
    assert rest[-3:] == sorted(rest[-3:], key=lambda pid: account.get_profile(pid)["attributes"]["updated"])
    assert seen[2] in rest and new_id in rest and target_unseen in rest
    assert len(rest) == len(set(rest))
    assert set(seen[:10]) | set(rest) >= set(account.profile_ids())
    changed = account.get_profile(seen[2])["attributes"]
    assert changed["first_name"] == "Changed" and changed["location"]["city"] == "Lyon"
    assert changed["location"]["country"] is not None or changed["location"]["country"] is None  # merge kept keys
    assert changed["updated"] == clock.t.isoformat()


def test_membership_mutations_and_merge():
    clock = Clock()
    account = generate_account(200, seed=8, clock=clock)
    vip = [g for g in account.lists() if g["attributes"]["name"] == "VIP"][0]["id"]
    ids = account.profile_ids()
    members = {pid for pid, _ in account.iter_members(vip)}
    outsider = next(pid for pid in ids if pid not in members)
    insider = next(iter(members))
    before = account.member_count(vip)
    clock.tick(5)
    account.add_member(vip, outsider)
    assert dict(account.iter_members(vip))[outsider] == clock.t
    assert list(account.iter_members(vip))[-1][0] == outsider  # newest join sorts last
    account.remove_member(vip, insider)
    assert account.member_count(vip) == before
    keep = next(pid for pid in ids if pid not in members and pid != outsider)
    account.merge_profiles(keep, outsider)
    assert account.get_profile(outsider) is None
    assert keep in dict(account.iter_members(vip))
    assert account.profile_count == 199
    gid = account.create_group("segment", "New seg", is_active=False)
    assert account.member_count(gid) == 0
    account.add_member(gid, keep)
    account.rename_group(gid, "Renamed")
    assert account.get_group(gid)["name"] == "Renamed"
    account.delete_group(gid)
    assert account.get_group(gid) is None
    account.set_subscription(keep, "email", "UNSUBSCRIBED")
    m = account.get_profile(keep)["attributes"]["subscriptions"]["email"]["marketing"]
    assert m["consent"] == "UNSUBSCRIBED" and m["can_receive_email_marketing"] is False


def test_member_filters_use_joined_group_at_bounds():
    account = generate_account(500, seed=9)
    seg = account.segments()[0]["id"]
    all_members = list(account.iter_members(seg))
    pivot = all_members[len(all_members) // 2][1]
    for op, keep in (("greater-than", lambda t: t > pivot), ("greater-or-equal", lambda t: t >= pivot),
                     ("less-than", lambda t: t < pivot), ("less-or-equal", lambda t: t <= pivot)):
        nodes = flt.parse_filter(f"{op}(joined_group_at,{pivot.isoformat()})", MEMBER_FILTERS)
        rows, _ = account.query_members(seg, False, None, 100_000 // 100, nodes)
        assert [k[1] for k, _ in rows] == [pid for pid, t in all_members if keep(t)], op


def test_concurrent_reads_and_writes_are_safe():
    account = generate_account(300, seed=10)
    ids = account.profile_ids()
    errors = []

    def reader():
        try:
            for _ in range(8):
                list(account.iter_profiles())
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for pid in ids[:100]:
        account.update_profile(pid, {"title": "x"})
    for t in threads:
        t.join()
    assert not errors


def test_filter_parser():
    nodes = flt.parse_filter(
        "and(greater-than(updated,2026-01-01T00:00:00+00:00),less-than(updated,2026-02-01T00:00:00Z)),"
        "any(email,['a@example.com','B@example.com']),equals(id,\"x\")", PROFILE_FILTERS)
    assert len(nodes) == 3
    b = flt.range_bounds(nodes, "updated")
    assert b.low == datetime(2026, 1, 1, tzinfo=UTC) and b.low_strict
    assert b.high == datetime(2026, 2, 1, tzinfo=UTC)
    # an unencoded '+' arrives as a space
    assert flt.parse_filter("greater-than(updated,2026-01-01T00:00:00 00:00)", PROFILE_FILTERS)
    for bad in ("greater-or-equal(updated,2026-01-01T00:00:00+00:00)",  # op not allowed on profiles
                "equals(first_name,'x')", "greater-than(updated,", "equals(email,'x'))",
                "greater-than(updated,'not a date')", "bogus(email,'x')", ""):
        with pytest.raises(flt.FilterError):
            flt.parse_filter(bad, PROFILE_FILTERS)


def test_cursors_round_trip_and_reject_tampering():
    c = cursors.Cursor("updated", 123, "01ABC", backward=True)
    token = cursors.encode(c)
    assert cursors.decode(token, "updated") == c
    for bad in (token[:-2], token + "A", "garbage", "", "%%%"):
        with pytest.raises(cursors.CursorError):
            cursors.decode(bad, "updated")
    with pytest.raises(cursors.CursorError):
        cursors.decode(token, "-updated")
