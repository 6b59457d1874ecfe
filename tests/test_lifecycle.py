"""Sync lifecycle through the plugin's hooks: incremental changes, status, recovery, cancel."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from klaviyo_standin import ALL_SCOPES, DEFAULT_API_KEY, StandInServer, generate_account

from tests import expectations as exp
from tests.harness import CLOCK_SCALE, Harness, hold_member_pages, make_host

OTHER_KEY = "pk_" + "b" * 34
NO_SEGMENTS_KEY = "pk_" + "c" * 34


@pytest.fixture
def account():
    return generate_account(profiles=400, seed=21)


@pytest.fixture
def server(account):
    keys = {
        DEFAULT_API_KEY: ALL_SCOPES,
        OTHER_KEY: ALL_SCOPES,
        NO_SEGMENTS_KEY: [s for s in ALL_SCOPES if s != "segments:read"],
    }
    with StandInServer(account, api_keys=keys, clock_scale=CLOCK_SCALE) as srv:
        yield srv


@pytest.fixture
def h(db_url, tmp_path, server, account):
    host = make_host(db_url, tmp_path, server)
    yield Harness(host=host, server=server, account=account)
    host.close()


def tags_by_kid(contacts) -> dict[str, set[str]]:
    out = {}
    for c in contacts:
        for kid in c["klaviyo_ids"]:
            out[kid] = set(c["tags"])
    return out


def assert_tags_exact(h: Harness) -> list[dict]:
    contacts = h.export()
    expected = exp.expected_profile_tags(h.account)
    for c in contacts:
        want = set()
        for kid in c["klaviyo_ids"]:
            want |= expected.get(kid, set())
        assert set(c["tags"]) == want, f"contact with {c['klaviyo_ids']}"
    return contacts


def test_pending_until_authorized_then_syncing(h):
    h.call("install")
    assert h.status().state.value == "pending_integration"
    h.install_and_authorize(DEFAULT_API_KEY)
    status = h.status()
    assert status.state.value == "syncing"
    assert status.next_sync_at is not None


def test_authorize_refuses_a_bad_key_and_names_a_missing_scope(h):
    h.call("install")
    bad = h.call("authorize", credentials="pk_" + "0" * 34)
    assert not bad.ok and "401" in bad.message
    partial = h.call("authorize", credentials=NO_SEGMENTS_KEY)
    assert not partial.ok and partial.missing_scopes == ["segments:read"]
    assert NO_SEGMENTS_KEY not in partial.message
    assert h.status().state.value == "pending_integration"


def test_incremental_sync_follows_every_kind_of_change(h, account):
    h.install_and_authorize(DEFAULT_API_KEY)
    assert h.sync("full").outcome == "completed"
    before = assert_tags_exact(h)
    # Profiles that are a contact of their own (not merged with a duplicate), so each
    # change below has exactly one expected effect.
    single = [c["klaviyo_ids"][0] for c in before if len(c["klaviyo_ids"]) == 1]
    ids = account.profile_ids()
    lists = account.lists()
    segments = account.segments()
    big = max(lists, key=lambda g: account.member_count(g["id"]))
    big_tag = exp.expected_group_tags(account)[big["id"]]
    member_set = {pid for pid, _ in account.iter_members(big["id"])}
    members = [pid for pid in single if pid in member_set]
    renamed = next(pid for pid in single if pid not in members[:4])
    # updates, joins, leaves, deletes, merges, renames, new and deleted groups
    account.update_profile(renamed, {"first_name": "Renamed", "last_name": "Person", "properties": {"tier": "gold"}})
    new_id = account.create_profile({"email": "brand.new@example.com", "first_name": "Nova"})
    account.add_member(big["id"], new_id)
    account.remove_member(big["id"], members[0])
    outsider = next(pid for pid in single if pid not in member_set and pid != renamed)
    account.add_member(big["id"], outsider)
    account.delete_profile(members[1])
    account.merge_profiles(members[2], members[3])
    account.rename_group(segments[0]["id"], "Renamed  Segment ")
    account.delete_group(lists[-1]["id"])
    fresh = account.create_group("list", "Fresh List")
    account.add_member(fresh, ids[5])

    report = h.sync("incremental")
    assert report.outcome == "completed", report.message
    assert report.mode == "incremental"
    contacts = assert_tags_exact(h)
    by_kid = {kid: c for c in contacts for kid in c["klaviyo_ids"]}
    assert by_kid[renamed]["name"] == "Renamed Person"  # the plugin filled the name, so it follows Klaviyo
    assert by_kid[renamed]["properties"]["kla_tier"] == "gold"
    assert by_kid[new_id]["email"] == "brand.new@example.com"
    assert big_tag in by_kid[new_id]["tags"] and big_tag in by_kid[outsider]["tags"]
    assert big_tag not in by_kid[members[0]]["tags"]  # left the list
    assert "kla_segment_renamed_segment" in {t for c in contacts for t in c["tags"]}
    assert big_tag in by_kid[members[2]]["tags"]
    # Deleted and merged-away profiles: the daily runs' rolling sweep finds them gone within
    # 7 runs: their contacts are kept, without their Klaviyo id and without Klaviyo tags.
    uid_before = {kid: c["uid"] for c in before for kid in c["klaviyo_ids"]}
    deleted = report.counts.get("profiles_deleted_in_klaviyo", 0)
    for _run in range(6):
        if deleted >= 2:
            break
        later = h.sync("incremental")
        assert later.outcome == "completed", later.message
        deleted += later.counts.get("profiles_deleted_in_klaviyo", 0)
    assert deleted == 2
    contacts = assert_tags_exact(h)
    by_kid = {kid: c for c in contacts for kid in c["klaviyo_ids"]}
    by_uid = {c["uid"]: c for c in contacts}
    for gone in (members[1], members[3]):
        assert gone not in by_kid
        kept = by_uid[uid_before[gone]]
        assert kept["klaviyo_ids"] == [] and not [t for t in kept["tags"] if t.startswith("kla_")]


def test_incremental_costs_a_fraction_of_a_full_sync(h, account):
    h.install_and_authorize(DEFAULT_API_KEY)
    full = h.sync("full")
    full_profile_requests = full.requests["GET /api/profiles"]
    for pid in account.profile_ids()[:4]:  # 1% of 400
        account.update_profile(pid, {"title": "Changed"})
    inc = h.sync("incremental")
    assert inc.outcome == "completed"
    assert inc.counts["profiles_seen"] - inc.counts["profiles_swept"] < 20
    # the rolling sweep reads its share of the account (1/7, a page at least) up to a whole second
    assert 100 <= inc.counts["profiles_swept"] <= 300
    # one page of changes, one probe, one page per suppression filter, the sweep's pages
    assert inc.requests["GET /api/profiles"] <= 2 + 2 + 3
    assert full_profile_requests >= 5


def test_revoked_key_pauses_and_a_new_key_resumes(h, server):
    h.install_and_authorize(DEFAULT_API_KEY)
    assert h.sync("full").outcome == "completed"
    server.api_keys.pop(DEFAULT_API_KEY)
    report = h.sync("incremental")
    assert report.outcome == "paused"
    status = h.status()
    assert status.state.value == "sync_paused" and status.pause_reason.value == "key_invalid"
    assert DEFAULT_API_KEY not in status.model_dump_json()
    # paused for the key: further syncs do not hammer Klaviyo
    before = dict(server.stats)
    assert h.sync("incremental").outcome == "paused"
    assert dict(server.stats) == before
    h.install_and_authorize(OTHER_KEY)
    assert h.status().state.value == "syncing"
    assert h.sync("incremental").outcome == "completed"


def test_plan_downgrade_pauses_without_fetching_and_upgrade_resumes(h, server):
    h.install_and_authorize(DEFAULT_API_KEY)
    h.host.plan(h.store).set("free")
    before = dict(server.stats)
    report = h.sync("full")
    assert report.outcome == "paused"
    assert dict(server.stats) == before, "a downgraded store must not fetch anything"
    status = h.status()
    assert status.pause_reason.value == "plan_downgraded"
    h.host.plan(h.store).set("pro")
    assert h.sync("incremental").outcome == "completed"
    assert h.status().state.value == "syncing"


def test_plan_changed_hook_pauses_and_resumes_at_once(h, server):
    """``smartpush plan set`` calls smartpush_plan_changed: no waiting for the next day's run."""
    h.install_and_authorize(DEFAULT_API_KEY)
    assert h.sync("full").outcome == "completed"
    before = dict(server.stats)
    (status,) = h.host.set_plan(h.pm, h.store, "free")
    assert status.state.value == "sync_paused" and status.pause_reason.value == "plan_downgraded"
    assert h.status().state.value == "sync_paused"
    assert dict(server.stats) == before, "a plan change must not call Klaviyo"
    h.host.context(h.store).scheduler.schedule("klaviyo", every=timedelta(days=1), first_run=datetime.now(timezone.utc) + timedelta(hours=20))
    (status,) = h.host.set_plan(h.pm, h.store, "pro")
    assert status.state.value == "syncing" and status.pause_reason is None
    assert status.next_sync_at is not None
    assert status.next_sync_at <= datetime.now(timezone.utc) + timedelta(seconds=5), "an upgrade schedules a sync now"
    # an upgrade never lifts a pause that has another cause
    server.api_keys.pop(DEFAULT_API_KEY)
    assert h.sync("incremental").outcome == "paused"
    (status,) = h.host.set_plan(h.pm, h.store, "pro")
    assert status.pause_reason.value == "key_invalid"
    # hooks of other integrations answer None
    assert h.pm.hook.smartpush_plan_changed(integration="other", host=h.ctx, plan="pro") is None


def test_cancel_integration_stops_a_running_sync_and_keeps_contacts(db_url, tmp_path):
    account = generate_account(profiles=3000, seed=4)
    with StandInServer(account, api_keys={DEFAULT_API_KEY: ALL_SCOPES}, latency=0.1, clock_scale=CLOCK_SCALE) as server:
        host = make_host(db_url, tmp_path, server)
        h = Harness(host=host, server=server, account=account)
        h.install_and_authorize(DEFAULT_API_KEY)
        # Hold the run open until it is cancelled: every membership page takes 2 s, so the run
        # cannot complete in the moment between its first contact and the uninstall.
        hold_member_pages(server)
        result = {}
        worker = threading.Thread(target=lambda: result.update(report=Harness(host=host, server=server, account=account).sync("full")))
        worker.start()
        deadline = time.monotonic() + 30
        while _count(h) == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        status = h.call("uninstall")
        cancelled_at = time.monotonic()
        worker.join(timeout=30)
        assert not worker.is_alive()
        assert time.monotonic() - cancelled_at < 10, "cancel must stop the running sync promptly"
        assert result["report"].outcome == "cancelled"
        assert status.state.value == "pending_integration"
        assert h.ctx.secrets.get("klaviyo_private_api_key") is None
        assert h.ctx.scheduler.next_run("klaviyo") is None
        kept = _count(h)
        assert kept > 0
        server.clear_faults()
        assert h.sync("full").outcome == "not_installed"
        # Reinstalling later works and creates no duplicates.
        h.install_and_authorize(DEFAULT_API_KEY)
        assert h.sync("full").outcome == "completed"
        contacts = h.export()
        kids = [k for c in contacts for k in c["klaviyo_ids"]]
        assert len(kids) == len(set(kids))
        host.close()


def _count(h: Harness) -> int:
    with h.host.storage.transaction() as tx:
        return h.ctx.contacts.count(tx)


def test_invalid_cursor_restarts_the_stream_from_its_watermark(db_url, tmp_path):
    """Interrupt a run, make Klaviyo refuse every saved cursor, resume: nothing lost or doubled."""
    from sqlalchemy import update

    from smartpush_plugin_klaviyo import service
    from smartpush_plugin_klaviyo.state import stream_t
    from smartpush_plugin_klaviyo.sync import SyncOptions

    account = generate_account(profiles=4000, seed=8)
    with StandInServer(account, api_keys={DEFAULT_API_KEY: ALL_SCOPES}, latency=0.06, clock_scale=CLOCK_SCALE) as server:
        host = make_host(db_url, tmp_path, server)
        h = Harness(host=host, server=server, account=account)
        h.install_and_authorize(DEFAULT_API_KEY)
        stop = threading.Event()
        result = {}
        worker = threading.Thread(
            target=lambda: result.update(report=service.sync(h.ctx, "full", SyncOptions(stop_event=stop, workers=2, profile_windows=1)))
        )
        worker.start()
        while _count(h) < 300:
            time.sleep(0.02)
        stop.set()
        worker.join(timeout=30)
        assert result["report"].outcome == "stopped"
        assert h.status().extra["resumable_run"]
        with host.storage.transaction() as tx:
            refused = tx.execute(
                update(stream_t).where(stream_t.c.next_url.is_not(None)).values(next_url=stream_t.c.next_url + "garbage")
            ).rowcount
        assert refused > 0
        report = h.sync("full")
        assert report.outcome == "completed", report.message
        assert report.resumed
        contacts = assert_tags_exact(h)
        kids = [k for c in contacts for k in c["klaviyo_ids"]]
        assert len(kids) == len(set(kids))
        imported = {p["id"] for p in account.iter_profiles() if exp.valid_email(p["attributes"].get("email"))}
        assert imported <= set(kids)
        host.close()


def test_two_workers_never_sync_the_same_store_at_once(h):
    from smartpush_plugin_klaviyo import lease

    h.install_and_authorize(DEFAULT_API_KEY)
    assert lease.acquire(h.host.storage, h.store, "other-worker")
    assert h.sync("full").outcome == "already_running"
    lease.release(h.host.storage, h.store, "other-worker")
    assert h.sync("full").outcome == "completed"


def test_stores_are_isolated(h, db_url, tmp_path, server):
    h.install_and_authorize(DEFAULT_API_KEY)
    assert h.sync("full").outcome == "completed"
    other = Harness(host=h.host, server=server, account=h.account, store="other-shop")
    assert other.status().state.value == "pending_integration"
    assert other.export() == []
    assert other.sync("full").outcome == "not_installed"


def test_a_removed_scope_pauses_and_names_the_scope(h, server):
    h.install_and_authorize(DEFAULT_API_KEY)
    server.api_keys[DEFAULT_API_KEY] = frozenset(s for s in ALL_SCOPES if s != "segments:read")
    report = h.sync("full")
    assert report.outcome == "paused"
    status = h.status()
    assert status.state.value == "sync_paused"
    assert status.pause_reason.value == "missing_scope"
    assert "segments:read" in status.pause_detail


def test_repeated_errors_pause_with_a_reason_instead_of_hanging(db_url, tmp_path, server, account):
    host = make_host(db_url, tmp_path, server, KLAVIYO_MAX_RETRIES="1")
    h = Harness(host=host, server=server, account=account)
    h.install_and_authorize(DEFAULT_API_KEY)
    server.inject(None, 503, count=10_000)
    outcomes = [h.sync("incremental").outcome for _ in range(3)]
    assert outcomes == ["failed", "failed", "paused"]
    status = h.status()
    assert status.pause_reason.value == "sync_error"
    assert "3 consecutive" in status.pause_detail
    server.clear_faults()
    # A later run (scheduled daily, or manual) that succeeds resumes syncing.
    assert h.sync("incremental").outcome == "completed"
    assert h.status().state.value == "syncing"
    host.close()


def test_same_phone_different_email_keeps_both_emails(h, account):
    """Merging on a shared phone would lose an email: both stay, the phone is on one contact only."""
    first = account.create_profile({"email": "first.person@example.com", "phone_number": "+14155550123"})
    second = account.create_profile({"email": "second.person@example.com", "phone_number": "+14155550123"})
    h.install_and_authorize(DEFAULT_API_KEY)
    for mode in ("full", "full", "incremental"):  # stable from sync to sync
        report = h.sync(mode)
        assert report.outcome == "completed"
        contacts = {k: c for c in h.export() for k in c["klaviyo_ids"]}
        a, b = contacts[first], contacts[second]
        assert a["uid"] != b["uid"]
        assert {a["email"], b["email"]} == {"first.person@example.com", "second.person@example.com"}
        assert [c["phone"] for c in (a, b)].count("+14155550123") == 1
        assert a["properties"]["kla_phone_number"] == b["properties"]["kla_phone_number"] == "+14155550123"


def test_a_275_character_segment_name_becomes_a_whole_tag(h, account):
    """Klaviyo promises no length for group names; the tag keeps the whole name on every database."""
    long_name = "Long " + "x" * 270
    seg = account.create_group("segment", long_name)
    member = account.profile_ids()[7]
    account.add_member(seg, member)
    h.install_and_authorize(DEFAULT_API_KEY)
    report = h.sync("full")
    assert report.outcome == "completed", report.message
    tag = "kla_segment_long_" + "x" * 270
    assert len(tag) > 255
    contacts = assert_tags_exact(h)
    tagged = [c for c in contacts if tag in c["tags"]]
    assert [kid for c in tagged for kid in c["klaviyo_ids"] if kid == member] == [member]


def _shared_with_klaviyo_once(account, contacts) -> dict[str, list[str]]:
    """Emails/phones Klaviyo holds on one profile that two or more contacts hold."""
    from collections import Counter

    held = Counter()
    for p in account.iter_profiles():
        a = p["attributes"]
        if a.get("email"):
            held["e:" + a["email"].strip().lower()] += 1
        if a.get("phone_number"):
            held["p:" + a["phone_number"]] += 1
    owners: dict[str, list[str]] = {}
    for c in contacts:
        for key in (("e:" + c["email"].strip().lower()) if c.get("email") else None,
                    ("p:" + c["phone"]) if c.get("phone") else None):
            if key:
                owners.setdefault(key, []).append(c["uid"] if "uid" in c else str(c["klaviyo_ids"]))
    return {k: v for k, v in owners.items() if len(v) > 1 and held.get(k) == 1}


@pytest.mark.parametrize("second", ["full", "incremental"])
def test_klaviyo_merges_never_leave_two_contacts_with_one_email_or_phone(h, account, second):
    h.install_and_authorize(DEFAULT_API_KEY)
    assert h.sync("full").outcome == "completed"
    ids = account.profile_ids()
    attrs = {p["id"]: p["attributes"] for p in account.iter_profiles()}
    # Keepers without an email or phone take the merged-away profile's (Klaviyo fills blanks).
    bare = [pid for pid in ids if not attrs[pid].get("email") or not attrs[pid].get("phone_number")]
    rest = [pid for pid in ids if pid not in bare]
    keeps = (bare + rest)[:100]
    gones = [pid for pid in reversed(ids) if pid not in keeps][:100]
    for keep, gone in zip(keeps, gones, strict=True):
        account.merge_profiles(keep, gone)
    report = h.sync(second)
    assert report.outcome == "completed", report.message
    assert _shared_with_klaviyo_once(account, h.export()) == {}
    report = h.sync("incremental")
    assert report.outcome == "completed", report.message
    assert _shared_with_klaviyo_once(account, h.export()) == {}


def test_a_mapped_contact_deleted_from_the_host_comes_back_once_with_its_klaviyo_ids(h):
    """The platform may delete a contact the sync made. The next sync that reads its
    profiles makes it again, once, and maps them to it; before #15 the mapping kept the
    deleted uid, so every run made one more contact with that email and no Klaviyo id."""
    from sqlalchemy import delete

    from smartpush_devhost.models import contacts_t, tags_t

    h.install_and_authorize(DEFAULT_API_KEY)
    assert h.sync("full").outcome == "completed"
    before = h.export()
    shared = next(c for c in before if len(c["klaviyo_ids"]) > 1 and c["email"])  # two profiles, one email
    single = next(c for c in before if len(c["klaviyo_ids"]) == 1 and c["email"] and c["tags"])
    with h.host.storage.transaction() as tx:
        for table in (tags_t, contacts_t):
            tx.execute(delete(table).where(table.c.uid.in_([shared["uid"], single["uid"]]) if table is contacts_t
                                           else table.c.contact_uid.in_([shared["uid"], single["uid"]])))
    for mode in ("full", "full", "incremental"):
        assert h.sync(mode).outcome == "completed"
        contacts = assert_tags_exact(h)
        assert len(contacts) == len(before)
        assert not [c["uid"] for c in contacts if not c["klaviyo_ids"]], "a contact without its Klaviyo ids"
        for gone in (shared, single):
            holders = [c for c in contacts if (c["email"] or "").lower() == gone["email"].lower()]
            assert len(holders) == 1, f"{len(holders)} contacts hold the deleted contact's email"
            assert holders[0]["klaviyo_ids"] == gone["klaviyo_ids"]
            assert holders[0]["tags"] == gone["tags"]


def test_a_stop_while_the_groups_are_read_reports_stopped_not_cancelled(h):
    """A stop that lands while the run's own thread is waiting on Klaviyo (reading the
    lists) is a stop: the scheduler gives the job back at once; "cancelled" would push a
    first import back by a day."""
    from smartpush_plugin_klaviyo import service
    from smartpush_plugin_klaviyo.sync import SyncOptions

    h.install_and_authorize(DEFAULT_API_KEY)
    h.server.reset_stats()
    h.server.inject("/api/lists", kind="slow", delay=1.0)
    stop = threading.Event()
    result = {}
    worker = threading.Thread(target=lambda: result.update(report=service.sync(h.ctx, "full", SyncOptions(stop_event=stop))))
    worker.start()
    deadline = time.monotonic() + 10
    while h.server.stats.get("GET /api/profiles", 0) < 2:  # both probes answered: the lists are being read
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.2)
    stop.set()
    worker.join(timeout=30)
    assert h.server.stats.get("GET /api/lists", 0) <= 1
    assert result["report"].outcome == "stopped", result["report"].message
    assert h.status().extra["resumable_run"]
    report = h.sync("full")
    assert report.outcome == "completed" and report.resumed, report.message
