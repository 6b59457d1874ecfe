"""Profile pages decoded and mapped by the writer, in the fetch thread or in helper processes.

The helper processes are real (``multiprocessing`` forkserver); the end-to-end test
syncs the same stand-in account into two databases, with and without helpers, and
compares the exports.
"""

from __future__ import annotations

import os
import signal
import time

import orjson
import pytest
from klaviyo_standin import ALL_SCOPES, DEFAULT_API_KEY, StandInServer, generate_account
from klaviyo_standin.resources import profile_resource

from smartpush_plugin_klaviyo.mapping import map_profile
from smartpush_plugin_klaviyo.profile_pages import (
    ProfilePage,
    ProfilePageDecoder,
    RawProfilePage,
    decode_profile_page,
    last_updated,
    raw_profile_page,
)
from tests import expectations as exp
from tests.harness import CLOCK_SCALE, Harness, make_host


def _page(account, start: int, stop: int, next_url: str | None = "http://x/api/profiles/?page%5Bcursor%5D=c") -> bytes:
    ids = account.profile_ids()
    data = [profile_resource("http://x", ids[i], account.profile_attributes(i)) for i in range(start, stop)]
    return orjson.dumps({"data": data, "links": {"self": "http://x/api/profiles/", "next": next_url}})


@pytest.fixture(scope="module")
def account():
    return generate_account(profiles=240, seed=11)


def _wait_in_processes(decoder: ProfilePageDecoder, page: bytes) -> None:
    deadline = time.monotonic() + 60
    while not decoder.in_processes:
        assert time.monotonic() < deadline, "the helper processes did not start"
        decoder(page)
        time.sleep(0.05)


def test_decode_profile_page_maps_every_resource(account):
    body = _page(account, 0, 100)
    page = decode_profile_page(body)
    data = orjson.loads(body)["data"]
    assert page.mapped == [map_profile(r) for r in data]
    assert page.last == last_updated(data) == data[-1]["attributes"]["updated"]
    assert page.next_url == "http://x/api/profiles/?page%5Bcursor%5D=c"
    assert decode_profile_page(_page(account, 0, 3, next_url=None)).next_url is None


def test_a_raw_page_reads_only_links_next_and_decodes_as_the_page_would(account):
    body = _page(account, 0, 100)
    raw = raw_profile_page(body)
    assert isinstance(raw, RawProfilePage) and raw.content is body
    assert raw.next_url == "http://x/api/profiles/?page%5Bcursor%5D=c"
    assert decode_profile_page(raw.content) == decode_profile_page(body)
    last = raw_profile_page(_page(account, 0, 3, next_url=None))
    assert isinstance(last, RawProfilePage) and last.next_url is None
    spaced = b'  {\n "data" : [ ] ,\n "links" : { "next" : "http://x/n" } \n}\n'
    assert raw_profile_page(spaced) == RawProfilePage(spaced, "http://x/n")


def _doc(account, **members) -> bytes:
    data = [profile_resource("http://x", account.profile_ids()[0], account.profile_attributes(0))]
    return orjson.dumps({"data": data, **members})


@pytest.mark.parametrize(
    "shape",
    ["links first", "meta after links", "no top-level links", "links.next a number", "links a string",
     "a property value spells the key"],
)
def test_a_page_not_shaped_data_then_links_is_decoded_whole(account, shape):
    """Whatever the bytes, the raw reading never disagrees with decoding the whole page:
    where ``links`` is not the document's last member it decodes the whole page (and a
    broken one is still a ValueError, which the client retries)."""
    links = {"self": "http://x/s", "next": "http://x/n"}
    data = [profile_resource("http://x", account.profile_ids()[0], account.profile_attributes(0))]
    body = {
        "links first": lambda: orjson.dumps({"links": links, "data": data}),
        "meta after links": lambda: _doc(account, links=links, meta={"links": 1}),
        # each resource has its own links: the last "links" key is a resource's
        "no top-level links": lambda: _doc(account),
        "links.next a number": lambda: _doc(account, links={"next": 5}),
        "links a string": lambda: _doc(account, links="next"),
        "a property value spells the key": lambda: orjson.dumps(
            {"data": [{**data[0], "attributes": {**data[0]["attributes"], "properties": {"k": '"links": {}}'}}}],
             "links": links}),
    }[shape]()
    try:
        expected = decode_profile_page(body)
    except ValueError:
        with pytest.raises(ValueError):
            raw_profile_page(body)
        return
    got = raw_profile_page(body)
    if isinstance(got, RawProfilePage):
        assert shape == "a property value spells the key"  # links is last: read raw, exactly
        assert got.next_url == expected.next_url == "http://x/n"
        assert decode_profile_page(got.content) == expected
    else:
        assert isinstance(got, ProfilePage) and got == expected


@pytest.mark.parametrize(
    "body",
    [b"<html>busy</html>", b"[1, 2]", b'{"data": {"id": "x"}}', b'{"data": [], "links": "next"}', b'{"data": [', b""],
)
def test_a_body_that_is_not_a_profile_page_is_a_value_error(body):
    # The client turns a ValueError from its decoder into a transient error (retried).
    with pytest.raises(ValueError):
        decode_profile_page(body)


def test_last_updated_skips_resources_without_one():
    data = [{"attributes": {"updated": "2024-01-01T00:00:00+00:00"}}, {"attributes": {}}, "junk"]
    assert last_updated(data) == "2024-01-01T00:00:00+00:00"
    assert last_updated([]) is None


def test_no_processes_decodes_in_the_calling_thread(account):
    with ProfilePageDecoder(0, start_after=0) as decoder:
        for _ in range(3):
            decoder(_page(account, 0, 50))
        assert not decoder.in_processes
        assert decoder._starter is None


def test_helpers_start_after_the_threshold_and_give_the_same_results(account):
    body = _page(account, 100, 200)
    with ProfilePageDecoder(1, start_after=150) as decoder:
        decoder(body)  # 100 profiles: below the threshold, no start yet
        assert decoder._starter is None
        _wait_in_processes(decoder, body)
        helpers = list(decoder._pool._processes)
        assert helpers and os.getpid() not in helpers
        assert decoder(body) == decode_profile_page(body)
        with pytest.raises(ValueError):
            decoder(b"not json")  # the helper's error reaches the caller as is
    assert not decoder.in_processes


def test_a_dead_helper_falls_back_to_the_calling_thread(account):
    body = _page(account, 0, 100)
    with ProfilePageDecoder(1, start_after=0) as decoder:
        _wait_in_processes(decoder, body)
        for pid in list(decoder._pool._processes):
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        # The page in flight (or the next one) is decoded here; later ones too.
        assert decoder(body) == decode_profile_page(body)
        assert decoder(body) == decode_profile_page(body)
        assert not decoder.in_processes


def test_a_sync_with_helper_processes_imports_the_same_contacts(tmp_path, db_url):
    account = generate_account(profiles=600, seed=23)
    exports = []
    with StandInServer(account, api_keys={DEFAULT_API_KEY: ALL_SCOPES}, clock_scale=CLOCK_SCALE) as server:
        for processes in ("0", "1"):
            host = make_host(
                db_url, tmp_path / f"p{processes}", server,
                KLAVIYO_MAP_PROCESSES=processes, KLAVIYO_MAP_PROCESSES_AFTER="0",
            )
            try:
                h = Harness(host=host, server=server, account=account, store=f"helpers-{processes}")
                h.install_and_authorize(DEFAULT_API_KEY)
                report = h.sync("full")
                assert report.outcome == "completed", report.message
                assert report.counts["profiles_seen"] == 600
                # start_after=0: the helpers start before the first page and map them all
                assert report.counts.get("profiles_mapped_in_helpers", 0) == (600 if processes == "1" else 0)
                exports.append(sorted(
                    ({k: v for k, v in c.items() if k != "uid"} for c in h.export()),
                    key=lambda c: c["klaviyo_ids"],
                ))
            finally:
                host.close()
    assert exports[0] and exports[0] == exports[1]


def _decode_in_a_daemon(body: bytes, out) -> None:
    with ProfilePageDecoder(1, start_after=0) as decoder:
        page = decoder(body)
        out.put((len(page.mapped), decoder.in_processes))


def test_a_daemonic_host_process_decodes_in_its_own_threads(account):
    # multiprocessing refuses children to a daemonic process: the decoder carries on alone.
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_decode_in_a_daemon, args=(_page(account, 0, 20), out), daemon=True)
    proc.start()
    try:
        assert out.get(timeout=60) == (20, False)
    finally:
        proc.join(30)
    assert proc.exitcode == 0


def test_one_unreadable_profile_spoils_only_itself():
    """#16: a profile nested deeper than any decoder reads (or otherwise broken) is skipped
    with its id; the rest of the page, and its links.next, arrive."""
    from smartpush_plugin_klaviyo.mapping import Skip
    from smartpush_plugin_klaviyo.profile_pages import decode_profile_page

    good = b'{"type":"profile","id":"01A","attributes":{"email":"a@example.com","properties":{"s":"x]}{,\\"q"}}}'
    deep = b'{"type":"profile","id":"01B","attributes":{"properties":{"d":' + b"[" * 5000 + b"]" * 5000 + b"}}}"
    page = b'{"data":[' + good + b"," + deep + b"," + good.replace(b"01A", b"01C") + b'],"links":{"next":"http://h/x?page%5Bcursor%5D=c"}}'
    decoded = decode_profile_page(page)
    assert [m.klaviyo_id for m in decoded.mapped] == ["01A", "01B", "01C"]
    assert isinstance(decoded.mapped[1], Skip) and "nested" in decoded.mapped[1].reason
    assert decoded.mapped[0].properties["kla_s"] == 'x]}{,"q'
    assert decoded.next_url == "http://h/x?page%5Bcursor%5D=c"


def test_a_raw_page_the_writer_cannot_read_fails_the_run_and_the_next_run_reads_it_again(tmp_path, db_url):
    """A page shaped like a collection at both ends (so the fetch thread hands it on raw)
    but broken inside, beyond skipping one resource: the writer fails the run before the
    page's checkpoint moves; nothing of it is lost, the next run reads it again."""
    account = generate_account(profiles=1500, seed=5)
    with StandInServer(account, api_keys={DEFAULT_API_KEY: ALL_SCOPES}, clock_scale=CLOCK_SCALE) as server:
        h = Harness(host=make_host(db_url, tmp_path, server), server=server, account=account)
        h.install_and_authorize(DEFAULT_API_KEY)
        broken = b'{"data":[{]}],"links":{"self":"x","next":null}}'
        assert isinstance(raw_profile_page(broken), RawProfilePage)
        server.inject("/api/profiles", status=200, body=broken, cursor_only=True)
        first = h.sync("full")
        assert first.outcome == "failed" and "not a JSON:API collection" in first.message
        assert server.faults.pending == 0
        report = h.sync("full")
        assert report.outcome == "completed", report.message
        assert report.resumed
        kids = [k for c in h.export() for k in c["klaviyo_ids"]]
        assert len(kids) == len(set(kids))
        imported = {p["id"] for p in account.iter_profiles() if exp.valid_email(p["attributes"].get("email"))}
        assert imported <= set(kids)
        h.host.close()
