"""Daily runs on accounts shaped like real merchants' (issue #12).

Every test talks HTTP on 127.0.0.1: to ``klaviyo_standin`` with its real (scaled) limits,
or to ``tests/_spec_server.py``, the small independent server written from the spec,
whose quirks refuse cursors on every kind of read, loop ``links.next``, and change consent
without moving ``updated``.
"""

from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import pytest
from klaviyo_standin import ALL_SCOPES, DEFAULT_API_KEY, StandInServer, generate_account
from tests import expectations as exp
from tests._spec_server import Quirks, SpecServer
from tests.harness import CLOCK_SCALE, Harness, make_host
from tests.test_spec_robustness import T0, group, imported_ids, profile, ts

NOW = datetime.now(timezone.utc).replace(microsecond=0)


def _profiles(n: int) -> list[dict]:
    """``n`` profiles created one minute apart (oldest first), updated long ago."""
    return [
        profile(i, T0 + timedelta(hours=i), created=ts(T0 - timedelta(days=60) + timedelta(minutes=i)))
        for i in range(n)
    ]


@contextmanager
def synced(account, db_url: str, tmp_path):
    """The stand-in serving ``account`` (Klaviyo's limits, scaled clock) and a harness on
    a fresh database, installed, authorized and fully synced."""
    with StandInServer(account, api_keys={DEFAULT_API_KEY: ALL_SCOPES}, clock_scale=CLOCK_SCALE) as server:
        host = make_host(db_url, tmp_path, server)
        try:
            h = Harness(host=host, server=server, account=account)
            h.install_and_authorize(DEFAULT_API_KEY)
            assert h.sync("full").outcome == "completed"
            yield h
        finally:
            host.close()


def _by_kid(h: Harness) -> dict[str, dict]:
    return {kid: c for c in h.export() for kid in c["klaviyo_ids"]}


# --------------------------------------------------------------------- cursors
def test_every_kind_of_read_survives_refused_cursors(make_harness):
    """Cursors expire: group listings, the probe, profile windows, memberships, the
    deleted-profile check and the sweep all restart a refused cursor and lose nothing."""
    profiles = _profiles(60)
    groups = [group("list", f"L{i:02d}", f"List {i}", T0 - timedelta(days=90)) for i in range(23)]
    groups += [group("segment", "S1", "Seg", T0 - timedelta(days=90))]
    members = {"L00": [(p["id"], T0 - timedelta(days=50) + timedelta(minutes=i)) for i, p in enumerate(profiles[:30])]}
    quirks = Quirks(max_page=7, empty_first_page=True, refuse_cursor_every=4)
    with SpecServer(profiles, groups, members, quirks) as server:
        h = make_harness(server)
        full = h.sync("full")
        assert full.outcome == "completed", full.message
        assert imported_ids(h) == {p["id"] for p in profiles}
        assert {c["klaviyo_ids"][0] for c in h.export() if "kla_list_list_0" in c["tags"]} == {p["id"] for p in profiles[:30]}
        # a day of changes: deletions (and their memberships), a removal, a join
        with server.lock:
            gone = [server.profiles.pop(5)["id"], server.profiles.pop(20)["id"], server.profiles.pop(40)["id"]]
            server.members["L00"] = [m for m in server.members["L00"] if m[0] not in gone and m[0] != "01P0001"]
            server.members["L00"].append(("01P0050", NOW))
        daily = h.sync("incremental")
        assert daily.outcome == "completed", daily.message
        assert daily.counts["cursor_restarts"] > 0
        assert imported_ids(h) == {p["id"] for p in server.profiles}
        tagged = {c["klaviyo_ids"][0] for c in h.export() if "kla_list_list_0" in c["tags"] and c["klaviyo_ids"]}
        assert tagged == {pid for pid, _ in server.members["L00"]}
        refused = [d for status, d in server.errors if status == 400 and "expired" in d]
        assert len(refused) >= 4


def test_a_links_next_loop_ends_the_run_with_a_clear_error(make_harness):
    with SpecServer(_profiles(30), [], {}, Quirks(max_page=1, loop_next=True)) as server:
        h = make_harness(server)
        report = h.sync("full")
    assert report.outcome == "failed"
    assert "repeated a cursor" in report.message


# --------------------------------------------------------------------- consent
def test_consent_changes_that_do_not_move_updated_arrive(make_harness):
    """A new suppression arrives the next day (the suppression-timestamp filter); a quiet
    re-subscribe arrives with the rolling sweep; a phone that comes later brings its SMS
    status. ``updated`` never moves for the first two."""
    profiles = _profiles(350)
    sms_never = {"sms": {"marketing": {"can_receive_sms_marketing": False, "consent": "NEVER_SUBSCRIBED"}}}
    profiles[3]["attributes"]["subscriptions"] = {
        "email": {"marketing": {"can_receive_email_marketing": True, "consent": "SUBSCRIBED"}}, **sms_never
    }
    profiles[330]["attributes"]["subscriptions"] = {
        "email": {"marketing": {"can_receive_email_marketing": False, "consent": "UNSUBSCRIBED"}}
    }
    with SpecServer(profiles, [], {}) as server:
        h = make_harness(server)
        assert h.sync("full").outcome == "completed"
        before = _by_kid(h)
        assert before["01P0330"]["email_subscription"] == "unsubscribed"
        assert before["01P0003"]["sms_subscription"] is None  # no phone: no SMS status
        with server.lock:
            # the newest profile (the sweep reaches it last) bounces hard: updated stays
            marketing = profiles[340]["attributes"]["subscriptions"]["email"]["marketing"]
            marketing.update(can_receive_email_marketing=False,
                             suppression=[{"reason": "HARD_BOUNCE", "timestamp": ts(NOW)}])
            # a quiet re-subscribe, late in the sweep's order
            profiles[330]["attributes"]["subscriptions"]["email"]["marketing"] = {
                "can_receive_email_marketing": True, "consent": "SUBSCRIBED", "consent_timestamp": ts(NOW)}
            # a phone number arrives (this one moves updated)
            profiles[3]["attributes"].update(phone_number="+14155550123", updated=ts(NOW))
        first = h.sync("incremental")
        assert first.outcome == "completed", first.message
        after = _by_kid(h)
        assert after["01P0340"]["properties"]["kla_email_suppressions"][0]["reason"] == "HARD_BOUNCE"
        assert after["01P0340"]["properties"]["kla_email_can_receive_marketing"] is False
        assert after["01P0003"]["sms_subscription"] == "never_subscribed"
        assert first.counts["profiles_swept"] <= 200  # the sweep read only its share
        assert _by_kid(h)["01P0330"]["email_subscription"] == "unsubscribed"  # not swept yet
        runs = 1
        while _by_kid(h)["01P0330"]["email_subscription"] != "subscribed":
            assert h.sync("incremental").outcome == "completed"
            runs += 1
            assert runs <= 7
        assert _by_kid(h)["01P0330"]["properties"]["kla_email_consent"] == "SUBSCRIBED"


# --------------------------------------------------------------------- deletions
def test_deleted_and_merged_profiles_leave_within_seven_daily_runs(db_url, tmp_path):
    account = generate_account(profiles=2000, seed=12)
    with synced(account, db_url, tmp_path) as h:
        ids = account.profile_ids()
        deleted = [ids[i] for i in range(50, 2000, 290)]  # spread over the created order
        merged = [(ids[i], ids[i + 1]) for i in (100, 900, 1700)]
        for pid in deleted:
            account.delete_profile(pid)
        for keep, gone in merged:
            account.merge_profiles(keep, gone)
        gone_ids = set(deleted) | {g for _, g in merged}
        uid_of = {kid: c["uid"] for c in h.export() for kid in c["klaviyo_ids"]}
        left_at: dict[str, int] = {}
        swept = checked = 0
        for run in range(1, 8):
            report = h.sync("incremental")
            assert report.outcome == "completed", report.message
            swept += report.counts["profiles_swept"]
            checked += report.counts.get("profiles_checked_by_id", 0)
            mapped = imported_ids(h)
            for kid in gone_ids - set(left_at):
                if kid not in mapped:
                    left_at[kid] = run
        assert set(left_at) == gone_ids, "every deleted or merged profile leaves within 7 daily runs"
        # the contacts are kept, without Klaviyo tags
        by_uid = {c["uid"]: c for c in h.export()}
        for kid in deleted:
            assert not [t for t in by_uid[uid_of[kid]]["tags"] if t.startswith("kla_")]
        # bounded cost: one sweep of the account over the 7 runs, plus a page per run
        assert swept <= 2000 + 7 * 100
        # only the profiles missing from the range a run swept are looked up by id
        assert checked <= len(gone_ids) + 30
        # nobody else lost their mapping
        assert imported_ids(h) == set(uid_of) - gone_ids


# --------------------------------------------------------------------- many groups
@pytest.fixture(scope="module")
def many_groups_account():
    return generate_account(profiles=1500, seed=5, groups=160)


@pytest.mark.slow
def test_hundreds_of_groups_daily_runs_stay_within_limits(db_url, tmp_path, many_groups_account):
    """160 groups under Klaviyo's real (scaled) limits: no 429, at most the run's count
    budget of profile_count requests, joins found the next day and removals within the
    7 runs every group is rescanned in."""
    account = many_groups_account
    with synced(account, db_url, tmp_path) as h:
        server = h.server
        groups = account.lists() + account.segments()
        sized = sorted(groups, key=lambda g: account.member_count(g["id"]))
        big = [g for g in sized if account.member_count(g["id"]) > 500][-3:]
        ids = account.profile_ids()
        joins, leaves = [], []
        for g in big:
            members = [pid for pid, _ in account.iter_members(g["id"])]
            outsider = next(pid for pid in ids if pid not in set(members))
            account.add_member(g["id"], outsider)
            account.remove_member(g["id"], members[7])
            joins.append((g["id"], outsider))
            leaves.append((g["id"], members[7]))
        tags = exp.expected_group_tags(account)
        for run in range(1, 8):
            server.reset_stats()
            report = h.sync("incremental")
            assert report.outcome == "completed", report.message
            stats = server.stats
            # the bound; a scaled clock (a 50 ms burst window for profile_count's
            # 1/s) leaves the machine's timing jitter a few milliseconds of slack
            assert stats.get("429", 0) <= 0.01 * stats["total"]
            # the run's count budget (and a few verifications); a count refused with a 429
            # (bounded above) is the same count asked again, so the server's answered ones
            # are what the plan spent
            counts = sum(1 for _, name, status in server.request_log
                         if "{id}" in name and "relationships" not in name and status != 429)
            assert counts <= 10 + 3
            by_kid = _by_kid(h)
            if run == 1:
                for gid, pid in joins:
                    assert tags[gid] in by_kid[pid]["tags"], "a join is found the next day"
        # every removal found within the 7 runs: each contact carries exactly the tags of
        # the groups its Klaviyo profiles are in (a contact may hold two profiles)
        expected = exp.expected_profile_tags(account)
        for c in h.export():
            want = set().union(*(expected.get(kid, set()) for kid in c["klaviyo_ids"]))
            assert set(c["tags"]) == want, c["klaviyo_ids"]
        assert leaves and all(pid not in {m for m, _ in account.iter_members(gid)} for gid, pid in leaves)
        status = h.status()
        assert status.last_run["mode"] == "incremental"


# --------------------------------------------------------------------- status
def test_status_shows_what_the_daily_run_is_doing_and_its_last_figures(db_url, tmp_path):
    import threading
    import time

    account = generate_account(profiles=600, seed=3, groups=40)
    with synced(account, db_url, tmp_path) as h:
        server = h.server
        server.latency = 0.15  # long enough to watch
        done: list = []
        runner = threading.Thread(target=lambda: done.append(h.sync("incremental")))
        runner.start()
        seen = set()
        while runner.is_alive():
            progress = h.status().progress
            if progress is not None:
                seen.add(progress.message.split(":")[0])
                if progress.unit == "groups":
                    assert progress.total == len(account.lists()) + len(account.segments())
                    assert 0 <= progress.done <= progress.total
            time.sleep(0.05)
        runner.join()
        assert done[0].outcome == "completed"
        assert "checking groups" in seen
        status = h.status()
        assert status.progress is None
        last = status.last_run
        assert last["mode"] == "incremental" and last["outcome"] == "completed"
        assert last["requests"] == sum(v for k, v in done[0].requests.items() if k.startswith("GET "))
        assert last["duration_s"] > 0 and last["429"] == done[0].requests.get("429", 0)


# --------------------------------------------------------------------- revisions
def test_a_retired_revision_pauses_with_a_reason_that_names_it(db_url, tmp_path):
    account = generate_account(profiles=200, seed=4)
    with StandInServer(account, api_keys={DEFAULT_API_KEY: ALL_SCOPES}, clock_scale=CLOCK_SCALE) as server:
        host = make_host(db_url, tmp_path, server)
        try:
            h = Harness(host=host, server=server, account=account)
            h.install_and_authorize(DEFAULT_API_KEY)
            host.settings["KLAVIYO_API_REVISION"] = "2024-02-15"  # retired: 410 Gone
            report = h.sync("full")
            assert report.outcome == "paused"
            status = h.status()
            assert status.state.value == "sync_paused"
            assert status.pause_reason.value == "api_revision_unsupported"
            assert "2024-02-15" in status.pause_detail and "KLAVIYO_API_REVISION" in status.pause_detail
            host.settings["KLAVIYO_API_REVISION"] = "2026-07-15"
            assert h.sync("full").outcome == "completed"
            assert h.status().state.value == "syncing"
        finally:
            host.close()


# --------------------------------------------------------------------- exact values
def test_exact_numbers_decode():
    from smartpush_plugin_klaviyo.jsondecode import loads

    body = loads(b'{"a": 18446744073709552653, "b": 0.1234567890123456789012, "c": 12.5, "d": NaN, "e": 1e400}')
    assert body == {"a": 18446744073709552653, "b": "0.1234567890123456789012", "c": 12.5, "d": "NaN", "e": "1e400"}
    assert loads(b'{"a": 1, "b": 0.1}') == {"a": 1, "b": 0.1}  # the fast path


def test_a_custom_property_beyond_64_bits_keeps_its_exact_value(make_harness):
    profiles = _profiles(3)
    profiles[1]["attributes"]["properties"] = {"big": 18446744073709552653, "neg": -(2**70) - 1, "small": 7}
    with SpecServer(profiles, [], {}) as server:
        h = make_harness(server)
        assert h.sync("full").outcome == "completed"
        props = _by_kid(h)["01P0001"]["properties"]
    assert props["kla_big"] == 18446744073709552653 and isinstance(props["kla_big"], int)
    assert props["kla_neg"] == -(2**70) - 1 and props["kla_small"] == 7


def test_a_segment_name_of_any_length_becomes_its_tag(make_harness):
    """``kla_segment_`` + a 275-character name is 287 characters: no column may cut it
    (this failed every full sync on PostgreSQL, where the tag was varchar(255))."""
    profiles = _profiles(5)
    name = "Customers who opened " + "and clicked " * 21 + "x" * 2
    assert len(name) == 275
    groups = [group("segment", "S1", name, T0 - timedelta(days=9))]
    members = {"S1": [(p["id"], T0 - timedelta(days=8)) for p in profiles]}
    with SpecServer(profiles, groups, members) as server:
        h = make_harness(server)
        report = h.sync("full")
        assert report.outcome == "completed", report.message
        tags = {t for c in h.export() for t in c["tags"]}
    expected = "kla_segment_" + name.lower().replace(" ", "_")
    assert len(expected) == 287 and tags == {expected}


# --------------------------------------------------------------------- broken answers
def test_a_page_without_data_is_an_error_never_an_empty_page(make_harness):
    profiles = _profiles(40)
    with SpecServer(profiles, [], {}, Quirks(max_page=10)) as server:
        h = make_harness(server)
        server.quirks.pages_without_data = 1  # one broken answer: retried, nothing lost
        report = h.sync("full")
        assert report.outcome == "completed", report.message
        assert imported_ids(h) == {p["id"] for p in profiles}


def test_pages_that_keep_coming_without_data_fail_the_run_and_say_why(make_harness):
    with SpecServer(_profiles(40), [], {}, Quirks(max_page=10)) as server:
        h = make_harness(server)
        server.quirks.pages_without_data = 1000
        report = h.sync("full")
    assert report.outcome == "failed"
    assert "data" in report.message
    assert h.status().last_successful_sync_at is None


# --------------------------------------------------------------------- merges
def test_klaviyo_merges_never_leave_two_contacts_with_one_address(db_url, tmp_path):
    """#16: the merge target takes the merged profile's email or phone while the merged
    profile's contact still holds it; neither a full nor a daily run may copy it over."""
    account = generate_account(profiles=1500, seed=21)
    with synced(account, db_url, tmp_path) as h:
        ids = account.profile_ids()
        pairs = [(ids[i], ids[i + 1]) for i in range(20, 1400, 14)][:100]
        for keep, gone in pairs:
            account.merge_profiles(keep, gone)

        def shared(contacts: list[dict]) -> list:
            seen: dict = {}
            for c in contacts:
                for key in ((c["email"] or "").strip().lower() or None, c["phone"]):
                    if key:
                        seen.setdefault(key, []).append(c["uid"])
            return [k for k, uids in seen.items() if len(uids) > 1]

        assert shared(h.export()) == []
        assert h.sync("incremental").outcome == "completed"
        assert shared(h.export()) == []
        assert h.sync("full").outcome == "completed"
        contacts = h.export()
        assert shared(contacts) == []
        mapped = {k for c in contacts for k in c["klaviyo_ids"]}
        assert not mapped & {gone for _, gone in pairs}
