"""How a run plans each group's membership check (pure decisions of
:class:`smartpush_plugin_klaviyo.groups.MembershipChecks`; the checks themselves run over
HTTP in test_daily_runs.py and test_incremental_cost.py)."""

from __future__ import annotations

from collections import Counter

import pytest

from smartpush_plugin_klaviyo.groups import MembershipChecks, rescan_turns
from smartpush_plugin_klaviyo.sync import SyncOptions
from smartpush_plugin_klaviyo.writer import RunCounters


def group(gid: str, members: int | None, scanned_gen: int = 1, checked_run: str | None = None, kind: str = "list"):
    return {"group_id": gid, "kind": kind, "member_count": members, "scanned_gen": scanned_gen,
            "checked_run": checked_run, "created": "2025-01-01T00:00:00+00:00"}


def checks(mode: str = "incremental", gen: int = 8, **options) -> MembershipChecks:
    return MembershipChecks(
        client=None, storage=None, state=None, writer=None, counters=RunCounters(),
        options=SyncOptions(**options), scheduler=None, store_id="s1", run_id="r1", gen=gen,
        mode=mode, profiles_since=None,
    )


def test_turns_deal_large_groups_evenly_and_skip_small_ones():
    groups = [group(f"g{i}", 1000 * (i + 1)) for i in range(14)] + [group("small", 40)]
    turns = rescan_turns(groups, small=500, every=7)
    assert "small" not in turns
    assert set(turns.values()) == set(range(7))
    load = Counter()
    for g in groups[:14]:
        load[turns[g["group_id"]]] += g["member_count"]
    # largest first into the lightest turn: no turn carries twice another's members
    assert max(load.values()) <= 2 * min(load.values())
    assert turns == rescan_turns(list(reversed(groups)), small=500, every=7)  # order-independent


def test_a_full_run_scans_every_group_sliced():
    plan = checks(mode="full").plan_run([group("a", 50), group("b", 30_000)], [])
    assert not plan.to_check
    keys = {row["key"] for row in plan.new_rows}
    assert "members:list:a:00" in keys and "members:list:b:14" in keys  # 30,000 / 2,000 per slice
    assert plan.to_fetch == plan.new_rows


def test_an_incremental_run_rescans_small_groups_and_checks_large_ones_not_due():
    groups = [group("small", 200), group("big", 5_000, scanned_gen=7), group("bigger", 9_000, scanned_gen=6)]
    turns = rescan_turns(groups, small=500, every=7)
    # a run in which neither large group is due (not its turn, scanned under 7 runs ago)
    gen = next(g for g in range(8, 13) if g % 7 not in (turns["big"], turns["bigger"]))
    plan = checks(gen=gen).plan_run(groups, [])
    assert [r["key"] for r in plan.new_rows] == ["members:list:small:all"]
    assert [g["group_id"] for g in plan.to_check] == ["bigger", "big"]  # stalest first


def test_a_large_group_is_rescanned_in_its_turn_and_when_seven_runs_old():
    groups = [group("big", 5_000, scanned_gen=5)]
    turn = rescan_turns(groups, small=500, every=7)["big"]
    gen = next(g for g in range(6, 12) if g % 7 == turn)
    assert [r["key"] for r in checks(gen=gen).plan_run(groups, []).new_rows] == ["members:list:big:all"]
    other = next(g for g in range(6, 12) if g % 7 != turn)
    assert checks(gen=other).plan_run(groups, []).to_check
    # seven runs since its last scan: rescanned whatever its turn says
    assert checks(gen=other).plan_group(group("big", 5_000, scanned_gen=other - 7)) is not None
    # above unsliced_scan_max the rescan is sliced
    rows = checks(gen=20).plan_group(group("huge", 50_000, scanned_gen=13)) or []
    assert len(rows) == 16 and rows[0]["key"].endswith(":00")


@pytest.mark.parametrize("done", [False, True])
def test_a_resumed_run_goes_on_with_its_streams(done):
    g = group("a", 50)
    row = {"kind": "members", "group_id": "a", "key": "members:list:a:all", "done": done}
    plan = checks().plan_run([g, group("checked", 50, checked_run="r1")], [row])
    assert not plan.new_rows and not plan.to_check
    assert plan.to_fetch == ([] if done else [row])
    assert plan.finished == (["a"] if done else [])
