"""The sync engine: one run of one store, full or incremental, resumable.

Shape of a run
--------------
1. *Probe*: the newest and oldest ``updated`` timestamps (two one-record requests).
   The newest becomes the next watermark: it is Klaviyo's own clock at the start of
   the run, so no local clock skew can make an incremental run miss an update.
2. *Groups*: every list and segment is read and reconciled (new, renamed, deleted).
3. *Streams*, concurrently on a thread pool, all sharing the client's rate budgets:
   profile windows on ``updated`` and membership scans and checks of each group (what
   each group needs is decided by :class:`~smartpush_plugin_klaviyo.groups.MembershipChecks`).
   Fetchers put typed messages on a bounded spool (memory stays flat); a single writer
   (this thread) applies each page and its stream checkpoint in one transaction.
4. *Finish*: removals are applied per group as each complete scan ends, deleted
   Klaviyo profiles are confirmed and unmapped (full runs), the watermark moves.

A crash at any point leaves the run unfinished; the next call resumes it from the
checkpoints (pages re-fetched after the last commit are applied idempotently).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta


from hookspecs.interfaces import HostContext
from hookspecs.types import SkippedRecord, SyncReport
from smartpush_plugin_klaviyo.groups import MembershipChecks, apply_groups, fetch_groups
from smartpush_plugin_klaviyo import lease
from smartpush_plugin_klaviyo.errors import (
    LeaseLost,
    SyncCancelled,
    SyncStopped,
    TransientError,
)
from smartpush_plugin_klaviyo.memory import HeapTrimmer
from smartpush_plugin_klaviyo.pagination import any_of, paginate
from smartpush_plugin_klaviyo.profile_pages import (
    ProfilePageDecoder,
    RawProfilePage,
    decode_profile_page,
    raw_profile_page,
)
from smartpush_plugin_klaviyo.spool import (
    Barrier,
    GroupChecked,
    JoinsRead,
    Message,
    PageRead,
    ScanFinished,
    Spool,
    SpoolClosed,
    StreamEnded,
    StreamsPlanned,
    TaskDone,
)
from smartpush_plugin_klaviyo.run_state import RunState
from smartpush_plugin_klaviyo.streams import (
    PROFILES_PATH,
    SUPPRESSION_FIELDS,
    member_request,
    profile_request,
    suppression_request,
    sweep_request,
    time_slices,
)
from smartpush_plugin_klaviyo.timeutil import floor_second, format_iso, parse_iso, utcnow
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
    """Every group is rescanned completely at least once in this many incremental runs
    (large groups in turns spread evenly over the runs), whatever ``profile_count`` says:
    the spec promises nothing about that count (it is just a nullable integer), so a
    removal is found within this many runs at most."""
    small_group_members: int = 500
    """An incremental run rescans a group of at most this many members outright (a few
    requests on the 750/min membership endpoints) instead of checking its joins and its
    ``profile_count`` (a 15/min budget stacked on the endpoint's)."""
    unsliced_scan_max: int = 20_000
    """Incremental rescans of groups up to this size are one unfiltered read (complete by
    construction); bigger ones are sliced on ``joined_group_at`` to run in parallel."""
    count_checks_per_run: int = 10
    """``profile_count`` requests an incremental run may make (at 1/s and 15/min, ten take
    about ten seconds): large groups not due for their rescan are count-checked, stalest
    first, so a removal from them is usually found the next day."""
    sweep_runs: int = 7
    """Incremental runs read the account's profiles once every this many runs, a portion
    per run sorted by ``created``: deleted and merged profiles are unmapped, and consent
    changes that did not move ``updated`` arrive, within this many runs."""
    spool_memory_pages: int = 64
    """Pages held in memory between the fetchers and the writer (see :mod:`.spool`)."""
    map_processes: int = 0
    """Helper processes that decode and map profile pages; ``0`` (the default): the writer
    decodes and maps each page itself, the fetch threads only fetch (measured cheaper:
    see :mod:`.profile_pages`)."""
    map_processes_after: int = 2_000
    """With helper processes: profiles decoded in the fetch threads before they start (a
    small run never pays their start-up)."""
    lease_owner: str = field(default_factory=lease.new_owner_id)
    lease_seconds: int = lease.DEFAULT_LEASE_SECONDS
    """How long the store's lease lasts unrenewed (renewed every third of it): a worker
    frozen this long loses the store to another one, and writes nothing after."""
    stop_event: threading.Event | None = None
    """Set by the host to stop a run early (the run stays resumable)."""


def _last_created(mapped: list) -> str | None:
    """The ``created`` of a page's last mapped profile that has one (the sweep's position)."""
    for m in reversed(mapped):
        created = getattr(m, "created", None)
        if created is not None:
            return format_iso(created)
    return None


def _restart_value(key: str, page) -> str | None:
    """Where stream ``key`` restarts after a refused cursor, once its decoded ``page`` was
    delivered: the sweep from the last ``created`` it mapped, a profile window from the last
    ``updated`` read, any other read from its first page (``None``)."""
    if key == "sweep":
        return _last_created(page.mapped)
    return page.last if key.startswith("profiles:") else None


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
        self.spool = Spool(options.spool_memory_pages, stop=self.stop)
        self.outstanding = 0
        self.outstanding_lock = threading.Lock()
        self.counters = RunCounters()
        self.state = RunState(ctx.storage, ctx.store_id, options.lease_owner, on_lost=self._abort)
        self.pool: ThreadPoolExecutor | None = None
        self.decoder = ProfilePageDecoder(0)
        self.delivered: dict[str, str] = {}
        """Per profile window, the last ``updated`` the writer decoded (where a refused
        cursor restarts when the fetch thread hands pages on undecoded)."""
        self.aborted: BaseException | None = None
        self.progress = {"groups_total": 0, "groups_done": 0}
        self._progress_at = 0.0

    # ------------------------------------------------------------------ entry
    def execute(self, requested_mode: str) -> SyncReport:
        started = utcnow()
        integ = self.state.integration()
        run, resumed = self._load_or_create_run(requested_mode, integ)
        self.run_id, self.gen, self.mode = run["run_id"], run["seq"], run["mode"]
        self.state.begin(self.run_id)
        self.profiles_since = run["profiles_since"]
        """Incremental: joins and profiles after this (the last watermark less the overlap)."""
        self.writer = PageWriter(self.ctx, self.run_id, self.gen, self.counters)
        self.checks = MembershipChecks(
            client=self.client, storage=self.ctx.storage, state=self.state, writer=self.writer,
            counters=self.counters, options=self.options, scheduler=self, store_id=self.store_id,
            run_id=self.run_id, gen=self.gen, mode=self.mode, profiles_since=self.profiles_since,
        )
        watcher = threading.Thread(target=self._watch, name=f"klaviyo-watch-{self.store_id}", daemon=True)
        watcher.start()
        try:
            self._set_phase("groups")
            self._sync_groups()
            groups = self.state.groups()
            # Counted before the phase is saved, so its one progress record already reads
            # "checking groups: 0 of N" (a short daily run may end its reading before the
            # writer's first once-a-second save).
            self.progress["groups_done"] = sum(1 for g in groups if g["checked_run"] == self.run_id)
            self.progress["groups_total"] = len(groups)
            self._set_phase("profiles_and_memberships")
            self._run_streams(groups)
            self._set_phase("finishing")
            self._tag_deferred_groups()
            if self.mode == "full":
                self._confirm_deleted_profiles()
            else:
                self._confirm_swept_profiles()
            self._finish_run(run)
        except Exception:
            # What the run's own thread raised after an abort (a request cancelled under
            # it, a closed spool) is the abort's consequence: report the abort itself, so
            # a host stop stays "stopped" and its job is due again at once.
            if self.aborted is not None:
                raise self.aborted from None
            raise
        finally:
            self.finished.set()
            self.spool.close()
            watcher.join(timeout=5)
        if self.aborted is not None:
            raise self.aborted
        return self.report("completed", started, resumed)

    # ----------------------------------------------------------- run records
    def _load_or_create_run(self, requested_mode: str, integ) -> tuple[dict, bool]:
        if integ.current_run_id:
            row = self.state.unfinished_run(integ.current_run_id)
            if row is not None:
                log.info("store %s: resuming run %s (%s)", self.store_id, row["run_id"], row["mode"])
                return row, True
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
        extra: list[dict] = []
        if mode == "full":
            windows = time_slices(oldest, newest, self.options.profile_windows)
        else:
            since = run["profiles_since"]
            windows = [(format_iso(since) if since else None, None)]
            # Consent that changed without moving ``updated``: new suppressions now, the
            # rest (re-subscribes, SMS) through the rolling sweep within sweep_runs runs.
            extra = [
                {"key": f"suppressed:{which}", "lo": format_iso(since) if since else None, "hi": None}
                for which in SUPPRESSION_FIELDS
            ]
            extra.append({"key": "sweep", "lo": integ.sweep_position, "hi": None})
        streams = [{"key": f"profiles:{i:02d}", "kind": "profiles", "lo": lo, "hi": hi}
                   for i, (lo, hi) in enumerate(windows)]
        self.state.create_run(run, streams + [{"kind": "profiles", **e} for e in extra])
        return run, False

    PROBE_MAX_PAGES = 5

    def _probe(self, sort: str) -> datetime | None:
        """The ``updated`` of the first profile in ``sort`` order (``None``: no profiles).

        A page may be empty and still have a ``links.next`` (the spec promises no page
        size, only a maximum): a few pages are followed to find the first record.
        """
        pages = paginate(self.client, PROFILES_PATH, {"sort": sort, "page[size]": 1, "fields[profile]": "updated"})
        for n, page in enumerate(pages, 1):
            first = next((r for r in page.data if isinstance(r, dict)), None)
            if first is not None:
                attrs = first.get("attributes")
                return parse_iso(attrs.get("updated") if isinstance(attrs, dict) else None)
            if n >= self.PROBE_MAX_PAGES:
                break
        return None

    # ------------------------------------------------------------- groups
    def _sync_groups(self) -> None:
        found = list(fetch_groups(self.client))
        with self.ctx.storage.transaction() as tx:
            self.state.verify(tx)
            counts = apply_groups(tx, self.writer, found)
            for key, value in counts.items():
                self.counters.counts[key] = value

    # ------------------------------------------------------------ streams
    def _run_streams(self, groups: list[dict]) -> None:
        streams = self.state.streams()
        self.pool = ThreadPoolExecutor(max_workers=self.options.workers, thread_name_prefix=f"klaviyo-{self.store_id}")
        self.decoder = ProfilePageDecoder(self.options.map_processes, start_after=self.options.map_processes_after)
        try:
            plan = self.checks.plan_run(groups, streams)
            to_fetch = [s for s in streams if s["kind"] == "profiles" and not s["done"]] + plan.to_fetch
            self.sweep_quota = self._sweep_quota()
            # Large groups not due for a rescan: recent joins, then (while the run's count
            # budget lasts) profile_count, stalest first.
            for g in plan.to_check:
                self.submit(self.checks.check_group, g)
            if plan.new_rows or plan.finished:
                # Applied here, before any fetcher starts: nothing else writes yet.
                with self.ctx.storage.transaction() as tx:
                    self.state.verify(tx)
                    if plan.new_rows:
                        self.state.add_streams(tx, plan.new_rows)
                    for group_id in plan.finished:
                        self.writer.finalize_group_scan(tx, group_id)
                        self._mark_checked(tx, group_id)
            # Interleave endpoints: each has its own rate budget, so every budget gets
            # streams from the start instead of one endpoint's queue holding the workers.
            for stream in _interleave(to_fetch):
                self.fetch(stream)
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
        """Wait until every fetch task has ended, dropping what they queue."""
        while True:
            with self.outstanding_lock:
                if self.outstanding <= 0:
                    break
            if isinstance(self.spool.get(timeout=0.1), TaskDone):
                with self.outstanding_lock:
                    self.outstanding -= 1
        self.spool.clear()

    def submit(self, fn, *args) -> None:
        with self.outstanding_lock:
            self.outstanding += 1
        self.pool.submit(self._task, fn, *args)

    def fetch(self, stream: dict) -> None:
        """Fetch ``stream`` on a fetch thread."""
        self.submit(self._fetch_stream, stream)

    def wait(self, event: threading.Event) -> None:
        """Block until ``event`` is set, or the run stops."""
        while not event.wait(0.2):
            self.check_stop()

    def check_stop(self) -> None:
        if self.stop.is_set():
            raise _Stop()

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
            self.enqueue(TaskDone(), force=True)

    def enqueue(self, message: Message, force: bool = False) -> None:
        """Hand a message to the writer (never waits for it: see :class:`.spool.Spool`)."""
        if self.stop.is_set() and not force:
            raise _Stop()
        try:
            self.spool.put(message)
        except SpoolClosed:
            raise _Stop() from None

    WRITE_BATCH = 16
    """Messages applied in one transaction (fewer BEGIN/COMMIT and epoch checks)."""

    def _write_loop(self) -> None:
        trimmer = HeapTrimmer()
        spool = self.spool
        while True:
            with self.outstanding_lock:
                idle = self.outstanding == 0
            if idle and spool.empty():
                return
            message = spool.get(timeout=0.5)
            if message is None:
                if self.stop.is_set() and self.errors:
                    return
                continue
            # Take whatever else is already queued (up to WRITE_BATCH writes) and apply it
            # in the same transaction; a barrier ends the batch and is released after the
            # commit, so whoever waits on it sees everything queued before it written.
            batch, barrier = [], None
            while message is not None:
                if isinstance(message, TaskDone):
                    with self.outstanding_lock:
                        self.outstanding -= 1
                elif isinstance(message, Barrier):
                    barrier = message.event
                    break
                else:
                    batch.append(message)
                    if len(batch) >= self.WRITE_BATCH:
                        break
                message = spool.get_nowait()
            if self.stop.is_set() and self.errors:
                if barrier is not None:
                    barrier.set()
                continue  # drain: the run is failing, do not write more
            if batch:
                with self.ctx.storage.transaction() as tx:
                    self.state.verify(tx)
                    for message in batch:
                        self._apply(tx, message)
            if barrier is not None:
                barrier.set()
            trimmer.maybe_trim()
            if time.monotonic() - self._progress_at >= 1.0:
                self._save_progress()

    def _apply(self, tx, message: Message) -> None:
        """Apply one message in the writer's transaction."""
        if isinstance(message, PageRead):
            self._apply_page(tx, message)
        elif isinstance(message, StreamEnded):
            self._stream_done(tx, message.stream, message.hi)
        elif isinstance(message, GroupChecked):
            self._mark_checked(tx, message.group_id)
        elif isinstance(message, JoinsRead):
            self.writer.write_members(tx, message.group_id, message.klaviyo_ids, scan=False)
        elif isinstance(message, StreamsPlanned):
            self.state.add_streams(tx, message.rows)
        elif isinstance(message, ScanFinished):
            self.writer.finalize_group_scan(tx, message.group_id)
            self._mark_checked(tx, message.group_id)
        else:  # pragma: no cover - a message kind added without its writer
            raise TypeError(f"no writer for {type(message).__name__}")

    def _apply_page(self, tx, page: PageRead) -> None:
        stream = page.stream
        profiles, last = page.profiles, page.last
        if isinstance(profiles, RawProfilePage):
            # Decoded and mapped here, by the thread that writes it (see .profile_pages).
            try:
                profiles = decode_profile_page(profiles.content)
            except ValueError:
                # Not a collection after all: the run fails before this page's checkpoint
                # moves, and the next run fetches the page again.
                raise TransientError("a page of profiles is not a JSON:API collection",
                                     endpoint=PROFILES_PATH) from None
            last = _restart_value(stream["key"], profiles)
            if last:
                self.delivered[stream["key"]] = last
        if profiles is not None:
            self.writer.write_mapped(tx, profiles.mapped)
            records = profiles.records
        else:
            self.writer.write_members(tx, stream["group_id"], page.member_ids)
            records = len(page.member_ids or ())
        self.state.advance(tx, stream["key"], page.next_url, records, last)

    def _stream_done(self, tx, stream: dict, hi: str | None = None) -> None:
        # the sweep's portion ends at ``hi`` (None: the end of the account)
        self.state.end_stream(tx, stream["key"], hi=hi, sweep=stream["key"] == "sweep")
        if stream["kind"] != "members":
            return
        # this run's streams of the group: key -> done (the one just updated included)
        streams = self.state.group_streams(tx, stream["group_id"])
        if all(streams.values()) and not self.checks.scan_incomplete(tx, stream, list(streams)):
            self.writer.finalize_group_scan(tx, stream["group_id"])
            self._mark_checked(tx, stream["group_id"])

    def _mark_checked(self, tx, group_id: str) -> None:
        self.progress["groups_done"] += 1
        self.state.mark_checked(tx, group_id)

    # ----------------------------------------------------------- fetchers
    def _fetch_stream(self, stream: dict) -> None:
        """Fetch one stream page by page from its checkpoint (fetcher thread)."""
        key = stream["key"]
        # Profile pages: the writer decodes and maps them (the fetch thread reads only
        # ``links.next``), or helper processes do. The sweep decodes here: where its
        # portion ends depends on the ``created`` of the profiles it read.
        decode = None
        if stream["kind"] == "profiles":
            decode = self.decoder if key == "sweep" or self.decoder.processes else raw_profile_page
        last = {"value": stream["last_value"]}

        def restart() -> tuple[str, dict]:
            # Klaviyo refused the saved cursor (they expire): from the last value delivered
            # (pages handed to the writer undecoded: the last it decoded; the pages after
            # it are read again, and the writer dedupes by id).
            log.warning("store %s: stream %s cursor refused; restarting from its watermark", self.store_id, key)
            self.counters.counts["cursor_restarts"] += 1
            return self._first_request(stream, self.delivered.get(key) or last["value"])

        start_url = stream["next_url"] if stream["started"] else None
        path, params = (None, None) if start_url else self._first_request(stream, last["value"])
        quota = self.sweep_quota if key == "sweep" else None
        records = stream["records"]
        for page in paginate(self.client, path, params, start_url=start_url, restart=restart, decode=decode):
            if self.stop.is_set():
                raise _Stop()
            if isinstance(page, RawProfilePage):
                message = PageRead(stream, page.next_url, profiles=page)
            elif decode is not None:
                value = _restart_value(key, page)
                if value:
                    last["value"] = value
                message = PageRead(stream, page.next_url, profiles=page, last=value)
            else:
                ids = [r.get("id") for r in page.data if isinstance(r, dict)]
                message = PageRead(stream, page.next_url, member_ids=ids)
            self.enqueue(message)
            if key == "sweep":
                self.counters.counts["profiles_swept"] += page.records
            if not page.next_url:
                self.enqueue(StreamEnded(stream))
                return
            if quota is not None and last["value"]:
                # The sweep reads its share of the account; everything created before the
                # second of the last profile delivered was delivered (the rest of that
                # second is read again next run), so that second is where its portion ends.
                records += page.records
                second = floor_second(parse_iso(last["value"]))
                lo = parse_iso(stream["lo"])
                if records >= quota and (lo is None or second > floor_second(lo)):
                    self.enqueue(StreamEnded(stream, format_iso(second)))
                    return

    def _first_request(self, stream: dict, last_value: str | None) -> tuple[str, dict]:
        key = stream["key"]
        if key == "sweep":
            return sweep_request(stream["lo"], after=last_value)
        if key.startswith("suppressed:"):
            return suppression_request(key.split(":", 1)[1], stream["lo"])
        if stream["kind"] == "profiles":
            return profile_request(stream["lo"], stream["hi"], after=last_value)
        kind = "list" if key.startswith("members:list:") else "segment"
        return member_request(kind, stream["group_id"], stream["lo"], stream["hi"])

    def _sweep_quota(self) -> int:
        """Profiles the sweep reads this run: its share of the mapped profiles (a page at least)."""
        with self.ctx.storage.transaction(readonly=True) as tx:
            mapped = self.writer.mapped_count(tx)
        return max(100, math.ceil(mapped / self.options.sweep_runs))

    # ------------------------------------------------------------- finish
    def _tag_deferred_groups(self) -> None:
        """Tag the members of the groups that held none when the run began (their pages
        were stored untagged): one statement and one transaction per group."""
        with self.ctx.storage.transaction(readonly=True) as tx:
            groups = sorted(self.writer.deferred_groups(tx))
        for group_id in groups:
            if self.aborted is not None:
                raise self.aborted
            with self.ctx.storage.transaction() as tx:
                self.state.verify(tx)
                self.writer.apply_deferred_tags(tx, [group_id])

    def _confirm_deleted_profiles(self) -> None:
        """Full runs: mapped profiles not seen are checked by id; the gone are unmapped."""
        with self.ctx.storage.transaction(readonly=True) as tx:
            candidates = self.writer.not_seen_in_run(tx, self.run_id)
        self._confirm_gone(candidates)

    def _confirm_swept_profiles(self) -> None:
        """Incremental runs: mapped profiles whose ``created`` lies in the range the sweep
        read this run, but that it did not return, are checked by id; the gone (deleted,
        or merged into another profile) are unmapped. When the sweep reached the end of
        the account, profiles whose ``created`` is unknown are checked too."""
        sweep = self.state.stream("sweep")
        if sweep is None or not sweep["done"]:
            return
        # created in [lo, hi); reaching the end of the account, unknown ``created`` too
        with self.ctx.storage.transaction(readonly=True) as tx:
            candidates = self.writer.not_seen_in_run(tx, self.run_id, created_from=sweep["lo"],
                                                     created_before=sweep["hi"], ranged=True)
        self._confirm_gone(candidates)

    def _confirm_gone(self, candidates: list[str]) -> None:
        """Mapped profiles not seen in this run (``candidates``) are looked up by id (100
        per request); those Klaviyo no longer has lose their id mapping and tags."""
        self.counters.counts["profiles_checked_by_id"] += len(candidates)
        for start in range(0, len(candidates), 100):
            chunk = candidates[start : start + 100]
            # Every page of the answer: a server may return fewer than page[size] records
            # per page, and an id not read is not a deleted profile.
            alive = {}
            for page in paginate(
                self.client,
                PROFILES_PATH,
                {"filter": any_of("id", chunk), "page[size]": 100, "additional-fields[profile]": "subscriptions"},
            ):
                for r in page.data:
                    if isinstance(r, dict):
                        alive[r.get("id")] = r  # a restarted read repeats pages: by id
            gone = [k for k in chunk if k not in alive]
            with self.ctx.storage.transaction() as tx:
                self.state.verify(tx)
                if alive:
                    self.writer.write_profiles(tx, list(alive.values()))
                if gone:
                    self.writer.unmap(tx, gone)
                    self.counters.counts["profiles_deleted_in_klaviyo"] += len(gone)

    def _finish_run(self, run: dict) -> None:
        report = self.report("completed", run["started_at"], False)
        self.state.finish(self.mode, run["klaviyo_start"], report.model_dump_json(), dict(self.counters.counts))

    # ------------------------------------------------------------ helpers
    def progress_record(self) -> dict:
        """Where this run is, as :class:`hookspecs.types.SyncProgress` fields."""
        phase = getattr(self, "phase", "starting")
        done, total = self.progress["groups_done"], self.progress["groups_total"]
        profiles = self.counters.counts.get("profiles_seen", 0)
        if phase == "profiles_and_memberships" and total:
            label = "checking groups" if self.mode == "incremental" else "reading groups"
            message = f"{label}: {done} of {total}; profiles read: {profiles:,}"
            return {"phase": phase, "done": done, "total": total, "unit": "groups", "message": message}
        message = {
            "groups": "reading lists and segments",
            "profiles_and_memberships": "reading profiles",  # an account without lists or segments
            "finishing": "checking deleted profiles",
        }.get(phase, phase)
        return {"phase": phase, "done": profiles or None, "total": None, "unit": "profiles", "message": message}

    def _save_progress(self) -> None:
        self._progress_at = time.monotonic()
        self.state.save_progress(dict(self.progress_record(), updated_at=utcnow().isoformat()))

    def _set_phase(self, phase: str) -> None:
        self.phase = phase
        self.state.set_phase(phase)
        self._save_progress()

    def _watch(self) -> None:
        """Renew the lease and notice cancellation while the run works."""
        last_renew = last_check = time.monotonic()
        stop_event = self.options.stop_event
        while not self.finished.wait(0.05):
            # The host's stop is looked at every 50 ms, before any database read (which may
            # wait for a lock): a Ctrl-C stops the run at once, at its next checkpoint.
            if stop_event is not None and stop_event.is_set():
                self._abort(SyncStopped("the host asked the sync to stop; the next run resumes from its checkpoint"))
                return
            if time.monotonic() - last_check < 0.5:
                continue
            last_check = time.monotonic()
            try:
                if self.state.cancelled():
                    self._abort(SyncCancelled("the integration was cancelled"))
                    return
                if time.monotonic() - last_renew > lease.renew_interval(self.options.lease_seconds):
                    if not lease.renew(self.ctx.storage, self.store_id, self.options.lease_owner, self.options.lease_seconds):
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
