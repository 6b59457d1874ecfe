"""The sync engine: one run of one store, full or incremental, resumable.

Shape of a run
--------------
1. *Probe*: the newest and oldest ``updated`` timestamps (two one-record requests).
   The newest becomes the next watermark: it is Klaviyo's own clock at the start of
   the run, so no local clock skew can make an incremental run miss an update.
2. *Groups*: every list and segment is read and reconciled (new, renamed, deleted).
3. *Streams*, concurrently on a thread pool, all sharing the client's rate budgets:
   profile windows on ``updated`` and membership scans of each group. Fetchers put
   pages on a bounded queue (memory stays flat); a single writer (this thread)
   applies each page and its stream checkpoint in one transaction.
4. *Finish*: removals are applied per group as each complete scan ends, deleted
   Klaviyo profiles are confirmed and unmapped (full runs), the watermark moves.

A crash at any point leaves the run unfinished; the next call resumes it from the
checkpoints (pages re-fetched after the last commit are applied idempotently).
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Integer, String, and_, bindparam, delete, func, insert, select, update

from hookspecs.interfaces import HostContext
from hookspecs.types import SkippedRecord, SyncReport
from smartpush_plugin_klaviyo import groups as groups_mod
from smartpush_plugin_klaviyo import lease
from smartpush_plugin_klaviyo.errors import (
    BadRequestError,
    KlaviyoPluginError,
    LeaseLost,
    SyncCancelled,
)
from smartpush_plugin_klaviyo.memory import HeapTrimmer
from smartpush_plugin_klaviyo.pagination import any_of, fetch_page, iter_pages
from smartpush_plugin_klaviyo.profile_pages import ProfilePageDecoder, default_processes
from smartpush_plugin_klaviyo.state import (
    group_t,
    integration_t,
    membership_t,
    profile_map_t,
    run_t,
    stream_t,
)
from smartpush_plugin_klaviyo.streams import (
    PROFILES_PATH,
    member_request,
    profile_request,
    time_slices,
)
from smartpush_plugin_klaviyo.timeutil import format_iso, parse_iso, utcnow
from smartpush_plugin_klaviyo.writer import PageWriter, RunCounters

log = logging.getLogger(__name__)

OVERLAP = timedelta(minutes=5)
"""Incremental runs re-read this much before the watermark: updates Klaviyo indexes late
or stamps in the same second are not missed (the writer dedupes by id)."""
MAX_CONSECUTIVE_ERRORS = 3


@dataclass
class SyncOptions:
    """Tuning knobs; defaults suit Klaviyo's published limits."""

    workers: int = 32
    """Concurrent fetch threads (all share the per-endpoint rate budgets)."""
    profile_windows: int = 12
    """Full runs split the profile backfill into this many ``updated`` windows."""
    members_per_slice: int = 2_000
    """Groups known to be larger than this are scanned in parallel ``joined_group_at`` slices."""
    max_member_slices: int = 16
    first_scan_slices: int = 6
    """Slices of a group scanned for the first time (its size is not known yet)."""
    rescan_every_runs: int = 7
    """An incremental run rescans a group whose last complete scan is this many runs old,
    whatever ``profile_count`` says: the spec promises nothing about that count (it is
    just a nullable integer), so a count that lags or counts differently can hide a
    removal for at most this many runs."""
    queue_pages: int = 16
    """Pages buffered between fetchers and the writer (bounds memory)."""
    map_processes: int | None = None
    """Helper processes that decode and map profile pages in a large run, so the writer
    has the interpreter to itself; ``None``: one fewer than the CPUs, at most two; ``0``:
    always in the fetch threads."""
    map_processes_after: int = 2_000
    """Profiles decoded in the fetch threads before the helper processes start (a small
    run never pays their start-up)."""
    lease_owner: str = field(default_factory=lease.new_owner_id)
    stop_event: threading.Event | None = None
    """Set by the host to stop a run early (the run stays resumable)."""


def _interleave(streams: list[dict]) -> list[dict]:
    """Round-robin over endpoint families (profiles, list members, segment members)."""
    families: dict[str, list[dict]] = {}
    for stream in streams:
        family = stream["kind"] if stream["kind"] == "profiles" else stream["key"].split(":")[1]
        families.setdefault(family, []).append(stream)
    ordered: list[dict] = []
    queues = list(families.values())
    while any(queues):
        for q in queues:
            if q:
                ordered.append(q.pop(0))
    return ordered


_ADVANCE_STREAM = (
    # Built once: constructing this UPDATE for every page cost more than running it.
    update(stream_t)
    .where(
        and_(
            stream_t.c.store_id == bindparam("b_store"),
            stream_t.c.run_id == bindparam("b_run"),
            stream_t.c.key == bindparam("b_key"),
        )
    )
    .values(
        next_url=bindparam("b_next", type_=String),
        started=True,
        pages=stream_t.c.pages + 1,
        records=stream_t.c.records + bindparam("b_n", type_=Integer),
        last_value=func.coalesce(bindparam("b_last", type_=String), stream_t.c.last_value),
    )
)
"""A stream's checkpoint after one page: cursor, counters and the last ``updated`` seen."""


class _Stop(Exception):
    """Internal: a fetcher noticed the run is stopping."""


class SyncRun:
    """One sync run of one store; :func:`smartpush_plugin_klaviyo.service.sync` runs it."""

    def __init__(self, ctx: HostContext, client, options: SyncOptions):
        self.ctx = ctx
        self.store_id = ctx.store_id
        self.client = client
        self.options = options
        self.stop = threading.Event()
        self.finished = threading.Event()
        self.errors: list[BaseException] = []
        self.pages: queue.Queue = queue.Queue(maxsize=options.queue_pages)
        self.outstanding = 0
        self.outstanding_lock = threading.Lock()
        self.counters = RunCounters()
        self.epoch: int | None = None
        self.pool: ThreadPoolExecutor | None = None
        self.decoder = ProfilePageDecoder(0)
        self.aborted: BaseException | None = None
        self.expected_members: dict[str, int] = {}
        """group id -> the ``profile_count`` a rescan of this run was started with."""

    # ------------------------------------------------------------------ entry
    def execute(self, requested_mode: str) -> SyncReport:
        started = utcnow()
        with self.ctx.storage.transaction() as tx:
            integ = tx.execute(select(integration_t).where(integration_t.c.store_id == self.store_id)).first()
        self.epoch = integ.epoch
        run, resumed = self._load_or_create_run(requested_mode, integ)
        self.run_id, self.gen, self.mode = run["run_id"], run["seq"], run["mode"]
        self.writer = PageWriter(self.ctx, self.run_id, self.gen, self.counters)
        watcher = threading.Thread(target=self._watch, name=f"klaviyo-watch-{self.store_id}", daemon=True)
        watcher.start()
        try:
            self._set_phase("groups")
            self._sync_groups()
            self._set_phase("profiles_and_memberships")
            self._run_streams()
            self._set_phase("finishing")
            if self.mode == "full":
                self._confirm_deleted_profiles()
            self._finish_run(run)
        finally:
            self.finished.set()
            watcher.join(timeout=5)
        if self.aborted is not None:
            raise self.aborted
        return self.report("completed", started, resumed)

    # ----------------------------------------------------------- run records
    def _load_or_create_run(self, requested_mode: str, integ) -> tuple[dict, bool]:
        if integ.current_run_id:
            with self.ctx.storage.transaction() as tx:
                row = tx.execute(
                    select(run_t).where(and_(run_t.c.store_id == self.store_id, run_t.c.run_id == integ.current_run_id))
                ).first()
            if row is not None and row.finished_at is None:
                log.info("store %s: resuming run %s (%s)", self.store_id, row.run_id, row.mode)
                return dict(row._mapping), True
        mode = "full" if requested_mode == "full" or integ.last_success_at is None else "incremental"
        newest = self._probe("-updated")
        oldest = self._probe("updated") if mode == "full" else None
        previous = integ.profiles_watermark
        klaviyo_start = newest or previous
        if newest and previous and previous > newest:
            klaviyo_start = previous
        run = {
            "store_id": self.store_id,
            "run_id": uuid.uuid4().hex,
            "seq": integ.run_seq + 1,
            "mode": mode,
            "started_at": utcnow(),
            "klaviyo_start": klaviyo_start,
            "profiles_since": (previous - OVERLAP) if (mode == "incremental" and previous) else None,
            "phase": "starting",
            "report_json": "{}",
        }
        if mode == "full":
            windows = time_slices(oldest, newest, self.options.profile_windows)
        else:
            since = run["profiles_since"]
            windows = [(format_iso(since) if since else None, None)]
        with self.ctx.storage.transaction() as tx:
            self._check_epoch(tx)
            tx.execute(insert(run_t).values(**run))
            tx.execute(
                insert(stream_t),
                [
                    {
                        "store_id": self.store_id,
                        "run_id": run["run_id"],
                        "key": f"profiles:{i:02d}",
                        "kind": "profiles",
                        "lo": lo,
                        "hi": hi,
                    }
                    for i, (lo, hi) in enumerate(windows)
                ],
            )
            tx.execute(
                update(integration_t)
                .where(integration_t.c.store_id == self.store_id)
                .values(current_run_id=run["run_id"], run_seq=run["seq"], last_sync_started_at=run["started_at"])
            )
        return run, False

    PROBE_MAX_PAGES = 5

    def _probe(self, sort: str) -> datetime | None:
        """The ``updated`` of the first profile in ``sort`` order (``None``: no profiles).

        A page may be empty and still have a ``links.next`` (the spec promises no page
        size, only a maximum): a few pages are followed to find the first record.
        """
        page = fetch_page(self.client, PROFILES_PATH, {"sort": sort, "page[size]": 1, "fields[profile]": "updated"})
        for _ in range(self.PROBE_MAX_PAGES):
            first = next((r for r in page.data if isinstance(r, dict)), None)
            if first is not None:
                attrs = first.get("attributes")
                return parse_iso(attrs.get("updated") if isinstance(attrs, dict) else None)
            if not page.next_url:
                return None
            page = fetch_page(self.client, page.next_url)
        return None

    # ------------------------------------------------------------- groups
    def _sync_groups(self) -> None:
        found = list(groups_mod.fetch_groups(self.client))
        with self.ctx.storage.transaction() as tx:
            self._check_epoch(tx)
            counts = groups_mod.apply_groups(tx, self.writer, found)
            for key, value in counts.items():
                self.counters.counts[key] = value

    # ------------------------------------------------------------ streams
    def _run_streams(self) -> None:
        with self.ctx.storage.transaction() as tx:
            streams = [dict(r._mapping) for r in tx.execute(
                select(stream_t).where(and_(stream_t.c.store_id == self.store_id, stream_t.c.run_id == self.run_id))
            )]
            groups = [dict(r._mapping) for r in tx.execute(select(group_t).where(group_t.c.store_id == self.store_id))]
        self.pool = ThreadPoolExecutor(max_workers=self.options.workers, thread_name_prefix=f"klaviyo-{self.store_id}")
        processes = self.options.map_processes
        self.decoder = ProfilePageDecoder(
            default_processes() if processes is None else processes, start_after=self.options.map_processes_after
        )
        try:
            streams_by_group: dict[str, list[dict]] = {}
            for s in streams:
                if s["kind"] == "members":
                    streams_by_group.setdefault(s["group_id"], []).append(s)
            to_fetch = [s for s in streams if s["kind"] == "profiles" and not s["done"]]
            new_rows: list[dict] = []
            finished: list[str] = []
            for g in groups:
                if g["checked_run"] == self.run_id:
                    continue  # verified earlier in this (resumed) run
                existing = streams_by_group.get(g["group_id"])
                if existing:
                    pending = [s for s in existing if not s["done"]]
                    if pending:
                        to_fetch.extend(pending)
                    else:
                        finished.append(g["group_id"])  # scanned before the crash, not finalized
                elif (
                    self.mode == "full"
                    or g["scanned_gen"] == 0
                    or self.gen - g["scanned_gen"] >= self.options.rescan_every_runs
                ):
                    rows = self._scan_streams(g)
                    new_rows.extend(rows)
                    to_fetch.extend(rows)
                else:
                    # Even an inactive segment is checked: it no longer gains members, but
                    # deleted and merged profiles still leave it. The check is cheap.
                    self._submit(self._check_group, g)
            if new_rows or finished:
                # Applied here, before any fetcher starts: nothing else writes yet.
                with self.ctx.storage.transaction() as tx:
                    self._check_epoch(tx)
                    if new_rows:
                        tx.execute(insert(stream_t), [dict(r) for r in new_rows])
                    for group_id in finished:
                        self.writer.finalize_group_scan(tx, group_id)
                        self._mark_checked(tx, group_id)
            # Interleave endpoints: each has its own rate budget, so every budget gets
            # streams from the start instead of one endpoint's queue holding the workers.
            for stream in _interleave(to_fetch):
                self._submit(self._fetch_stream, stream)
            self._write_loop()
        finally:
            self.stop.set()
            self._drain()
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.decoder.close()
            if self.decoder.in_helpers:
                self.counters.counts["profiles_mapped_in_helpers"] += self.decoder.in_helpers
            self.stop.clear()
        if self.aborted is not None:
            raise self.aborted
        if self.errors:
            raise self.errors[0]

    def _drain(self) -> None:
        """Empty the queue until every fetcher has ended, so none blocks on a full queue."""
        while True:
            with self.outstanding_lock:
                if self.outstanding <= 0:
                    break
            try:
                kind, _key, _payload = self.pages.get(timeout=0.1)
            except queue.Empty:
                continue
            if kind == "task_done":
                with self.outstanding_lock:
                    self.outstanding -= 1
        while not self.pages.empty():
            self.pages.get_nowait()

    def _submit(self, fn, *args) -> None:
        with self.outstanding_lock:
            self.outstanding += 1
        self.pool.submit(self._task, fn, *args)

    def _task(self, fn, *args) -> None:
        try:
            if not self.stop.is_set():
                fn(*args)
        except _Stop:
            pass
        except BaseException as exc:  # handed to the writer thread, which re-raises
            self.errors.append(exc)
            self.stop.set()
        finally:
            self._enqueue(("task_done", None, None), force=True)

    def _enqueue(self, item, force: bool = False) -> None:
        while True:
            if self.stop.is_set() and not force:
                raise _Stop()
            try:
                self.pages.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    WRITE_BATCH = 16
    """Queued items applied in one transaction (fewer BEGIN/COMMIT and epoch checks)."""

    def _write_loop(self) -> None:
        trimmer = HeapTrimmer()
        while True:
            with self.outstanding_lock:
                idle = self.outstanding == 0
            if idle and self.pages.empty():
                return
            try:
                item = self.pages.get(timeout=0.5)
            except queue.Empty:
                if self.stop.is_set() and self.errors:
                    return
                continue
            # Take whatever else is already queued (up to WRITE_BATCH writes) and apply it
            # in the same transaction; a barrier ends the batch and is released after the
            # commit, so whoever waits on it sees everything queued before it written.
            batch, barrier = [], None
            while True:
                kind = item[0]
                if kind == "task_done":
                    with self.outstanding_lock:
                        self.outstanding -= 1
                elif kind == "barrier":
                    barrier = item[2]
                    break
                else:
                    batch.append(item)
                    if len(batch) >= self.WRITE_BATCH:
                        break
                try:
                    item = self.pages.get_nowait()
                except queue.Empty:
                    break
            if self.stop.is_set() and self.errors:
                if barrier is not None:
                    barrier.set()
                continue  # drain: the run is failing, do not write more
            if batch:
                with self.ctx.storage.transaction() as tx:
                    self._check_epoch(tx)
                    for kind, key, payload in batch:
                        if kind == "page":
                            self._apply_page(tx, key, payload)
                        elif kind == "stream_done":
                            self._stream_done(tx, key)
                        elif kind == "group_checked":
                            self._mark_checked(tx, key)
                        elif kind == "joins":
                            self.writer.write_members(tx, key, payload, scan=False)
                        elif kind == "create_streams":
                            tx.execute(insert(stream_t), payload)
                        elif kind == "finalize_scan":
                            self.writer.finalize_group_scan(tx, key)
                            self._mark_checked(tx, key)
            if barrier is not None:
                barrier.set()
            trimmer.maybe_trim()

    def _apply_page(self, tx, stream: dict, page: dict) -> None:
        if stream["kind"] == "profiles":
            self.writer.write_mapped(tx, page["mapped"])
            last, n = page["last"], len(page["mapped"])
        else:
            data = page["data"]
            self.writer.write_members(tx, stream["group_id"], [r.get("id") for r in data if isinstance(r, dict)])
            last, n = None, len(data)
        tx.execute(
            _ADVANCE_STREAM,
            {"b_store": self.store_id, "b_run": self.run_id, "b_key": stream["key"],
             "b_next": page["next_url"], "b_n": n, "b_last": last},
        )

    def _stream_done(self, tx, stream: dict) -> None:
        tx.execute(
            update(stream_t)
            .where(and_(stream_t.c.store_id == self.store_id, stream_t.c.run_id == self.run_id, stream_t.c.key == stream["key"]))
            .values(done=True, next_url=None)
        )
        if stream["kind"] != "members":
            return
        # this run's streams of the group: key -> done (the one just updated included)
        streams = dict(tx.execute(
            select(stream_t.c.key, stream_t.c.done).where(
                and_(
                    stream_t.c.store_id == self.store_id,
                    stream_t.c.run_id == self.run_id,
                    stream_t.c.group_id == stream["group_id"],
                )
            )
        ).all())
        if all(streams.values()) and not self._scan_incomplete(tx, stream, list(streams)):
            self.writer.finalize_group_scan(tx, stream["group_id"])
            self._mark_checked(tx, stream["group_id"])

    def _scan_incomplete(self, tx, stream: dict, keys: list[str]) -> bool:
        """Whether a finished *sliced* scan may have missed members; if so, one unsliced
        stream of the group is started (or a count check that decides it) and ``True``.

        Slices filter on ``joined_group_at``, a filter-only field the spec never shows
        (paths./api/lists/{id}/relationships/profiles.get x-klaviyo-filters; the items
        are just ``type`` and ``id``): a membership whose ``joined_group_at`` is unknown
        to the server matches no comparison, so only an unfiltered request returns it.
        Members "not seen" by such a scan have not left: before they are removed (or
        when the scan found fewer than ``profile_count``), an unfiltered scan decides.
        """
        gid = stream["group_id"]
        if len(keys) < 2 or any(k.endswith(":all") for k in keys):
            return False  # unsliced: complete by construction
        seen = self.writer.member_count(tx, gid, seen_in_run=True)
        kind = stream["key"].split(":")[1]
        group = {"kind": kind, "group_id": gid}
        expected = self.expected_members.get(gid)
        if expected is not None:
            if seen >= expected:
                return False
            self.counters.counts["group_scans_unsliced"] += 1
            row = self._unsliced_stream(group)
            tx.execute(insert(stream_t), [dict(row)])
            self._submit(self._fetch_stream, row)
            return True
        if seen >= self.writer.member_count(tx, gid):
            return False  # nobody would be removed
        self._submit(self._verify_scan, group, seen)
        return True

    def _verify_scan(self, group: dict, seen: int) -> None:
        """A sliced scan would remove members: is ``profile_count`` consistent with it?"""
        count, _processing = self._group_count(group)
        if count is not None and count <= seen:
            self._enqueue(("finalize_scan", group["group_id"], None))
            return
        self.counters.counts["group_scans_unsliced"] += 1
        row = self._unsliced_stream(group)
        self._enqueue(("create_streams", None, [dict(row)]))
        self._submit(self._fetch_stream, row)

    def _unsliced_stream(self, group: dict) -> dict:
        return {
            "store_id": self.store_id, "run_id": self.run_id,
            "key": f"members:{group['kind']}:{group['group_id']}:all", "kind": "members",
            "group_id": group["group_id"], "lo": None, "hi": None, "next_url": None, "last_value": None,
            "started": False, "done": False, "pages": 0, "records": 0,
        }

    def _mark_checked(self, tx, group_id: str) -> None:
        tx.execute(
            update(group_t)
            .where(and_(group_t.c.store_id == self.store_id, group_t.c.group_id == group_id))
            .values(checked_run=self.run_id)
        )

    # ----------------------------------------------------------- fetchers
    def _fetch_stream(self, stream: dict) -> None:
        """Fetch one stream page by page from its checkpoint (fetcher thread)."""
        url = stream["next_url"] if stream["started"] else None
        last_value = stream["last_value"]
        restarts = 0
        while True:
            if self.stop.is_set():
                raise _Stop()
            # Profile pages are decoded and mapped by the decoder (maybe in a helper
            # process), not by the writer: the writer is the one serial stage of the run.
            decode = self.decoder if stream["kind"] == "profiles" else None
            try:
                if url:
                    body = self.client.get_url(url, decode=decode)
                else:
                    path, params = self._first_request(stream, last_value)
                    body = self.client.get(path, params, decode=decode)
            except BadRequestError as exc:
                if url and exc.invalid_cursor and restarts < 3:
                    # Klaviyo refused the saved cursor: restart from the last value delivered.
                    restarts += 1
                    log.warning("store %s: stream %s cursor refused; restarting from its watermark", self.store_id, stream["key"])
                    url = None
                    continue
                raise
            if decode is not None:
                if body.last:
                    last_value = body.last
                next_url = body.next_url
                payload = {"mapped": body.mapped, "last": body.last, "next_url": next_url}
            else:
                next_url = (body.get("links") or {}).get("next")
                payload = {"data": body.get("data") or [], "next_url": next_url}
            self._enqueue(("page", stream, payload))
            if not next_url:
                self._enqueue(("stream_done", stream, None))
                return
            url = next_url

    def _first_request(self, stream: dict, last_value: str | None) -> tuple[str, dict]:
        if stream["kind"] == "profiles":
            return profile_request(stream["lo"], stream["hi"], after=last_value)
        kind = "list" if stream["key"].startswith("members:list:") else "segment"
        return member_request(kind, stream["group_id"], stream["lo"], stream["hi"])

    def _group_count(self, group: dict) -> tuple[int | None, bool]:
        """``profile_count`` (``None``: not given) and, for a segment, whether it
        ``is_processing`` (its membership and count are in flux: not to be trusted).

        Both in one request: ``fields[segment]`` allows ``profile_count`` and
        ``is_processing`` (paths./api/segments/{id}.get.parameters); ``is_processing`` is
        a required attribute of a segment (components.schemas
        .SegmentRetrieveResponseObjectResource.required).
        """
        kind, gid = group["kind"], group["group_id"]
        fields = "profile_count,is_processing" if kind == "segment" else "profile_count"
        detail = self.client.get(
            f"/api/{kind}s/{gid}", {f"additional-fields[{kind}]": "profile_count", f"fields[{kind}]": fields}
        )
        attrs = (detail.get("data") or {}).get("attributes") or {}
        count = attrs.get("profile_count")
        count = count if isinstance(count, int) and not isinstance(count, bool) and count >= 0 else None
        return count, attrs.get("is_processing") is True

    def _scan_streams(self, group: dict, expected: int | None = None) -> list[dict]:
        """The streams of a complete scan of one group (sliced when it is large).

        One cursor is one sequential chain of requests, so a big group is split into
        ``joined_group_at`` slices scanned in parallel; the first and last slices are
        open-ended, so nobody is missed whatever their join date.
        """
        if group["scanned_gen"] == 0 and expected is None:
            # Size unknown (never scanned): a few slices, so a big group is never one long
            # chain; asking profile_count first would cost a 1/s, 15/min budget per group.
            slices = self.options.first_scan_slices
        else:
            size = expected if expected is not None else group["member_count"]
            slices = max(1, min(self.options.max_member_slices, math.ceil(size / self.options.members_per_slice)))
        start = parse_iso(group["created"]) if group["created"] else None
        return [
            {
                "store_id": self.store_id,
                "run_id": self.run_id,
                "key": f"members:{group['kind']}:{group['group_id']}:{i:02d}",
                "kind": "members",
                "group_id": group["group_id"],
                "lo": lo,
                "hi": hi,
                "next_url": None,
                "last_value": None,
                "started": False,
                "done": False,
                "pages": 0,
                "records": 0,
            }
            for i, (lo, hi) in enumerate(time_slices(start, utcnow(), slices))
        ]

    def _start_scan(self, group: dict, expected: int | None = None) -> None:
        """Create a group's scan streams and run them (from a fetcher thread)."""
        if expected is not None:
            self.expected_members[group["group_id"]] = expected
        rows = self._scan_streams(group, expected)
        # Created by the writer (one writer: fetchers never wait for the database's write
        # lock); the queue is FIFO, so the rows exist before any page of these streams.
        self._enqueue(("create_streams", None, [dict(r) for r in rows]))
        for row in rows:
            self._submit(self._fetch_stream, row)

    def _check_group(self, group: dict) -> None:
        """Incremental: recent joins, then the member count tells whether anyone left."""
        kind, gid = group["kind"], group["group_id"]
        with self.ctx.storage.transaction(readonly=True) as tx:
            run = tx.execute(
                select(run_t.c.klaviyo_start, run_t.c.profiles_since)
                .where(and_(run_t.c.store_id == self.store_id, run_t.c.run_id == self.run_id))
            ).first()
        since = run.profiles_since
        path, params = member_request(kind, gid, format_iso(since) if since else None, None)
        body = self.client.get(path, params)
        while True:
            ids = [r.get("id") for r in body.get("data") or [] if isinstance(r, dict)]
            if ids:
                self._enqueue(("joins", gid, ids))
            next_url = (body.get("links") or {}).get("next")
            if not next_url:
                break
            if self.stop.is_set():
                raise _Stop()
            body = self.client.get_url(next_url)
        done = threading.Event()
        self._enqueue(("barrier", None, done))
        while not done.wait(0.2):
            if self.stop.is_set():
                raise _Stop()
        count, processing = self._group_count(group)
        with self.ctx.storage.transaction(readonly=True) as tx:
            ours = self.writer.member_count(tx, gid)
        if count is not None and count == ours and not processing:
            self.counters.counts["groups_unchanged"] += 1
            self._enqueue(("group_checked", gid, None))
        else:
            self.counters.counts["groups_rescanned"] += 1
            self._start_scan(group, expected=count)

    # ------------------------------------------------------------- finish
    def _confirm_deleted_profiles(self) -> None:
        """Full runs: mapped profiles not seen are checked by id; the gone are unmapped."""
        with self.ctx.storage.transaction() as tx:
            candidates = list(
                tx.execute(
                    select(profile_map_t.c.klaviyo_id).where(
                        and_(
                            profile_map_t.c.store_id == self.store_id,
                            (profile_map_t.c.last_seen_run != self.run_id) | (profile_map_t.c.last_seen_run.is_(None)),
                        )
                    )
                ).scalars()
            )
        for start in range(0, len(candidates), 100):
            chunk = candidates[start : start + 100]
            # Every page of the answer: a server may return fewer than page[size] records
            # per page, and an id not read is not a deleted profile.
            alive = []
            for page in iter_pages(
                self.client,
                PROFILES_PATH,
                {"filter": any_of("id", chunk), "page[size]": 100, "additional-fields[profile]": "subscriptions"},
            ):
                alive.extend(r for r in page.data if isinstance(r, dict))
            alive_ids = {r.get("id") for r in alive}
            gone = [k for k in chunk if k not in alive_ids]
            with self.ctx.storage.transaction() as tx:
                self._check_epoch(tx)
                if alive:
                    self.writer.write_profiles(tx, alive)
                if gone:
                    uids = self.writer._uids_of(tx, gone)
                    tx.execute(delete(membership_t).where(and_(membership_t.c.store_id == self.store_id, membership_t.c.klaviyo_id.in_(gone))))
                    tx.execute(delete(profile_map_t).where(and_(profile_map_t.c.store_id == self.store_id, profile_map_t.c.klaviyo_id.in_(gone))))
                    self.writer.recompute_tags(tx, uids)
                    self.counters.counts["profiles_deleted_in_klaviyo"] += len(gone)

    def _finish_run(self, run: dict) -> None:
        now = utcnow()
        report = self.report("completed", run["started_at"], False)
        with self.ctx.storage.transaction() as tx:
            self._check_epoch(tx)
            tx.execute(
                update(run_t)
                .where(and_(run_t.c.store_id == self.store_id, run_t.c.run_id == self.run_id))
                .values(finished_at=now, outcome="completed", phase="done", report_json=report.model_dump_json())
            )
            tx.execute(delete(stream_t).where(and_(stream_t.c.store_id == self.store_id, stream_t.c.run_id == self.run_id)))
            values = dict(current_run_id=None, phase=None, last_success_at=now, consecutive_errors=0,
                          counts_json=json.dumps(dict(self.counters.counts)))
            if run["klaviyo_start"] is not None:
                values["profiles_watermark"] = run["klaviyo_start"]
            tx.execute(update(integration_t).where(integration_t.c.store_id == self.store_id).values(**values))

    # ------------------------------------------------------------ helpers
    def _check_epoch(self, tx) -> None:
        # FOR UPDATE (PostgreSQL): an uninstall either commits before this write or waits for it.
        row = tx.execute(
            select(integration_t.c.epoch, integration_t.c.installed)
            .where(integration_t.c.store_id == self.store_id)
            .with_for_update()
        ).first()
        if row is None or not row.installed or row.epoch != self.epoch:
            exc = SyncCancelled("the integration was cancelled")
            self._abort(exc)
            raise exc
        try:
            lease.fence(tx, self.store_id, self.options.lease_owner)
        except LeaseLost as exc:
            self._abort(exc)
            raise

    def _set_phase(self, phase: str) -> None:
        with self.ctx.storage.transaction() as tx:
            self._check_epoch(tx)
            tx.execute(update(integration_t).where(integration_t.c.store_id == self.store_id).values(phase=phase))
            tx.execute(update(run_t).where(and_(run_t.c.store_id == self.store_id, run_t.c.run_id == self.run_id)).values(phase=phase))

    def _watch(self) -> None:
        """Renew the lease and notice cancellation while the run works."""
        last_renew = time.monotonic()
        while not self.finished.wait(0.5):
            try:
                with self.ctx.storage.transaction(readonly=True) as tx:
                    row = tx.execute(
                        select(integration_t.c.epoch, integration_t.c.installed).where(integration_t.c.store_id == self.store_id)
                    ).first()
                if row is None or not row.installed or row.epoch != self.epoch:
                    self._abort(SyncCancelled("the integration was cancelled"))
                    return
                if self.options.stop_event is not None and self.options.stop_event.is_set():
                    self._abort(SyncCancelled("the host asked the sync to stop"))
                    return
                if time.monotonic() - last_renew > 15:
                    if not lease.renew(self.ctx.storage, self.store_id, self.options.lease_owner):
                        self._abort(LeaseLost("this worker lost the sync lease to another worker"))
                        return
                    last_renew = time.monotonic()
            except Exception:  # a transient database hiccup must not kill the watcher
                log.debug("watcher check failed", exc_info=True)

    def _abort(self, exc: BaseException) -> None:
        """Stop every fetcher now, including those waiting for a rate budget or a backoff."""
        self.errors.append(exc)
        self.aborted = exc
        self.stop.set()
        cancel = getattr(self.client, "cancel", None)
        if cancel is not None:
            cancel()

    def report(self, outcome: str, started: datetime, resumed: bool, message: str = "") -> SyncReport:
        return SyncReport(
            integration="klaviyo",
            store_id=self.store_id,
            mode=getattr(self, "mode", "full"),
            outcome=outcome,
            message=message,
            started_at=started,
            finished_at=utcnow(),
            resumed=resumed,
            counts=dict(self.counters.counts),
            requests=dict(getattr(self.client, "stats", {}) or {}),
            skipped=[SkippedRecord(source_id=k, reason=r) for k, r in self.counters.skipped],
            warnings=list(self.counters.warnings),
        )
