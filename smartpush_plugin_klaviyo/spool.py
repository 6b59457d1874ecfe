"""What travels from the fetch threads to the writer: typed messages on a spool.

A run's fetchers read Klaviyo as fast as the rate budgets allow; the writer (the one
serial stage) applies what they read in the order it was queued. The :class:`Spool`
between them holds up to ``memory_pages`` page messages; while it is full a fetcher waits
(the writer sets the pace, memory stays flat; control messages never wait). Spilling the
pages beyond to a temporary file, so that fetchers never wait, was built and measured
slower on a 2-core machine (the work left when Klaviyo's last window opens is the
writer's whatever arrived early, and pickling costs ~2 ms a page of the same CPU: see the
README); it would also have put mapped profiles unencrypted on disk, so it was removed.
A crash loses only the spool: checkpoints move when the writer applies a page, so the
next run fetches those pages again.

Messages (one class per kind, dispatched by type, never by a string):

- :class:`PageRead` a page of a stream (mapped profiles, or member ids of a group);
- :class:`StreamEnded` a stream read to its end (or to the end of its portion);
- :class:`StreamsPlanned` new stream rows (a scan planned by a fetcher);
- :class:`JoinsRead` recent joins of a group (added, nobody removed);
- :class:`GroupChecked` / :class:`ScanFinished` a group's check or full scan is complete;
- :class:`Barrier` released once everything queued before it is committed;
- :class:`TaskDone` a fetch task ended (the writer counts them to know when to stop).
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from typing import Any, Union

__all__ = [
    "PageRead",
    "StreamEnded",
    "StreamsPlanned",
    "JoinsRead",
    "GroupChecked",
    "ScanFinished",
    "Barrier",
    "TaskDone",
    "Message",
    "Spool",
    "SpoolClosed",
]


@dataclass(frozen=True, slots=True)
class PageRead:
    """One page of ``stream``. ``profiles``: the page of a profile stream, its profiles
    mapped (or skipped with a reason:
    :class:`~smartpush_plugin_klaviyo.profile_pages.ProfilePage`) or still as Klaviyo sent
    them, for the writer to decode and map
    (:class:`~smartpush_plugin_klaviyo.profile_pages.RawProfilePage`); ``member_ids``: the
    Klaviyo ids of a membership page."""

    stream: dict
    next_url: str | None
    profiles: Any = None
    member_ids: list[str] | None = None
    last: str | None = None
    """The sort value of the page's last profile (where a refused cursor restarts); for a
    raw page the writer reads it when it decodes the page."""


@dataclass(frozen=True, slots=True)
class StreamEnded:
    stream: dict
    hi: str | None = None
    """Where a portion ended (the sweep reads part of the account per run); ``None``: the end."""


@dataclass(frozen=True, slots=True)
class StreamsPlanned:
    rows: list[dict]


@dataclass(frozen=True, slots=True)
class JoinsRead:
    group_id: str
    klaviyo_ids: list[str]


@dataclass(frozen=True, slots=True)
class GroupChecked:
    group_id: str


@dataclass(frozen=True, slots=True)
class ScanFinished:
    group_id: str


@dataclass(frozen=True, slots=True)
class Barrier:
    event: threading.Event


@dataclass(frozen=True, slots=True)
class TaskDone:
    pass


Message = Union[PageRead, StreamEnded, StreamsPlanned, JoinsRead, GroupChecked, ScanFinished, Barrier, TaskDone]


class SpoolClosed(Exception):
    """The spool was closed, or the run is stopping (a waiting fetcher gives up)."""


class Spool:
    """A bounded FIFO of :data:`Message`: at most ``memory_pages`` page messages.

    :meth:`put` of a page waits while that many are queued (the writer sets the pace;
    control messages never wait), until ``stop`` is set: then it raises
    :class:`SpoolClosed`, as it does once the spool is closed.
    """

    def __init__(self, memory_pages: int = 64, *, stop: threading.Event | None = None):
        self.memory_pages = max(1, memory_pages)
        self._stop = stop
        self._items: collections.deque = collections.deque()
        self._pages = 0
        self._cond = threading.Condition()
        self._closed = False

    def put(self, message: Message) -> None:
        """Queue ``message``; a page waits for room."""
        page = isinstance(message, PageRead)
        with self._cond:
            while page and self._pages >= self.memory_pages and not self._closed:
                if self._stop is not None and self._stop.is_set():
                    raise SpoolClosed()
                self._cond.wait(0.2)
            if self._closed:
                raise SpoolClosed()
            self._pages += page
            self._items.append(message)
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> Message | None:
        """The oldest message, waiting up to ``timeout`` seconds; ``None`` if none came."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout) or not self._items:
                return None
            return self._take()

    def get_nowait(self) -> Message | None:
        """The oldest message, or ``None`` when the spool is empty."""
        with self._cond:
            return self._take() if self._items else None

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def empty(self) -> bool:
        return len(self) == 0

    def clear(self) -> None:
        """Drop every queued message (a failing run writes nothing more)."""
        with self._cond:
            self._items.clear()
            self._pages = 0
            self._cond.notify_all()

    def close(self) -> None:
        """Drop what is queued; later puts raise :class:`SpoolClosed`."""
        with self._cond:
            self._closed = True
            self._items.clear()
            self._pages = 0
            self._cond.notify_all()

    def _take(self) -> Message:
        item = self._items.popleft()
        if isinstance(item, PageRead):
            self._pages -= 1
            self._cond.notify_all()  # a fetcher may wait for room
        return item
