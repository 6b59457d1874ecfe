"""What the spec allows but our stand-in never does.

Each test talks HTTP on 127.0.0.1 to a server that is *not* ``klaviyo_standin``: either
``tests/_spec_server.py`` (a small, independent Klaviyo written from the OpenAPI spec,
with switchable quirks) or ``tests/_scripted_server.py`` (scripted responses). Every
test here failed before the fix it guards; the spec evidence is named in each docstring
(paths into ``stable.json``).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from smartpush_plugin_klaviyo.client import KlaviyoClient
from smartpush_plugin_klaviyo.errors import InvalidKeyError, MissingScopeError
from smartpush_plugin_klaviyo.ratelimit import RateBudgets
from tests._scripted_server import ScriptedServer
from tests._spec_server import KEY, Quirks, SpecServer
from tests.harness import Harness

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


def ts(dt: datetime, form: str = "+00:00") -> str:
    """``dt`` in one of the RFC 3339 forms a server may use."""
    base = dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    if form == "+00:00":
        return base + "+00:00"
    if form == "Z":
        return base + "Z"
    if form == "lower":  # RFC 3339 §5.6 note: "T" and "Z" may be lower case
        return base.replace("T", "t") + ".5z"
    if form == "7digits":
        return base + ".1234567Z"
    raise ValueError(form)


def profile(i: int, updated: datetime, form: str = "+00:00", **attrs) -> dict:
    a = {
        "email": f"person{i}@example.com",
        "first_name": f"P{i}",
        "created": ts(T0 - timedelta(days=30), form),
        "updated": ts(updated, form),
        "subscriptions": {"email": {"marketing": {"can_receive_email_marketing": True, "consent": "SUBSCRIBED"}}},
    }
    a.update(attrs)
    return {"type": "profile", "id": f"01P{i:04d}", "attributes": a}


def group(kind: str, gid: str, name: str, created: datetime, form: str = "+00:00") -> dict:
    g = {"kind": kind, "id": gid, "name": name, "created": ts(created, form), "updated": ts(created, form)}
    if kind == "segment":
        g["is_active"] = True
    return g


def imported_ids(h: Harness) -> set[str]:
    return {kid for c in h.export() for kid in c["klaviyo_ids"]}


# ----------------------------------------------------------- profile windows
def test_full_sync_loses_no_profile_on_a_window_boundary(make_harness):
    """``GET /api/profiles`` filters ``updated`` with ``greater-than``/``less-than`` only
    (paths./api/profiles.get.parameters[filter].description): both strict. A full run
    cuts the range into 12 windows; 13 profiles one minute apart put a profile exactly
    on every cut, which neither neighbouring window may return."""
    profiles = [profile(i, T0 + timedelta(minutes=i)) for i in range(13)]
    with SpecServer(profiles) as server:
        h = make_harness(server)
        report = h.sync("full")
        assert report.outcome == "completed", report.message
        assert imported_ids(h) == {p["id"] for p in profiles}


def test_alive_profiles_beyond_the_first_page_are_not_unmapped(make_harness):
    """A full run looks up the mapped profiles its ``updated`` windows did not return
    (deleted, or not indexed yet) with ``filter=any(id,[...])``, and unmaps those not
    found. ``page[size]`` is only a maximum
    (paths./api/profiles.get.parameters[page[size]].schema.maximum) and the answer is a
    collection with ``links.next`` (components.schemas.CollectionLinks): ids on its
    later pages are alive, not deleted."""
    profiles = [profile(i, T0 + timedelta(minutes=7 * i, seconds=i * i)) for i in range(12)]
    members = {"L1": [(p["id"], T0) for p in profiles]}
    with SpecServer(profiles, [group("list", "L1", "Newsletter", T0)], members) as server:
        h = make_harness(server)
        assert h.sync("full").outcome == "completed"
        assert h.status().counts["klaviyo_profiles_mapped"] == 12
        server.quirks.unindexed = frozenset(p["id"] for p in profiles[:10])
        server.quirks.max_page = 4
        report = h.sync("full")
        assert report.outcome == "completed", report.message
        assert report.counts.get("profiles_deleted_in_klaviyo", 0) == 0
        assert h.status().counts["klaviyo_profiles_mapped"] == 12
        assert all(c["tags"] == ["kla_list_newsletter"] for c in h.export())
        # a profile really deleted is still noticed
        with server.lock:
            server.profiles.pop()
            server.members["L1"].pop()
        report = h.sync("full")
        assert report.counts.get("profiles_deleted_in_klaviyo", 0) == 1
        assert h.status().counts["klaviyo_profiles_mapped"] == 11


# ------------------------------------------------------------------ filters
def test_filter_datetimes_in_the_spec_example_form(make_harness):
    """The spec's only datetime filter example is
    ``less-or-equal(created,2022-11-08T00:00:00+00:00)``
    (paths./api/lists/{id}/relationships/profiles ... and e.g. any ``example`` with
    ``less-or-equal(created,``): whole seconds, explicit offset, unquoted. A server whose
    parser accepts exactly that (``strptime('%Y-%m-%dT%H:%M:%S%z')``) must still get every
    profile and membership, in full and incremental runs."""
    profiles = [profile(i, T0 + timedelta(hours=i, seconds=17)) for i in range(30)]
    members = {"L1": [(p["id"], T0 + timedelta(minutes=i)) for i, p in enumerate(profiles) if i % 2 == 0]}
    groups = [group("list", "L1", "Evens", T0 - timedelta(days=3))]
    with SpecServer(profiles, groups, members, Quirks(strict_filter_datetimes=True)) as server:
        h = make_harness(server)
        report = h.sync("full")
        assert report.outcome == "completed", report.message
        assert imported_ids(h) == {p["id"] for p in profiles}
        assert not server.errors
        with server.lock:
            server.profiles.append(profile(99, datetime.now(timezone.utc).replace(microsecond=0)))
            server.members["L1"].append(("01P0099", datetime.now(timezone.utc)))
        report = h.sync("incremental")
        assert report.outcome == "completed", report.message
        assert report.mode == "incremental"
        assert not server.errors
        tagged = {kid for c in h.export() if "kla_list_evens" in c["tags"] for kid in c["klaviyo_ids"]}
        assert tagged == {pid for pid, _ in server.members["L1"]}


# --------------------------------------------------------------- timestamps
@pytest.mark.parametrize("form", ["lower"])
def test_rfc3339_timestamps_in_any_form(make_harness, form):
    """``created``/``updated`` are ``format: date-time``
    (components.schemas.ProfileResponsePluralConversationsObjectResource.properties.attributes
    .properties.updated, components.schemas.ListResponseObjectResource ... created), i.e.
    RFC 3339: a fraction of any length, ``Z``, and lower-case ``t``/``z`` are all valid.
    The older of two lists named alike keeps the plain tag (so ``created`` must parse),
    and the run's watermark is the newest ``updated``."""
    profiles = [profile(i, T0 + timedelta(minutes=5 * i, seconds=3), form) for i in range(6)]
    groups = [
        group("list", "LA", "VIP", T0, form),  # newer, smaller id
        group("list", "LZ", "vip", T0 - timedelta(days=400), form),  # older: keeps the plain tag
    ]
    members = {"LA": [(profiles[0]["id"], T0)], "LZ": [(profiles[1]["id"], T0)]}
    with SpecServer(profiles, groups, members) as server:
        h = make_harness(server)
        report = h.sync("full")
        assert report.outcome == "completed", report.message
        assert not [w for w in report.warnings if "malformed" in w]
        tags = {c["klaviyo_ids"][0]: c["tags"] for c in h.export()}
        assert tags[profiles[1]["id"]] == ["kla_list_vip"]
        assert tags[profiles[0]["id"]] == ["kla_list_vip_la"]
        watermark = h.status().extra["profiles_watermark"]
        assert watermark is not None
        assert datetime.fromisoformat(watermark).replace(microsecond=0) == T0 + timedelta(minutes=25, seconds=3)


# --------------------------------------------------------------- pagination
def test_small_pages_empty_first_pages_and_no_profile_count(make_harness):
    """A collection's ``data`` may be empty while ``links.next`` is set, pages may be
    smaller than asked, ``links.next`` may be null on the last page and carry encoded
    brackets and extra parameters (components.schemas.CollectionLinks: ``next`` is just
    ``format: uri``, not required), and ``profile_count`` is nullable
    (components.schemas.GetListRetrieveResponseCompoundDocument ... profile_count).
    The probe must still find the newest ``updated`` (the next watermark); full and
    incremental runs must still import everything and notice a member who left."""
    profiles = [profile(i, T0 + timedelta(minutes=3 * i, seconds=11)) for i in range(23)]
    members = {
        "L1": [(p["id"], T0 + timedelta(seconds=i)) for i, p in enumerate(profiles)],
        "S1": [(p["id"], T0) for p in profiles[:4]],
    }
    groups = [group("list", "L1", "All", T0 - timedelta(days=1)), group("segment", "S1", "Few", T0)]
    quirks = Quirks(max_page=4, empty_first_page=True, profile_count=False)
    with SpecServer(profiles, groups, members, quirks) as server:
        h = make_harness(server)
        report = h.sync("full")
        assert report.outcome == "completed", report.message
        assert imported_ids(h) == {p["id"] for p in profiles}
        watermark = h.status().extra["profiles_watermark"]
        assert watermark is not None
        assert datetime.fromisoformat(watermark) == T0 + timedelta(minutes=66, seconds=11)
        with server.lock:
            server.members["L1"] = server.members["L1"][1:]
        report = h.sync("incremental")
        assert report.outcome == "completed", report.message
        tags = {c["klaviyo_ids"][0]: set(c["tags"]) for c in h.export()}
        assert tags[profiles[0]["id"]] == {"kla_segment_few"}
        assert tags[profiles[1]["id"]] == {"kla_list_all", "kla_segment_few"}
        assert tags[profiles[10]["id"]] == {"kla_list_all"}


@pytest.mark.parametrize("origin", ["http://LOCALHOST:{port}", "http://localhost.:{port}", "http://[::1]:{port}"])
def test_next_links_under_another_spelling_of_the_same_host(make_harness, origin):
    """``links.next`` is only ``format: uri`` (components.schemas.CollectionLinks): a
    server reached as ``127.0.0.1`` may write its links with ``localhost`` (any case, a
    trailing dot) or ``[::1]``. That is the same origin; the link is followed (on the
    configured base URL: the key still never goes anywhere else)."""
    profiles = [profile(i, T0 + timedelta(minutes=i, seconds=5)) for i in range(9)]
    members = {"L1": [(p["id"], T0) for p in profiles]}
    with SpecServer(profiles, [group("list", "L1", "All", T0)], members, Quirks(max_page=2)) as server:
        server.quirks.link_origin = origin.format(port=server.port)
        h = make_harness(server)
        report = h.sync("full")
        assert report.outcome == "completed", report.message
        assert imported_ids(h) == {p["id"] for p in profiles}
        assert all(c["tags"] == ["kla_list_all"] for c in h.export())


def test_links_to_another_port_or_host_are_still_refused():
    from smartpush_plugin_klaviyo.errors import ForeignURLError

    with ScriptedServer(profiles=3) as server, KlaviyoClient(
        "pk_" + "8" * 34, base_url=server.base_url, budgets=RateBudgets(enabled=False)
    ) as client:
        for url in (f"http://localhost:{server.port + 1}/api/profiles/", f"http://127.0.0.2.example:{server.port}/api/profiles/",
                    f"https://localhost:{server.port}/api/profiles/"):
            with pytest.raises(ForeignURLError):
                client.get_url(url)
        assert client.get_url(f"http://LocalHost:{server.port}/api/profiles/?page%5Bsize%5D=2")["data"]
    assert len(server.requests) == 1


# ------------------------------------------------------------------- errors
def jsonapi_error(status: int, code: str, detail: str) -> dict:
    return {"errors": [{"id": "e1", "status": status, "code": code, "title": detail, "detail": detail}]}


@pytest.mark.parametrize("code", ["authentication_failed", "not_authenticated"])
def test_a_403_that_rejects_the_key_is_an_invalid_key_not_a_missing_scope(code):
    """The spec gives every error only as ``4XX`` ClientError with a free ``code``
    (components.responses.ClientError): nothing ties a rejected key to 401. A server in
    the style of Django REST framework answers a bad key with 403 ``authentication_failed``
    / ``not_authenticated``; that must pause as ``key_invalid`` (replace the key), not as
    a missing scope (the merchant would add scopes to a dead key)."""
    key = "pk_" + "7" * 34
    with ScriptedServer(profiles=3) as server:
        server.push(403, jsonapi_error(403, code, "Incorrect authentication credentials."))
        server.push(403, jsonapi_error(403, "permission_denied", "You do not have permission to perform this action."))
        with KlaviyoClient(key, base_url=server.base_url, budgets=RateBudgets(enabled=False)) as client:
            with pytest.raises(InvalidKeyError) as ei:
                client.get("/api/profiles")
            assert ei.value.status == 403 and ei.value.code == code
            with pytest.raises(MissingScopeError):
                client.get("/api/profiles")
        assert len(server.requests) == 2


def test_throttle_and_server_errors_in_the_forms_the_spec_allows():
    """A 429 is just a ``4XX`` ClientError (components.responses.ClientError: a JSON:API
    ``errors`` array, ``code`` e.g. ``throttled``) and a 5XX may come from a proxy as HTML;
    the spec documents no ``Retry-After`` or ``RateLimit-*`` header
    (no ``headers`` in paths./api/profiles.get.responses). A fractional ``Retry-After`` is
    waited, a missing one falls back to backoff, an HTML 503 is retried, and the final
    error carries Klaviyo's code (never the key)."""
    import time

    from smartpush_plugin_klaviyo.errors import RateLimitedError

    key = "pk_" + "9" * 34
    throttled = jsonapi_error(429, "throttled", f"Request was throttled for {key}.")
    with ScriptedServer(profiles=3) as server:
        server.push(429, throttled, {"Retry-After": "0.3"})
        server.push(429, throttled)  # no Retry-After
        server.push(503, "<html><body>Service Unavailable</body></html>", {"Content-Type": "text/html"})
        with KlaviyoClient(key, base_url=server.base_url, budgets=RateBudgets(time_scale=50), backoff_initial=0.05) as client:
            assert client.get("/api/profiles", {"page[size]": 2})["data"]
            assert client.stats["retries"] == 3
            times = [r["time"] for r in server.requests]
            assert times[1] - times[0] >= 0.3
            server.push(429, throttled, {"Retry-After": "86400"})
            t0 = time.monotonic()
            with pytest.raises(RateLimitedError) as ei:
                client.get("/api/profiles")
            assert time.monotonic() - t0 < 2  # a day's wait is not slept inside the run
        assert ei.value.code == "throttled" and ei.value.retry_after == 86400
        assert key not in str(ei.value) + repr(ei.value)


# ------------------------------------------------------------ authorize / scopes
ALL_READ_SCOPES = frozenset({"profiles:read", "lists:read", "segments:read"})


def test_missing_scope_is_named_whatever_the_servers_wording(make_harness):
    """``x-klaviyo-scopes`` of the endpoints read: paths./api/profiles.get ->
    ``profiles:read``, paths./api/lists.get -> ``lists:read``, paths./api/segments.get ->
    ``segments:read``, and both of its group's and ``profiles:read`` for
    paths./api/{lists,segments}/{id}/relationships/profiles.get. A refusal is only a 4XX
    ClientError (components.responses.ClientError: ``code``, ``title``, ``detail`` are free
    strings), so the missing scope must come from what was asked, not from ``detail``: here
    a DRF-style 403 ``permission_denied`` names none. Authorize refuses a key that reads
    lists but not segments and names ``segments:read``; a key that loses it later pauses
    the sync with the same name."""
    profiles = [profile(i, T0 + timedelta(minutes=i)) for i in range(3)]
    groups = [group("list", "L1", "All", T0), group("segment", "S1", "Some", T0)]
    members = {"L1": [(p["id"], T0) for p in profiles], "S1": [(profiles[0]["id"], T0)]}
    quirks = Quirks(scopes=ALL_READ_SCOPES - {"segments:read"})
    with SpecServer(profiles, groups, members, quirks) as server:
        h = make_harness(server, key="")
        h.call("install")
        result = h.call("authorize", credentials=KEY)
        assert not result.ok and result.missing_scopes == ["segments:read"]
        assert "segments:read" in result.message and KEY not in result.message
        assert server.errors and "segments" not in server.errors[-1][1]  # the wording names no scope
        server.quirks.scopes = ALL_READ_SCOPES
        assert h.call("authorize", credentials=KEY).ok
        assert h.sync("full").outcome == "completed"
        server.quirks.scopes = ALL_READ_SCOPES - {"segments:read"}
        report = h.sync("incremental")
        assert report.outcome == "paused"
        status = h.status()
        assert status.pause_reason.value == "missing_scope"
        assert "segments:read" in status.pause_detail and KEY not in status.pause_detail


# ------------------------------------------------------------------ memberships
def tagged(h: Harness, tag: str) -> set[str]:
    return {kid for c in h.export() if tag in c["tags"] for kid in c["klaviyo_ids"]}


def test_a_lagging_segment_count_does_not_hide_a_removal(make_harness):
    """``profile_count`` is only ``{"type": "integer", "nullable": true}``
    (components.schemas.GetSegmentRetrieveResponseCompoundDocument ... profile_count): the
    spec does not say it equals the relationships' count at every moment. A segment
    whose membership is being recomputed says so (``is_processing``, required:
    components.schemas.SegmentRetrieveResponseObjectResource.required; requestable with
    ``fields[segment]``: paths./api/segments/{id}.get.parameters). A segment still
    reporting its old count while processing must be rescanned, so a member who left
    loses the tag; and a list whose count lags without any such flag is rescanned after
    ``KLAVIYO_RESCAN_EVERY_RUNS`` runs at the latest."""
    profiles = [profile(i, T0 + timedelta(minutes=i)) for i in range(4)]
    groups = [group("segment", "S1", "Buyers", T0 - timedelta(days=2)), group("list", "L1", "News", T0 - timedelta(days=2))]
    members = {"S1": [(p["id"], T0 - timedelta(days=1)) for p in profiles],
               "L1": [(p["id"], T0 - timedelta(days=1)) for p in profiles]}
    with SpecServer(profiles, groups, members, Quirks(stale_counts={})) as server:
        h = make_harness(server, KLAVIYO_RESCAN_EVERY_RUNS="3")
        assert h.sync("full").outcome == "completed"
        assert tagged(h, "kla_segment_buyers") == {p["id"] for p in profiles}
        with server.lock:
            server.quirks.stale_counts = {"S1": 4, "L1": 4}  # counts not updated yet
            server.members["S1"] = server.members["S1"][1:]
            server.members["L1"] = server.members["L1"][1:]
            server.groups[0]["is_processing"] = True
        report = h.sync("incremental")
        assert report.outcome == "completed", report.message
        assert tagged(h, "kla_segment_buyers") == {p["id"] for p in profiles[1:]}
        for _ in range(2):
            assert h.sync("incremental").outcome == "completed"
        assert tagged(h, "kla_list_news") == {p["id"] for p in profiles[1:]}


def test_members_without_joined_group_at_are_neither_missed_nor_removed(make_harness):
    """``joined_group_at`` is a filter-only field of both relationships endpoints
    (paths./api/lists/{id}/relationships/profiles.get x-klaviyo-filters.joined_group_at,
    same for segments; the items are only ``type`` and ``id``:
    components.schemas.GetSegmentProfilesRelationshipsResponseCollection). A server whose
    data lacks it for some memberships returns them to no comparison, only unfiltered.
    Scans sliced on ``joined_group_at`` must notice (fewer members than ``profile_count``,
    or members about to be removed) and read the group unfiltered: the member gets its tag,
    keeps it in later full runs, and a member who really left still loses it."""
    profiles = [profile(i, T0 + timedelta(minutes=i)) for i in range(8)]
    members = {"L1": [(p["id"], T0 - timedelta(days=9 - i)) for i, p in enumerate(profiles)]}
    members["L1"][3] = (profiles[3]["id"], None)
    everyone = {p["id"] for p in profiles}
    with SpecServer(profiles, [group("list", "L1", "Club", T0 - timedelta(days=10))], members) as server:
        h = make_harness(server, KLAVIYO_MEMBERS_PER_SLICE="2")
        assert h.sync("full").outcome == "completed"
        report = h.sync("incremental")
        assert report.outcome == "completed", report.message
        assert tagged(h, "kla_list_club") == everyone
        report = h.sync("full")
        assert report.outcome == "completed", report.message
        assert tagged(h, "kla_list_club") == everyone
        with server.lock:
            server.members["L1"].pop(5)
        report = h.sync("full")
        assert report.outcome == "completed", report.message
        assert tagged(h, "kla_list_club") == everyone - {profiles[5]["id"]}
        with server.lock:
            server.members["L1"].pop(0)
        report = h.sync("incremental")
        assert report.outcome == "completed", report.message
        assert tagged(h, "kla_list_club") == everyone - {profiles[5]["id"], profiles[0]["id"]}
