"""The spool between the fetchers and the writer: FIFO, typed messages, a page waits for
room (control messages never do), a stop ends the wait."""

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


def test_messages_come_out_in_order_and_control_messages_never_wait():
    spool = Spool(memory_pages=2)
    barrier = Barrier(threading.Event())
    messages = [_page(0), GroupChecked("G"), _page(1), barrier, StreamEnded(STREAM), TaskDone()]
    for m in messages:  # two pages fill the share; the control messages still go in
        spool.put(m)
    out = []
    while (m := spool.get_nowait()) is not None:
        out.append(m)
    assert out == messages
    assert out[3] is barrier
    assert spool.empty() and spool.get(timeout=0.01) is None


def test_a_page_waits_for_room_and_a_stop_ends_the_wait():
    stop = threading.Event()
    spool = Spool(memory_pages=2, stop=stop)
    spool.put(_page(0))
    spool.put(_page(1))
    spool.put(GroupChecked("G"))
    done = threading.Event()

    def put_third():
        spool.put(_page(2))
        done.set()

    threading.Thread(target=put_third, daemon=True).start()
    assert not done.wait(0.3)  # the share is full: the fetcher waits
    assert spool.get_nowait() == _page(0)
    assert done.wait(5)  # room again: the page goes in, in order
    assert [spool.get_nowait() for _ in range(3)] == [_page(1), GroupChecked("G"), _page(2)]
    spool.put(_page(3))
    spool.put(_page(4))
    stop.set()
    with pytest.raises(SpoolClosed):
        spool.put(_page(5))


def test_clear_and_close():
    spool = Spool(memory_pages=5)
    for i in range(5):
        spool.put(_page(i))
    spool.clear()
    assert spool.empty() and spool.get_nowait() is None
    spool.put(_page(0))  # clear made room
    spool.close()
    with pytest.raises(SpoolClosed):
        spool.put(GroupChecked("G"))
    assert spool.get(timeout=1) is None  # a closed spool wakes a waiting reader


def test_a_profile_page_travels_whole(profile_page_body):
    page = decode_profile_page(profile_page_body)
    spool = Spool(memory_pages=1)
    spool.put(PageRead({"key": "profiles:00", "kind": "profiles"}, page.next_url, profiles=page, last=page.last))
    got = spool.get_nowait()
    assert got.profiles is page and got.profiles.records == 100 and got.last == page.last
