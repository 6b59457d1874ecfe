"""What travels from the fetch threads to the writer: typed messages on a spool.

A run's fetchers read Klaviyo as fast as the rate budgets allow; the writer (the one
serial stage) applies what they read in the order it was queued. The :class:`Spool`
between them never makes a fetcher wait for the writer: up to ``memory_pages`` page
messages are held in memory and the ones beyond are pickled to an unnamed temporary
file and read back in turn. So a window's whole budget is spent as soon as it opens,
even while the writer lags, and the writer catches up while the budgets wait; memory
stays bounded whatever the lag. A crash loses only the spool: checkpoints move when the
writer applies a page, so the next run fetches those pages again.

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
import os
import pickle
import tempfile
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
    """One page of ``stream``. ``profiles``: the page of a profile stream (its profiles
    mapped, or skipped with a reason; maybe still being mapped by a helper process:
    :class:`~smartpush_plugin_klaviyo.profile_pages.ProfilePage`); ``member_ids``: the
    Klaviyo ids of a membership page."""

    stream: dict
    next_url: str | None
    profiles: Any = None
    member_ids: list[str] | None = None
    last: str | None = None
    """The sort value of the page's last profile (where a refused cursor restarts)."""

    @property
    def records(self) -> int:
        return self.profiles.records if self.profiles is not None else len(self.member_ids or ())


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
    """The spool was closed (the run is over)."""


@dataclass(frozen=True, slots=True)
class _OnDisk:
    offset: int
    size: int


class Spool:
    """A FIFO of :data:`Message` that never blocks :meth:`put` on the reader.

    :param memory_pages: page messages held in memory at most; later ones are spilled
        to a temporary file (deleted on :meth:`close`, and by the OS if the process dies).
    """

    def __init__(self, memory_pages: int = 64):
        self.memory_pages = max(1, memory_pages)
        self._items: collections.deque = collections.deque()
        self._in_memory = 0
        self._on_disk = 0
        self._cond = threading.Condition()
        self._file = None
        self._write_at = 0
        self._closed = False
        self.spilled = 0
        """Page messages written to disk so far (diagnostics)."""
        self.peak_spilled_bytes = 0

    def put(self, message: Message) -> None:
        """Queue ``message`` (never waits for the reader)."""
        with self._cond:
            if self._closed:
                raise SpoolClosed()
            if isinstance(message, PageRead) and (self._in_memory >= self.memory_pages or self._on_disk):
                # Order is kept: once pages are on disk, later pages follow them there.
                self._items.append(self._spill(message))
            else:
                if isinstance(message, PageRead):
                    self._in_memory += 1
                self._items.append(message)
            self._cond.notify()

    def get(self, timeout: float | None = None) -> Message | None:
        """The oldest message, waiting up to ``timeout`` seconds; ``None`` if none came."""
        with self._cond:
            if not self._items and not self._cond.wait_for(lambda: self._items or self._closed, timeout):
                return None
            if not self._items:
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
            self._in_memory = self._on_disk = 0
            self._reset_file()

    def close(self) -> None:
        """Drop what is queued, delete the file; later puts raise :class:`SpoolClosed`."""
        with self._cond:
            self._closed = True
            self._items.clear()
            self._in_memory = self._on_disk = 0
            if self._file is not None:
                self._file.close()
                self._file = None
            self._cond.notify_all()

    # ----------------------------------------------------------- private
    def _spill(self, message: PageRead) -> _OnDisk:
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="smartpush-spool-")
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        os.pwrite(self._file.fileno(), data, self._write_at)
        ref = _OnDisk(self._write_at, len(data))
        self._write_at += len(data)
        self._on_disk += 1
        self.peak_spilled_bytes = max(self.peak_spilled_bytes, self._write_at)
        self.spilled += 1
        return ref

    def _take(self) -> Any:
        item = self._items.popleft()
        if isinstance(item, _OnDisk):
            item = pickle.loads(os.pread(self._file.fileno(), item.size, item.offset))
            self._on_disk -= 1
            if not self._on_disk:
                self._reset_file()  # nothing left on disk: reuse the file from its start
        elif isinstance(item, PageRead):
            self._in_memory -= 1
        return item

    def _reset_file(self) -> None:
        if self._file is not None and self._write_at:
            self._file.truncate(0)
        self._write_at = 0
