"""The spool between the fetchers and the writer: FIFO, never blocks a put, spills pages
beyond its memory share to disk and reads them back in order."""

from __future__ import annotations

import threading

import pytest
from klaviyo_standin import generate_account

from smartpush_plugin_klaviyo.profile_pages import decode_profile_page
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
    spool = Spool(memory_pages=3, spill=True)
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
    spool = Spool(memory_pages=1, spill=True)
    for i in range(500):
        spool.put(_page(i))  # nobody reads: a bounded queue would block here
    assert len(spool) == 500 and spool.spilled == 499 and spool.peak_spilled_bytes > 0
    assert [spool.get(timeout=1).next_url for _ in range(500)] == [_page(i).next_url for i in range(500)]
    assert spool.get(timeout=0.01) is None


def test_clear_and_close():
    spool = Spool(memory_pages=1, spill=True)
    for i in range(5):
        spool.put(_page(i))
    spool.clear()
    assert spool.empty() and spool.get_nowait() is None
    spool.close()
    with pytest.raises(SpoolClosed):
        spool.put(_page(0))
    assert spool.get(timeout=1) is None  # a closed spool wakes a waiting reader


def test_a_profile_page_is_spilled_and_read_back_whole(profile_page_body):
    page = decode_profile_page(profile_page_body)
    spool = Spool(memory_pages=1, spill=True)
    for _ in range(2):
        spool.put(PageRead({"key": "profiles:00", "kind": "profiles"}, page.next_url, profiles=page, last=page.last))
    assert spool.spilled == 1
    first, second = spool.get_nowait(), spool.get_nowait()
    assert first.profiles is page  # held in memory: the very object
    assert second.profiles == page and second.records == 100 and second.last == page.last


def test_without_spilling_a_put_waits_for_room_and_a_stop_ends_the_wait():
    stop = threading.Event()
    spool = Spool(memory_pages=2, spill=False, stop=stop)
    spool.put(_page(0))
    spool.put(_page(1))
    spool.put(GroupChecked("G"))  # control messages never wait
    done = threading.Event()

    def put_third():
        spool.put(_page(2))
        done.set()

    threading.Thread(target=put_third, daemon=True).start()
    assert not done.wait(0.3)  # the memory share is full: the fetcher waits
    assert spool.get_nowait() == _page(0)
    assert done.wait(5)  # room again: the page goes in, in order
    assert [spool.get_nowait() for _ in range(3)] == [_page(1), GroupChecked("G"), _page(2)]
    assert spool.spilled == 0
    spool.put(_page(3))
    spool.put(_page(4))
    stop.set()
    with pytest.raises(SpoolClosed):
        spool.put(_page(5))
