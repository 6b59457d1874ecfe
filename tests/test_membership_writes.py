"""Membership pages written by :class:`~smartpush_plugin_klaviyo.writer.PageWriter`, on a
real database: a group's first scan (no existence check), a later scan (members marked
seen, the unseen ones leave), a page read twice, and recent joins before a scan."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from hookspecs import get_plugin_manager
from smartpush_devhost.host import DevHost
from smartpush_plugin_klaviyo import mapping
from smartpush_plugin_klaviyo.groups.reconcile import apply_groups
from smartpush_plugin_klaviyo.models import parse_group
from smartpush_plugin_klaviyo.state import group_t, membership_t
from smartpush_plugin_klaviyo.writer import PageWriter, RunCounters

KIDS = [f"01PROFILE{i:017d}" for i in range(1, 6)]


def _profile(kid: str, n: int) -> dict:
    return {"type": "profile", "id": kid, "attributes": {"email": f"member{n}@example.com",
                                                         "updated": "2026-11-01T00:00:00+00:00"}}


@pytest.fixture
def store(db_url, tmp_path):
    host = DevHost(db_url, tmp_path / "home", env={})
    ctx = host.context("s1")
    get_plugin_manager().hook.smartpush_install(integration="klaviyo", host=ctx)
    writer = PageWriter(ctx, "run-1", 1, RunCounters())
    with host.storage.transaction() as tx:
        apply_groups(tx, writer, _groups())
        writer.write_mapped(tx, [mapping.map_profile(_profile(kid, n)) for n, kid in enumerate(KIDS)])
    yield host, ctx
    host.close()


def _groups():
    return [parse_group({"type": "list", "id": gid, "attributes": {"name": name}}, "list")
            for gid, name in (("L1", "VIP"), ("L2", "News"))]


def _run(host, ctx, gen: int, pages: list[tuple[str, list[str], bool]], finalize: tuple[str, ...] = (),
         *, reading_ends: bool = True) -> RunCounters:
    """The writes of one run, in a sync's order: the groups, the member pages, the ends of
    their scans, then (``reading_ends``) the tags of the groups that held no members."""
    counters = RunCounters()
    writer = PageWriter(ctx, f"run-{gen}", gen, counters)
    with host.storage.transaction() as tx:
        apply_groups(tx, writer, _groups())
        for gid, kids, scan in pages:
            writer.write_members(tx, gid, kids, scan=scan)
        for gid in finalize:
            writer.finalize_group_scan(tx, gid)
        if reading_ends:
            writer.apply_deferred_tags(tx)
    return counters


def _deferred(host) -> set[str]:
    with host.storage.transaction(readonly=True) as tx:
        return set(tx.execute(select(group_t.c.group_id).where(group_t.c.tags_deferred == True)).scalars())  # noqa: E712


def _members(host, gid: str) -> dict[str, int]:
    with host.storage.transaction(readonly=True) as tx:
        rows = tx.execute(select(membership_t.c.klaviyo_id, membership_t.c.seen_gen).where(membership_t.c.group_id == gid))
        return dict(rows.all())


def _tagged(host, ctx, tag: str) -> int:
    with host.storage.transaction(readonly=True) as tx:
        return ctx.contacts.tag_counts(tx).get(tag, 0)


def test_a_first_scan_read_twice_adds_each_member_once_and_tags_it(store):
    host, ctx = store
    counters = _run(host, ctx, 2, [("L1", KIDS[:3], True), ("L1", KIDS[1:3], True), ("L1", KIDS[3:4], True)],
                    finalize=("L1",))
    assert _members(host, "L1") == {k: 2 for k in KIDS[:4]}
    assert counters.counts["memberships_added"] == 4
    assert counters.counts["memberships_removed"] == 0
    assert _tagged(host, ctx, "kla_list_vip") == 4


def test_a_later_scan_marks_members_seen_and_the_unseen_ones_leave(store):
    host, ctx = store
    _run(host, ctx, 2, [("L1", KIDS[:3], True)], finalize=("L1",))
    counters = _run(host, ctx, 3, [("L1", [KIDS[0]], True), ("L1", [KIDS[2], KIDS[4]], True)], finalize=("L1",))
    assert _members(host, "L1") == {KIDS[0]: 3, KIDS[2]: 3, KIDS[4]: 3}
    assert counters.counts["memberships_added"] == 1
    assert counters.counts["memberships_removed"] == 1
    assert _tagged(host, ctx, "kla_list_vip") == 3


def test_recent_joins_before_a_scan_in_the_same_run_are_seen_by_it(store):
    host, ctx = store
    _run(host, ctx, 2, [("L2", KIDS[:2], True)], finalize=("L2",))
    # run 3: a join recorded without a scan, then the group's scan, which sees only some
    counters = _run(host, ctx, 3, [("L2", [KIDS[3]], False), ("L2", [KIDS[3], KIDS[0]], True)], finalize=("L2",))
    assert _members(host, "L2") == {KIDS[0]: 3, KIDS[3]: 3}
    assert counters.counts["memberships_removed"] == 1
    assert _tagged(host, ctx, "kla_list_news") == 2


def test_recent_joins_on_a_group_never_scanned_are_kept_until_its_scan(store):
    host, ctx = store
    _run(host, ctx, 2, [("L2", KIDS[:2], False)])
    assert _members(host, "L2") == {KIDS[0]: 0, KIDS[1]: 0}
    # the first complete scan (run 3) sees one of them; the other left before it
    counters = _run(host, ctx, 3, [("L2", [KIDS[1]], True)], finalize=("L2",))
    assert _members(host, "L2") == {KIDS[1]: 3}
    assert counters.counts["memberships_removed"] == 1
    assert _tagged(host, ctx, "kla_list_news") == 1


def test_a_join_recorded_during_a_first_scan_is_still_seen_by_it(store):
    host, ctx = store
    counters = _run(host, ctx, 2, [("L1", [KIDS[0]], True), ("L1", [KIDS[3]], False), ("L1", [KIDS[3]], True)],
                    finalize=("L1",))
    assert _members(host, "L1") == {KIDS[0]: 2, KIDS[3]: 2}
    assert counters.counts["memberships_removed"] == 0


def test_a_group_that_held_no_members_is_tagged_when_the_reading_ends(store):
    host, ctx = store
    _run(host, ctx, 2, [("L1", KIDS[:3], True)], finalize=("L1",), reading_ends=False)
    assert _members(host, "L1") == {k: 2 for k in KIDS[:3]}
    assert _tagged(host, ctx, "kla_list_vip") == 0  # stored untagged, the flag says so
    assert _deferred(host) == {"L1", "L2"}
    # the next run (a resumed or a new one) tags them before it reads anything
    _run(host, ctx, 3, [], reading_ends=False)
    assert _tagged(host, ctx, "kla_list_vip") == 3
    assert _deferred(host) == {"L2"}  # L2 still holds no members


def test_a_group_holding_members_tags_page_by_page(store):
    host, ctx = store
    _run(host, ctx, 2, [("L1", KIDS[:2], True)], finalize=("L1",))
    assert _deferred(host) == set()
    _run(host, ctx, 3, [("L1", KIDS[:4], True)], finalize=("L1",), reading_ends=False)
    assert _tagged(host, ctx, "kla_list_vip") == 4
    assert _deferred(host) == {"L2"}  # L1 held members when run 3 began


def test_a_profile_mapped_after_its_groups_were_tagged_gets_their_tags(store):
    host, ctx = store
    late = "01PROFILE99999999999999999"
    _run(host, ctx, 2, [("L1", [KIDS[0], late], True), ("L2", [late], True)], finalize=("L1", "L2"))
    assert _tagged(host, ctx, "kla_list_vip") == 1  # the late profile is not mapped yet
    writer = PageWriter(ctx, "run-2", 2, RunCounters())
    with host.storage.transaction() as tx:
        writer.write_mapped(tx, [mapping.map_profile(_profile(late, 99))])
        uid = writer._uids_of(tx, [late]).pop()
        assert ctx.contacts.tags_of(tx, [uid])[uid] == {"kla_list_vip", "kla_list_news"}


def test_a_profile_mapped_while_its_group_is_deferred_is_tagged_when_the_reading_ends(store):
    host, ctx = store
    late = "01PROFILE99999999999999999"
    counters = RunCounters()
    writer = PageWriter(ctx, "run-2", 2, counters)
    with host.storage.transaction() as tx:
        apply_groups(tx, writer, _groups())
        writer.write_members(tx, "L1", [late, KIDS[0]])
        writer.write_mapped(tx, [mapping.map_profile(_profile(late, 99))])
        uid = writer._uids_of(tx, [late]).pop()
        assert ctx.contacts.tags_of(tx, [uid])[uid] == set()
        writer.finalize_group_scan(tx, "L1")
        assert writer.apply_deferred_tags(tx) == 2
        assert ctx.contacts.tags_of(tx, [uid])[uid] == {"kla_list_vip"}
