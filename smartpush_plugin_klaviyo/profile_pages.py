"""Decoding and mapping pages of ``GET /api/profiles``: by the writer, or in helper processes.

Decoding a page (JSON) and mapping its profiles (:func:`mapping.map_profile`) are pure
and are most of a full sync's CPU besides the writes. By default the writer does them
itself: a fetch thread only finds the page's ``links.next`` in the response bytes
(:func:`raw_profile_page`, a few µs a page) and hands the bytes on, and the writer decodes
and maps the page just before it writes it (:func:`decode_profile_page`). Measured
(README, Throughput), that costs a quarter less CPU than decoding in the fetch threads or
in helper processes: the objects of a page are made, used and freed by one thread, and the
writer no longer contends with fetch threads busy decoding.

Helper processes stay available as a host setting (``KLAVIYO_MAP_PROCESSES``): the fetch
thread passes the response bytes and gets back the mapped page. Small runs never start a
pool (it costs up to a second): :class:`ProfilePageDecoder` decodes in the calling thread
until ``start_after`` profiles were seen, and falls back to the calling thread for good if
a helper process dies or cannot be started.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import signal
import threading
import time
from concurrent.futures import CancelledError, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import orjson

from smartpush_plugin_klaviyo import processes
from smartpush_plugin_klaviyo.jsondecode import loads, resource_id, split_collection
from smartpush_plugin_klaviyo.mapping import MappedProfile, Skip, map_profile

log = logging.getLogger(__name__)

__all__ = ["ProfilePage", "ProfilePageDecoder", "RawProfilePage", "decode_profile_page", "last_updated",
           "raw_profile_page"]


@dataclass(slots=True)
class ProfilePage:
    """One decoded and mapped page of profiles."""

    mapped: list[MappedProfile | Skip]
    """One result per resource of ``data``, in order."""
    last: str | None
    """The ``updated`` of the page's last resource that has one (the stream's watermark)."""
    next_url: str | None
    """``links.next``: the next page, ``None`` at the end."""

    @property
    def records(self) -> int:
        """The resources on the page."""
        return len(self.mapped)


@dataclass(frozen=True, slots=True)
class RawProfilePage:
    """A page of profiles as Klaviyo sent it, for the writer to decode and map
    (:func:`decode_profile_page`); only its ``links.next`` was read."""

    content: bytes
    next_url: str | None
    """``links.next``: the next page, ``None`` at the end."""


# The document's top level opens with ``data``, an array.
_DATA_FIRST = re.compile(rb'\s*\{\s*"data"\s*:\s*\[')
_LINKS_KEY = re.compile(rb'"links"\s*:')


def _links_last(content: bytes) -> dict | None:
    """The top-level ``links`` object of a collection document shaped
    ``{"data": [...], ..., "links": {...}}`` (``links`` its last member), read without
    decoding ``data``; ``None`` when the bytes are not shaped so (the caller decodes the
    whole page instead).

    Exact, not a guess: ``"links"`` followed by a colon is a key (inside a JSON string a
    quote is escaped), and the text after the *last* such key, less the document's closing
    brace, is one JSON value only where that key is a member of the top level (after a
    nested one come the brackets that close its resource and ``data``)."""
    if _DATA_FIRST.match(content) is None:
        return None
    at = content.rfind(b'"links"')
    if at < 0:
        return None
    key = _LINKS_KEY.match(content, at)
    if key is None:
        return None
    tail = content[key.end():].rstrip()
    if not tail.endswith(b"}"):
        return None
    try:
        links = orjson.loads(tail[:-1])
    except orjson.JSONDecodeError:
        return None
    return links if isinstance(links, dict) else None


def raw_profile_page(content: bytes) -> RawProfilePage | ProfilePage:
    """A ``GET /api/profiles`` body for the writer to decode: its ``links.next`` only.

    A body not shaped as :func:`_links_last` reads it, or whose ``links.next`` is not a
    string, is decoded and mapped here instead (:func:`decode_profile_page`, which raises
    :class:`ValueError` for a body that is not a JSON:API collection: the client retries
    it as transient)."""
    links = _links_last(content)
    if links is not None:
        next_url = links.get("next")
        if next_url is None or isinstance(next_url, str):
            return RawProfilePage(content, next_url)
    return decode_profile_page(content)


def last_updated(data: list) -> str | None:
    """The ``updated`` of the last resource of a page that has one."""
    for resource in reversed(data):
        attrs = resource.get("attributes") if isinstance(resource, dict) else None
        value = attrs.get("updated") if isinstance(attrs, dict) else None
        if isinstance(value, str) and value:
            return value
    return None


def decode_profile_page(content: bytes) -> ProfilePage:
    """Decode a ``GET /api/profiles`` response body and map its profiles.

    Raises :class:`ValueError` when the body is not a JSON:API document (the client
    retries such a response as transient).
    """
    try:
        body = loads(content)  # exact values; a body that is not JSON raises ValueError
    except ValueError:
        # One resource no decoder can read (nested past any depth, a broken value) must
        # not cost the page: each resource is read on its own, the bad one skipped.
        split = split_collection(content)
        if split is None:
            raise
        body, raw_items = split
        return _decode_items(body, raw_items)
    if not isinstance(body, dict):
        raise ValueError("response is not a JSON:API document")
    data = body.get("data")
    if not isinstance(data, list):
        # A page without ``data`` is a broken answer, never an empty page: taking it for
        # one would end the stream and lose every profile after it.
        raise ValueError("response has no data list" if data is None else "response data is not a list")
    links = body.get("links")
    if links is None:
        links = {}
    elif not isinstance(links, dict):
        raise ValueError("response links is not an object")
    next_url = links.get("next")
    if next_url is not None and not isinstance(next_url, str):
        raise ValueError("response links.next is not a string")
    return ProfilePage([map_profile(r) for r in data], last_updated(data), next_url)


def _decode_items(body: dict, raw_items: list[bytes]) -> ProfilePage:
    """A page read resource by resource: a resource that is not JSON is skipped with its id."""
    results: list = []
    data: list = []
    for raw in raw_items:
        try:
            resource = loads(raw)
        except (ValueError, RecursionError):
            results.append(Skip(resource_id(raw), "malformed: not readable JSON (nested too deeply or broken)"))
            continue
        data.append(resource)
        results.append(map_profile(resource))
    links = body.get("links") if isinstance(body.get("links"), dict) else {}
    next_url = links.get("next")
    if next_url is not None and not isinstance(next_url, str):
        raise ValueError("response links.next is not a string")
    return ProfilePage(results, last_updated(data), next_url)


def _ready(_: int) -> int:
    return os.getpid()


PARENT_CHECK_SECONDS = 1.0
"""How often a helper checks that the process it decodes for is still alive."""


def _init_helper(parent_pid: int, parent_start: int | None) -> None:
    """Helper initializer.

    A terminal's Ctrl-C reaches the whole process group; the main process decides how to
    stop and shuts the pool down, so helpers ignore it (and print no traceback).

    A main process killed outright (``kill -9``, the OOM killer) shuts nothing down, and
    nothing else would end the helper: it waits on a queue whose writing end it holds
    itself, it keeps the forkserver alive (which lives while a child holds its "alive"
    pipe), and both keep multiprocessing's resource tracker alive. Three processes and
    ~110 MB stayed behind per killed sync. So a helper watches the process it works for
    and exits once that process is gone (or is another process under a reused PID)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(
        target=_exit_with, args=(parent_pid, parent_start), name="klaviyo-helper-watch", daemon=True
    ).start()


def _exit_with(parent_pid: int, parent_start: int | None) -> None:
    """Exit once the process this helper works for is gone (checked at once, then every
    :data:`PARENT_CHECK_SECONDS`)."""
    while not processes.is_gone(parent_pid, parent_start):
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(1)


def _context():
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" in methods:
        # Helpers forked from a server that imported the mapping once: fast to start and
        # they share its memory pages. Never plain fork: this process has threads.
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["smartpush_plugin_klaviyo.profile_pages"])
        return ctx
    return multiprocessing.get_context("spawn")


class ProfilePageDecoder:
    """Callable ``bytes -> ProfilePage`` shared by the fetch threads of one run.

    ``processes=0`` always decodes in the calling thread. Otherwise a pool of that many
    processes is started in the background once ``start_after`` profiles have been
    decoded here; pages are decoded here until it is ready (``start_after=0``: started
    by the first call, which waits for it). Call :meth:`close` when the run ends.
    """

    def __init__(self, processes: int = 0, *, start_after: int = 2_000):
        self.processes = max(0, processes)
        self.start_after = max(0, start_after)
        self._seen = 0
        self.in_helpers = 0
        """Profiles decoded and mapped by the helper processes so far."""
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._starter: threading.Thread | None = None
        self._closed = False
        self._failed = self.processes == 0

    @property
    def in_processes(self) -> bool:
        """Whether pages currently go to helper processes."""
        return self._pool is not None and not self._failed

    def __call__(self, content: bytes) -> ProfilePage:
        pool = self._pool_for_next_page()
        if pool is not None:
            try:
                page = pool.submit(decode_profile_page, content).result()
                with self._lock:
                    self.in_helpers += len(page.mapped)
                return page
            except BrokenProcessPool:
                self._give_up("a helper process ended unexpectedly")
            except (RuntimeError, CancelledError):  # the run is closing: finish the page here
                pass
        page = decode_profile_page(content)
        with self._lock:
            self._seen += len(page.mapped)
        return page

    def _pool_for_next_page(self) -> ProcessPoolExecutor | None:
        if self._failed or self._closed:
            return None
        if self._pool is not None:
            return self._pool
        if self._seen >= self.start_after:
            with self._lock:
                if self._starter is None and not self._failed and not self._closed:
                    # Started in the background: pages keep being decoded here meanwhile.
                    self._starter = threading.Thread(target=self._start_pool, name="klaviyo-decoder-start", daemon=True)
                    self._starter.start()
            starter = self._starter
            if self.start_after == 0 and starter is not None:
                starter.join()
                return self._pool
        return None

    def _start_pool(self) -> None:
        pool = None
        try:
            pool = ProcessPoolExecutor(max_workers=self.processes, mp_context=_context(),
                                       initializer=_init_helper,
                                       initargs=(os.getpid(), processes.start_time(os.getpid())))
            # Wait until every helper is up, so no fetch thread waits for a start-up.
            list(pool.map(_ready, range(self.processes)))
        except Exception as exc:  # e.g. a daemonic host process may not have children
            self._give_up(f"no helper processes ({type(exc).__name__})")
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
            return
        with self._lock:
            if self._closed or self._failed:
                pool.shutdown(wait=False, cancel_futures=True)
                return
            self._pool = pool

    def _give_up(self, reason: str) -> None:
        with self._lock:
            if not self._failed:
                self._failed = True
                log.warning("profile pages are decoded in-process from now on: %s", reason)

    def close(self) -> None:
        """Stop the helper processes (pages in flight still complete)."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
            starter = self._starter
        if starter is not None:
            starter.join()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ProfilePageDecoder:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ProfilePageDecoder(processes={self.processes}, in_processes={self.in_processes})"
