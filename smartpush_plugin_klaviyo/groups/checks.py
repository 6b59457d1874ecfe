"""How a run verifies each group's membership: rescans, joins checks, ``profile_count``.

Every run must find each join and each removal of every list and segment, within Klaviyo's
limits, on accounts with hundreds of groups. The membership endpoints allow 750 requests a
minute; ``profile_count`` (an additional field of ``/api/lists/{id}`` and
``/api/segments/{id}``) has its own 1/s, 15/min stacked on the endpoint's. So:

- full runs and never-scanned groups are scanned completely (sliced on
  ``joined_group_at`` when large, so the slices run in parallel);
- an incremental run rescans a *small* group outright (a few requests, exact), and a large
  one in its turn, once every ``rescan_every_runs`` runs (turns balanced by size,
  :func:`rescan_turns`);
- a large group not due for its rescan has its recent joins read, then, while the run's
  count budget lasts (stalest first), ``profile_count`` tells whether anyone left: if it
  differs from the members we hold (or a segment ``is_processing``) the group is rescanned
  now, else removals wait for its turn;
- a *sliced* scan that would remove members is checked before anyone is removed: a
  membership whose ``joined_group_at`` is unknown to the server matches no slice's filter.

:class:`MembershipChecks` makes these decisions for one run. It never writes: what it
decides travels to the writer as typed messages (:mod:`..spool`), and the fetching is
scheduled by the run (:class:`Scheduler`).
"""

from __future__ import annotations

import math
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from smartpush_plugin_klaviyo.pagination import paginate
from smartpush_plugin_klaviyo.spool import Barrier, GroupChecked, JoinsRead, Message, ScanFinished, StreamsPlanned
from smartpush_plugin_klaviyo.streams import member_request, time_slices
from smartpush_plugin_klaviyo.timeutil import format_iso, parse_iso, utcnow

__all__ = ["Scheduler", "GroupPlan", "MembershipChecks", "rescan_turns"]


class Scheduler(Protocol):
    """What a check needs from the run that owns the fetch threads."""

    def enqueue(self, message: Message) -> None:
        """Hand ``message`` to the writer (raises the run's stop signal when stopping)."""

    def submit(self, fn: Callable, *args) -> None:
        """Run ``fn(*args)`` on a fetch thread."""

    def fetch(self, stream: dict) -> None:
        """Fetch ``stream`` (a stream row) on a fetch thread."""

    def wait(self, event: threading.Event) -> None:
        """Block until ``event`` is set (raises the run's stop signal when stopping)."""

    def check_stop(self) -> None:
        """Raise the run's stop signal if the run is stopping."""


def rescan_turns(groups: list[dict], small: int, every: int) -> dict[str, int]:
    """The run (``seq % every``) in which each large group is rescanned: the groups are
    dealt into ``every`` turns, largest first into the lightest turn, so each run reads
    about the same number of pages (by count alone, a few big groups could land in one
    run). Groups are taken in a fixed order (a hash of the id), so turns move little as
    sizes change; a group whose turn moved is still rescanned within ``every`` runs, by
    the age rule in :meth:`MembershipChecks.plan_group`."""
    large = [g for g in groups if (g["member_count"] or 0) > small]
    large.sort(key=lambda g: (-(g["member_count"] or 0), zlib.crc32(g["group_id"].encode())))
    load = [0] * every
    turns: dict[str, int] = {}
    for g in large:
        turn = min(range(every), key=lambda t: (load[t], t))
        turns[g["group_id"]] = turn
        load[turn] += g["member_count"] or 0
    return turns


@dataclass
class GroupPlan:
    """What a run does about its groups (see :meth:`MembershipChecks.plan_run`)."""

    to_fetch: list[dict] = field(default_factory=list)
    """Membership streams to fetch: this run's new ones and the unfinished ones resumed."""
    new_rows: list[dict] = field(default_factory=list)
    """Streams to create before any fetcher starts."""
    finished: list[str] = field(default_factory=list)
    """Groups scanned before a crash whose scan was not finalized."""
    to_check: list[dict] = field(default_factory=list)
    """Large groups not due for a rescan: joins (and maybe a count) check, stalest first."""


class MembershipChecks:
    """One run's membership decisions (thread-safe: checks run on fetch threads).

    The run's parts it uses: ``client`` (reads), ``storage`` (read-only transactions),
    ``state`` (:class:`~smartpush_plugin_klaviyo.run_state.RunState`, to add a stream in the
    writer's transaction), ``writer`` (member counts), ``counters``, ``options``
    (:class:`~smartpush_plugin_klaviyo.sync.SyncOptions`) and ``scheduler``; the run's ids:
    ``store_id``, ``run_id``, ``gen`` (its sequence number), ``mode`` (``"full"`` or
    ``"incremental"``) and ``profiles_since`` (incremental: joins after it are read).
    """

    def __init__(self, *, client, storage, state, writer, counters, options, scheduler: Scheduler,
                 store_id: str, run_id: str, gen: int, mode: str, profiles_since) -> None:
        self.client, self.storage, self.state, self.writer = client, storage, state, writer
        self.counters, self.options, self.scheduler = counters, options, scheduler
        self.store_id, self.run_id, self.gen, self.mode = store_id, run_id, gen, mode
        self.profiles_since = profiles_since
        self.turns: dict[str, int] = {}
        self.expected_members: dict[str, int] = {}
        """group id -> the ``profile_count`` a rescan of this run was started with."""
        self._count_lock = threading.Lock()
        self._counts_left = options.count_checks_per_run

    # ------------------------------------------------------------ planning
    def plan_run(self, groups: list[dict], streams: list[dict]) -> GroupPlan:
        """Plan every group not yet checked in this run; ``streams`` are the run's stream
        rows so far (a resumed run carries on with its groups' unfinished streams)."""
        by_group: dict[str, list[dict]] = {}
        for s in streams:
            if s["kind"] == "members":
                by_group.setdefault(s["group_id"], []).append(s)
        self.turns = rescan_turns(groups, self.options.small_group_members, self.options.rescan_every_runs)
        plan = GroupPlan()
        for g in groups:
            if g["checked_run"] == self.run_id:
                continue
            existing = by_group.get(g["group_id"])
            if existing:
                pending = [s for s in existing if not s["done"]]
                if pending:
                    plan.to_fetch.extend(pending)
                else:
                    plan.finished.append(g["group_id"])  # scanned before the crash, not finalized
                continue
            rows = self.plan_group(g)
            if rows is None:
                plan.to_check.append(g)
            else:
                plan.new_rows.extend(rows)
                plan.to_fetch.extend(rows)
        # Even an inactive segment is checked: it gains nobody, but deleted and merged
        # profiles still leave it.
        plan.to_check.sort(key=lambda g: (g["scanned_gen"], g["group_id"]))
        return plan

    def plan_group(self, group: dict) -> list[dict] | None:
        """What this run does to verify one group's membership: the streams of a complete
        scan, or ``None`` for a joins (and maybe count) check (:meth:`check_group`)."""
        if self.mode == "full" or group["scanned_gen"] == 0:
            return self.scan_streams(group)
        size = group["member_count"] or 0
        every = self.options.rescan_every_runs
        due = (
            size <= self.options.small_group_members
            or self.gen - group["scanned_gen"] >= every
            or self.turns.get(group["group_id"]) == self.gen % every
        )
        if not due:
            return None
        self.counters.counts["groups_rescanned"] += 1
        if size <= self.options.unsliced_scan_max:
            return [self.unsliced_stream(group)]
        return self.scan_streams(group)

    def scan_streams(self, group: dict, expected: int | None = None) -> list[dict]:
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
        return [self._stream_row(group, f"{i:02d}", lo, hi)
                for i, (lo, hi) in enumerate(time_slices(start, utcnow(), slices))]

    def unsliced_stream(self, group: dict) -> dict:
        """One unfiltered read of the whole group (complete by construction)."""
        return self._stream_row(group, "all", None, None)

    def _stream_row(self, group: dict, suffix: str, lo, hi) -> dict:
        return {
            "store_id": self.store_id, "run_id": self.run_id,
            "key": f"members:{group['kind']}:{group['group_id']}:{suffix}", "kind": "members",
            "group_id": group["group_id"], "lo": lo, "hi": hi, "next_url": None, "last_value": None,
            "started": False, "done": False, "pages": 0, "records": 0,
        }

    # ------------------------------------------------------------ checks (fetch threads)
    def check_group(self, group: dict) -> None:
        """Incremental, a large group not due for its rescan: the joins since the last run,
        then (while the run's count budget lasts) ``profile_count`` tells whether anyone
        left; without it, removals wait for the group's turn (at most ``rescan_every_runs``)."""
        kind, gid = group["kind"], group["group_id"]
        since = self.profiles_since
        path, params = member_request(kind, gid, format_iso(since) if since else None, None)
        for page in paginate(self.client, path, params):
            ids = [r.get("id") for r in page.data if isinstance(r, dict)]
            if ids:
                self.scheduler.enqueue(JoinsRead(gid, ids))
            self.scheduler.check_stop()
        if not self.take_count():
            self.counters.counts["groups_joins_checked"] += 1
            self.scheduler.enqueue(GroupChecked(gid))
            return
        # the joins must be written before our member count is compared with Klaviyo's
        done = threading.Event()
        self.scheduler.enqueue(Barrier(done))
        self.scheduler.wait(done)
        count, processing = self.group_count(group)
        with self.storage.transaction(readonly=True) as tx:
            ours = self.writer.member_count(tx, gid)
        if count is not None and count == ours and not processing:
            self.counters.counts["groups_unchanged"] += 1
            self.scheduler.enqueue(GroupChecked(gid))
        else:
            self.counters.counts["groups_rescanned"] += 1
            self._start_scan(group, expected=count)

    def _start_scan(self, group: dict, expected: int | None = None) -> None:
        """Create a group's scan streams and run them (from a fetch thread)."""
        if expected is not None:
            self.expected_members[group["group_id"]] = expected
        rows = self.scan_streams(group, expected)
        # Created by the writer (one writer: fetchers never wait for the database's write
        # lock); the spool is FIFO, so the rows exist before any page of these streams.
        self.scheduler.enqueue(StreamsPlanned([dict(r) for r in rows]))
        for row in rows:
            self.scheduler.fetch(row)

    def scan_incomplete(self, tx, stream: dict, keys: list[str]) -> bool:
        """Whether a finished *sliced* scan may have missed members (writer thread, in its
        transaction); if so, one unsliced stream of the group is started (or a count check
        that decides it) and ``True``.

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
        group = {"kind": stream["key"].split(":")[1], "group_id": gid}
        expected = self.expected_members.get(gid)
        if expected is not None:
            if seen >= expected:
                return False
            self.counters.counts["group_scans_unsliced"] += 1
            row = self.unsliced_stream(group)
            self.state.add_streams(tx, [row])
            self.scheduler.fetch(row)
            return True
        if seen >= self.writer.member_count(tx, gid):
            return False  # nobody would be removed
        self.scheduler.submit(self._verify_scan, group, seen)
        return True

    def _verify_scan(self, group: dict, seen: int) -> None:
        """A sliced scan would remove members: is ``profile_count`` consistent with it?
        (Without count budget left: the unfiltered read decides.)"""
        count = self.group_count(group)[0] if self.take_count() else None
        if count is not None and count <= seen:
            self.scheduler.enqueue(ScanFinished(group["group_id"]))
            return
        self.counters.counts["group_scans_unsliced"] += 1
        row = self.unsliced_stream(group)
        self.scheduler.enqueue(StreamsPlanned([dict(row)]))
        self.scheduler.fetch(row)

    # ------------------------------------------------------------ profile_count
    def take_count(self) -> bool:
        """Whether the run may still ask a ``profile_count`` (its per-run budget)."""
        with self._count_lock:
            if self._counts_left <= 0:
                return False
            self._counts_left -= 1
            return True

    def group_count(self, group: dict) -> tuple[int | None, bool]:
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

