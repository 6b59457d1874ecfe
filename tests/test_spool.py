"""The spool between the fetchers and the writer: FIFO, never blocks a put, spills pages
beyond its memory share to disk and reads them back in order."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import pytest
from klaviyo_standin import generate_account

from smartpush_plugin_klaviyo.profile_pages import ProfilePage, ProfilePageDecoder, decode_profile_page
from smartpush_plugin_klaviyo.spool import (
    Barrier,
    GroupChecked,
    PageRead,
    Spool,
    SpoolClosed,
    StreamEnded,
    TaskDone,
)

@pytest.fixture(scope="module")
def profile_page_body() -> bytes:
    from tests.test_profile_pages import _page

    return _page(generate_account(profiles=150, seed=3), 0, 100)


STREAM = {"key": "members:list:L1:all", "kind": "members", "group_id": "L1"}


def _page(i: int) -> PageRead:
    return PageRead(STREAM, f"https://a.klaviyo.com/next/{i}", member_ids=[f"K{i}-{j}" for j in range(100)])


def test_pages_beyond_the_memory_share_go_to_disk_and_come_back_in_order():
    spool = Spool(memory_pages=3)
    barrier = Barrier(threading.Event())
    messages = [_page(0), _page(1), GroupChecked("G"), _page(2), _page(3), barrier, _page(4), StreamEnded(STREAM),
                _page(5), TaskDone()]
    for m in messages:
        spool.put(m)
    assert spool.spilled == 3  # pages 3, 4, 5: the memory share (3) was full
    out = []
    while (m := spool.get_nowait()) is not None:
        out.append(m)
    assert out == messages  # equal values, same order; the barrier is the very object
    assert out[5] is barrier
    assert spool.empty()
    spool.put(_page(6))  # the file was emptied and is reused from its start
    assert spool.get(timeout=0) == _page(6)


def test_a_put_never_waits_for_the_reader_and_get_times_out_empty():
    spool = Spool(memory_pages=1)
    for i in range(500):
        spool.put(_page(i))  # nobody reads: a bounded queue would block here
    assert len(spool) == 500 and spool.spilled == 499 and spool.peak_spilled_bytes > 0
    assert [spool.get(timeout=1).next_url for _ in range(500)] == [_page(i).next_url for i in range(500)]
    assert spool.get(timeout=0.01) is None


def test_clear_and_close():
    spool = Spool(memory_pages=1)
    for i in range(5):
        spool.put(_page(i))
    spool.clear()
    assert spool.empty() and spool.get_nowait() is None
    spool.close()
    with pytest.raises(SpoolClosed):
        spool.put(_page(0))
    assert spool.get(timeout=1) is None  # a closed spool wakes a waiting reader


def test_a_pending_profile_page_is_mapped_before_it_is_spilled(profile_page_body):
    with ProfilePageDecoder(1, start_after=0) as decoder:
        page = decoder(profile_page_body)
        assert isinstance(page, ProfilePage)
        spool = Spool(memory_pages=1)
        spool.put(PageRead({"key": "profiles:00", "kind": "profiles"}, page.next_url, profiles=page))
        spool.put(PageRead({"key": "profiles:00", "kind": "profiles"}, page.next_url, profiles=page))
        assert spool.spilled == 1
        first, second = spool.get_nowait(), spool.get_nowait()
    expected = decode_profile_page(profile_page_body)
    assert first.profiles.mapped == expected.mapped and second.profiles.mapped == expected.mapped
    assert second.profiles.records == 100 and second.records == 100


def test_a_pending_page_whose_helper_is_gone_is_mapped_here(profile_page_body):
    cancelled = Future()
    cancelled.cancel()  # what a pool shut down before the helper started the page leaves
    decoder = ProfilePageDecoder(0)
    page = ProfilePage(None, None, None, 100, future=cancelled, content=profile_page_body, decoder=decoder)
    assert page.mapped == decode_profile_page(profile_page_body).mapped
