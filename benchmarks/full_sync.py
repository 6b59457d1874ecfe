"""Benchmark: one full Klaviyo sync of a generated account against the local stand-in.

Not a test: it prints figures. Usage::

    python benchmarks/full_sync.py --profiles 20000 --no-rate-limits
    python benchmarks/full_sync.py --profiles 20000 --latency 0.2 --clock-scale 10
    python benchmarks/full_sync.py --profiles 200000 --no-rate-limits --json

What it does
------------
1. Computes the account's shape (lists, segments, members per group) in a short child
   process (``generate_account`` is deterministic for ``--profiles/--seed``), so the
   O(profiles x groups) member counting never shows in this process's peak RSS.
2. Starts the stand-in as a **separate process**
   (``python -m klaviyo_standin --profiles N --seed S --port 0 ...``; it prints the base
   URL, then the API key), so its CPU does not share this process's GIL.
3. Builds a :class:`~smartpush_devhost.host.DevHost` on a fresh SQLite file in a temp
   dir (or ``--db URL``) with the settings ``KLAVIYO_BASE_URL``, ``KLAVIYO_TIME_SCALE``
   (= the stand-in's ``--clock-scale``) and ``KLAVIYO_RATE_LIMITS=off`` with
   ``--no-rate-limits``; then installs, authorizes and runs the full sync through the
   plugin manager hooks (keyword arguments). With ``--workers`` (the hook takes no
   options) the sync is run by ``service.sync(ctx, "full", SyncOptions(...))`` instead.
4. Prints counts, requests per endpoint (the report's ``requests``, next to the fewest
   any client needs), 429s, wall time of the sync call, the lower bounds implied by the
   rate limits (below), wall/bound, profiles per second and the peak RSS of *this*
   process (``ru_maxrss``; the stand-in is another process and is not included). RSS is
   also sampled every 0.25 s so the output shows whether memory stays flat during the run.
   A large run decodes and maps profile pages in helper processes (see
   :mod:`smartpush_plugin_klaviyo.profile_pages`): their CPU is printed next to the
   sync's, and the peak RSS and PSS summed over the sync process and its helpers (PSS
   counts the pages they share once: the fairest "memory of the sync" figure).
   The sync's CPU is also split by thread (the writer, which is the calling thread;
   the fetch threads; the thread receiving the helpers' pages; others), and the
   writer's wall time into on a CPU / runnable but waiting for a CPU / blocked, from
   the kernel's per-thread scheduler statistics: what the serial stage waits for. The
   *CPU budget* line adds up the CPU of the sync, its helpers and the stand-in (all on
   the same cores) and divides it by the cores: no schedule of that work can be faster,
   so profiles over it is the ceiling at that CPU per profile. ``--writer-split`` also
   splits the writer's CPU by step of the write path (profile pages, new contacts,
   lookups, membership pages, tags, checkpoints; :class:`WriterSplit`).

The bounds (seconds)
--------------------
Limits come from :data:`smartpush_plugin_klaviyo.ratelimit.ENDPOINT_LIMITS` (the
published ones: burst ``B`` per 1 s, steady ``S`` per 60 s, both windows divided by the
clock scale ``k``). Each budget (endpoint template) is counted with the *fewest* requests
any client needs for the account, ``N`` (not the plugin's own slicing, which costs a few
more; the table prints what the plugin sent next to these):

* ``/api/profiles``: ``ceil(P/100)`` pages + 2 probes (newest/oldest ``updated``);
* ``/api/lists/{id}/relationships/profiles``: ``ceil(m/100)`` pages per list of ``m``
  members (at least one: an empty list is one request);
* ``/api/segments/{id}/relationships/profiles``: the same over segments (a separate
  budget: lists' and segments' relationship endpoints do not share a quota);
* ``/api/lists``, ``/api/segments``: ``ceil(groups/10)`` pages each.

Three bounds are printed; ``bound`` (and wall/bound) is the first:

1. **Phase-aware floor** (the bound). Klaviyo's windows are fixed: the steady window
   running when the sync starts still has ``R`` seconds to go, then a new one opens every
   60 s. In plain words: the least time in which *any* client could get its ``N``
   requests accepted on that endpoint, given where the server's windows actually stood.
   The first window takes at most ``min(S, B x seconds left)`` requests, each later one
   ``S``, and no second more than ``B``; the time at which the ``N``-th request can be
   accepted, plus one latency ``L`` for its response, is the endpoint's floor (member
   endpoints start only after the chain of group-listing pages, ``L`` each). The bound
   is the largest floor over the endpoints. ``R`` is measured, not assumed: the plugin's
   budgets record the first window's end from the ``RateLimit-Reset`` headers (the
   smallest ``time the response came + Reset`` over the responses of that window; the
   benchmark takes the latency ``L`` off, since ``Reset`` counts from the request's
   arrival at the server), read here through
   :func:`~smartpush_plugin_klaviyo.ratelimit.watch_budgets`. Nothing depends on the
   stand-in's internals, so the figure means the same against Klaviyo. It assumes a
   client free to split its cursors at will, so it only says something when the windows
   bind (large accounts); a small run is bound by latency chains and CPU instead.

2. **Optimistic** (the former bound), the best case over every alignment: the run
   starts at the very end of a window, so ``S`` requests go at once and ``S`` more right
   after the boundary::

       T_rate(N) = max( max(0, N - S) / (S/60 * k),      # steady: 750/min -> 12.5 req/s * k
                        max(0, N - B) / (B * k) )          # burst: 75/s * k
       optimistic = T_seq + max(max over budgets of T_rate, T_chain)

   with the sequential parts ``T_seq = L * (2 + ceil(lists/10) + ceil(segments/10))``
   (probes, group listing) and the longest single-cursor chain of the plugin's slicing
   ``T_chain = L * max(pages of the longest profile window or member slice)``. When the
   windows bind it sits below the phase-aware floor by up to about a window: the phase
   of a real run is what it is. Without rate limits this is the bound (0 with no latency
   either: CPU-bound, read profiles/s instead).

3. **Steady rate**: ``N / (S/60 * k)``, the long-run average rate alone, for comparison
   (it ignores both the first window's head start and the boundaries).

Also printed: the any-alignment figure, ``floor((N-1)/S) x 60 s``, what a client needs
that never exceeds ``S`` in *any* 60 s span (a sliding log that cannot see the windows'
alignment); the phase-aware floor at the plugin's 90 % margin; and the concurrency limit
``L * total_requests / workers``.

``--incremental-after PERCENT`` is NOT available: the stand-in runs in another process
and its CLI offers no admin endpoint to mutate profiles (it serves GET only), so the
mode is reported as skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROFILES_PATH = "/api/profiles"
LISTS_PATH = "/api/lists"
SEGMENTS_PATH = "/api/segments"
LIST_MEMBERS = "/api/lists/{id}/relationships/profiles"
SEGMENT_MEMBERS = "/api/segments/{id}/relationships/profiles"
LIST_COUNT = "/api/lists/{id}"
SEGMENT_COUNT = "/api/segments/{id}"
PAGE = 100
GROUP_PAGE = 10

_SHAPE_CODE = r"""
import json, sys
from klaviyo_standin import generate_account
n, seed, groups = int(sys.argv[1]), int(sys.argv[2]), (None if sys.argv[3] == "-" else int(sys.argv[3]))
a = generate_account(n, seed, groups=groups)
out = {"profiles": a.profile_count, "groups": []}
for kind, res in (("list", a.lists()), ("segment", a.segments())):
    for g in res:
        out["groups"].append({"kind": kind, "id": g["id"], "members": a.member_count(g["id"])})
print(json.dumps(out))
"""


# --------------------------------------------------------------------------- helpers
def rss_now_kb() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss_kb() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r // 1024 if sys.platform == "darwin" else r  # bytes on macOS, KiB on Linux


def _children_of() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(name))
    return kids


def helper_pids(exclude: set[int]) -> list[int]:
    """Descendants of this process (the sync's helper processes and their server), minus
    ``exclude`` and its descendants (the stand-in)."""
    kids = _children_of()
    out, todo = [], list(kids.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        if pid in exclude:
            continue
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def _cpu_seconds(stat_path: str, fields_from: int, fields_to: int) -> float | None:
    """Sum of the clock-tick fields ``[fields_from, fields_to)`` after the command name
    of a ``/proc/.../stat`` file, in seconds; ``None`` if it cannot be read (gone)."""
    try:
        with open(stat_path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[fields_from:fields_to]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def cpu_with_reaped(pid: int) -> float:
    """CPU seconds of a process plus those of its children it has reaped."""
    return _cpu_seconds(f"/proc/{pid}/stat", 11, 15) or 0.0


def helpers_cpu_seconds(exclude: set[int]) -> float:
    """CPU of the helper processes, those still running and those already reaped."""
    return sum(cpu_with_reaped(pid) for pid in helper_pids(exclude))


def _status_kb(pid: int | str, key: str, path: str = "status") -> int:
    try:
        with open(f"/proc/{pid}/{path}") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _thread_cpu(tid: int) -> float | None:
    """CPU seconds (user + system) of one thread of this process; ``None`` once it ended."""
    return _cpu_seconds(f"/proc/self/task/{tid}/stat", 11, 13)


def _thread_role(thread: threading.Thread, writer_tid: int) -> str:
    if thread.native_id == writer_tid:
        return "writer"
    if thread.name.startswith("klaviyo-") and not thread.name.startswith(("klaviyo-watch", "klaviyo-decoder")):
        return "fetch"  # the run's thread pool: klaviyo-<store>_<n>
    if type(thread).__name__ == "_ExecutorManagerThread":
        return "helper results"  # receives (unpickles) the helpers' mapped pages
    return "other"


def _schedstat(tid: int) -> tuple[float, float] | None:
    """(seconds on a CPU, seconds runnable but waiting for one) of a thread of this process,
    from the scheduler's statistics; ``None`` where the kernel does not keep them."""
    try:
        with open(f"/proc/self/task/{tid}/schedstat") as f:
            on_cpu, waiting = f.read().split()[:2]
        return int(on_cpu) / 1e9, int(waiting) / 1e9
    except (OSError, ValueError):
        return None


class ThreadCpu:
    """CPU of the sync process split by thread role, from ``/proc/self/task``.

    The writer is the thread that called the sync (the engine writes in the calling
    thread); fetch threads are the run's pool. Threads are sampled from outside
    (:meth:`sample`), so one that ends between two samples loses at most one interval
    of CPU. The split shows which thread of the process is the serial stage.
    """

    def __init__(self) -> None:
        self.writer_tid = threading.get_native_id()
        self._start: dict[int, float] = {t.native_id: cpu for t, cpu in self._running()}
        self._last: dict[int, tuple[str, float]] = {}
        self._writer_sched0 = _schedstat(self.writer_tid)
        self.writer_sched: tuple[float, float] | None = None
        self.sample()

    @staticmethod
    def _running():
        """(thread, its CPU seconds so far) for every live thread of this process."""
        for t in threading.enumerate():
            cpu = _thread_cpu(t.native_id) if t.native_id else None
            if cpu is not None:
                yield t, cpu

    def sample(self) -> None:
        for t, cpu in self._running():
            self._last[t.native_id] = (_thread_role(t, self.writer_tid), cpu)
        now = _schedstat(self.writer_tid)
        if now is not None and self._writer_sched0 is not None:
            self.writer_sched = (now[0] - self._writer_sched0[0], now[1] - self._writer_sched0[1])

    def by_role(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for tid, (role, cpu) in self._last.items():
            out[role] = out.get(role, 0.0) + cpu - self._start.get(tid, 0.0)
        return {role: round(v, 2) for role, v in sorted(out.items(), key=lambda kv: -kv[1])}


def cpu_budget(profiles: int, wall: float, cpu_parts: list[float]) -> dict:
    """What the CPU the run used allows on this machine's cores, whatever the scheduling.

    The sync process, its helpers and the stand-in all run on the same cores, so their CPU
    seconds divided by the number of cores is a floor under the wall time of *any* schedule
    of the same work; profiles over that floor is the most this CPU per profile allows.
    """
    cores = os.cpu_count() or 1
    cpu = sum(cpu_parts)
    floor = cpu / cores
    return {
        "cores": cores,
        "cpu_seconds": round(cpu, 2),
        "cpu_us_per_profile": 1e6 * cpu / profiles if profiles else None,
        "floor_seconds": round(floor, 2),
        "ceiling_profiles_per_second": round(profiles / floor, 1) if floor > 0 else None,
        "busy_percent": round(100 * floor / wall) if wall > 0 else None,
    }


class RssSampler(threading.Thread):
    """Samples, every ``interval``: this process's RSS; every fourth time also RSS and PSS
    summed over this process and its helper processes (PSS splits pages shared between them)."""

    def __init__(self, interval: float = 0.25, exclude: set[int] | None = None):
        super().__init__(daemon=True, name="rss-sampler")
        self.interval = interval
        self.exclude = exclude or set()
        self.samples: list[tuple[float, int]] = []
        self.tree_rss_kb = 0
        self.tree_pss_kb = 0
        self.max_helpers = 0
        self._stop_event = threading.Event()
        self.t0 = time.perf_counter()
        self.threads = ThreadCpu()  # created here: the writer is the thread that starts the sampler

    def _sample(self, tree: bool = True) -> None:
        self.samples.append((time.perf_counter() - self.t0, rss_now_kb()))
        self.threads.sample()
        if not tree:
            return
        pids = ["self"] + helper_pids(self.exclude)
        self.max_helpers = max(self.max_helpers, len(pids) - 1)
        self.tree_rss_kb = max(self.tree_rss_kb, sum(_status_kb(p, "VmRSS:") for p in pids))
        self.tree_pss_kb = max(self.tree_pss_kb, sum(_status_kb(p, "Pss:", "smaps_rollup") for p in pids))

    def run(self) -> None:
        n = 0
        while not self._stop_event.is_set():
            # The helpers' memory once a second: reading smaps_rollup is not free.
            self._sample(tree=n % 4 == 0)
            n += 1
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self._sample()

    def profile(self, points: int = 5) -> list[tuple[float, float]]:
        """RSS (MiB) at evenly spaced fractions of the run."""
        if not self.samples:
            return []
        end = self.samples[-1][0]
        out = []
        for k in range(points):
            target = end * k / (points - 1) if points > 1 else end
            t, kb = min(self.samples, key=lambda s: abs(s[0] - target))
            out.append((round(t, 2), round(kb / 1024, 1)))
        return out


def account_shape(profiles: int, seed: int, groups: int | None) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _SHAPE_CODE, str(profiles), str(seed), "-" if groups is None else str(groups)],
        check=True, capture_output=True, text=True, cwd=ROOT,
    )
    return json.loads(out.stdout)


class StandIn:
    """``python -m klaviyo_standin`` in a child process."""

    def __init__(self, args, log_path: Path):
        cmd = [sys.executable, "-m", "klaviyo_standin", "--profiles", str(args.profiles), "--seed", str(args.seed),
               "--port", "0"]
        if args.groups is not None:
            cmd += ["--groups", str(args.groups)]
        if args.latency:
            cmd += ["--latency", str(args.latency)]
        if args.no_rate_limits:
            cmd += ["--no-rate-limits"]
        if args.clock_scale != 1.0:
            cmd += ["--clock-scale", str(args.clock_scale)]
        self.cmd = cmd
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, cwd=ROOT)
        lines: list[str] = []

        def read():
            for _ in range(2):
                line = self.proc.stdout.readline()
                if not line:
                    break
                lines.append(line.decode().strip())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(60)
        if len(lines) < 2:
            self.stop()
            raise RuntimeError(f"the stand-in did not start (see {log_path})")
        self.base_url, self.api_key = lines

    def cpu_seconds(self) -> float | None:
        """CPU seconds (user + system) of the stand-in process; ``None`` once it ended."""
        return _cpu_seconds(f"/proc/{self.proc.pid}/stat", 11, 13)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# ----------------------------------------------------------------------- the bound
def rate_time(n: int, burst: int, steady: int, scale: float, margin: float = 1.0) -> float:
    """Seconds ``n`` requests need on one budget in the *optimistic* model (the run starts
    at the very end of a steady window; see the module docstring)."""
    b = max(1, math.floor(burst * margin + 1e-9))
    s = max(1, math.floor(steady * margin + 1e-9))
    steady_rate = s / 60.0 * scale
    burst_rate = b * scale
    return max(max(0, n - s) / steady_rate, max(0, n - b) / burst_rate)


def phase_time(n: int, burst: int, steady: int, scale: float, phase: float, start: float = 0.0,
               margin: float = 1.0) -> float:
    """The earliest instant (seconds after the sync started) at which the ``n``-th request
    of one budget can be accepted, given the server's fixed windows: the steady window
    running at the start ends ``phase`` seconds after it, then one every ``60/scale`` s;
    burst windows (``1/scale`` s) are aligned to them. Within one steady window at most
    ``min(S, B * burst windows left)`` fit, ``B`` of them at the very start of each burst
    window. Requests cannot be sent before ``start`` (what they depend on)."""
    if n <= 0:
        return start
    b = max(1, math.floor(burst * margin + 1e-9))
    s = max(1, math.floor(steady * margin + 1e-9))
    window, burst_window = 60.0 / scale, 1.0 / scale
    per_window = round(window / burst_window)
    done = 0
    j = 0
    while True:
        begin = phase - window + j * window
        end = begin + window
        j += 1
        if end <= start:
            continue
        first = max(begin, start)
        i0 = min(per_window - 1, math.floor((first - begin) / burst_window + 1e-9))
        capacity = min(s, b * (per_window - i0))
        if done + capacity >= n:
            k = math.ceil((n - done) / b) - 1  # the burst window (from i0) of the n-th request
            return max(first, begin + (i0 + k) * burst_window)
        done += capacity


def compute_bound(shape: dict, *, latency: float, scale: float, rate_limits: bool, workers: int,
                  profile_windows: int, members_per_slice: int, max_member_slices: int,
                  first_scan_slices: int = 6,
                  margin: float = 1.0, phases: dict[str, float] | None = None) -> dict:
    """The bounds of the module docstring. ``phases`` maps a budget key to the seconds
    between the sync's start and the end of that endpoint's steady window running at the
    start (unknown budgets: the most favourable phase)."""
    from smartpush_plugin_klaviyo.ratelimit import ENDPOINT_LIMITS, PROFILE_COUNT_SUFFIX

    phases = phases or {}
    n_profiles = shape["profiles"]
    lists = [g for g in shape["groups"] if g["kind"] == "list"]
    segments = [g for g in shape["groups"] if g["kind"] == "segment"]

    def pages(m: int) -> int:
        return max(1, math.ceil(m / PAGE))  # an empty group still takes one request

    def slices(m: int) -> int:
        # a first full sync does not know group sizes: every group gets first_scan_slices
        return first_scan_slices

    def rt(endpoint: str, n: int) -> float:
        if not rate_limits or n <= 0:
            return 0.0
        lim = ENDPOINT_LIMITS[endpoint]
        return rate_time(n, lim.burst, lim.steady, scale, margin)

    list_pages = max(1, math.ceil(len(lists) / GROUP_PAGE))
    segment_pages = max(1, math.ceil(len(segments) / GROUP_PAGE))
    # The fewest requests any client needs (no slicing waste): what the bounds count.
    needed = {
        PROFILES_PATH: math.ceil(n_profiles / PAGE) + 2,
        LISTS_PATH: list_pages,
        SEGMENTS_PATH: segment_pages,
        LIST_MEMBERS: sum(pages(g["members"]) for g in lists),
        SEGMENT_MEMBERS: sum(pages(g["members"]) for g in segments),
        LIST_COUNT: 0,  # a first full sync asks no profile_count
        SEGMENT_COUNT: 0,
    }
    # What the plugin's own slicing costs (for information): the slices are equal time
    # ranges; members join evenly in the stand-in, so each holds about m/slices (+1 page each).
    member_pages = {id(g): sum(pages(math.ceil(g["members"] / slices(g["members"]))) for _ in range(slices(g["members"])))
                    for g in shape["groups"]}
    plugin_needed = dict(needed)
    plugin_needed[LIST_MEMBERS] = sum(member_pages[id(g)] for g in lists)
    plugin_needed[SEGMENT_MEMBERS] = sum(member_pages[id(g)] for g in segments)

    budget_keys = {LIST_COUNT: "/api/lists/{id}" + PROFILE_COUNT_SUFFIX,
                   SEGMENT_COUNT: "/api/segments/{id}" + PROFILE_COUNT_SUFFIX}
    parallel = (PROFILES_PATH, LIST_MEMBERS, SEGMENT_MEMBERS, LIST_COUNT, SEGMENT_COUNT)
    per_endpoint = {k: rt(budget_keys.get(k, k), needed[k]) for k in needed}
    t_parallel = max(per_endpoint[k] for k in parallel)
    t_seq = latency * (2 + needed[LISTS_PATH] + needed[SEGMENTS_PATH]) + per_endpoint[LISTS_PATH] + per_endpoint[SEGMENTS_PATH]

    # chains: a profile window, or a group's slice (the plugin's structure, for information
    # and for runs without rate limits).
    window_pages = math.ceil(n_profiles / max(1, profile_windows) / PAGE)
    chain = latency * window_pages
    chain_pages = window_pages
    for g in shape["groups"]:
        p = math.ceil(member_pages[id(g)] / slices(g["members"]))
        if latency * p > chain:
            chain, chain_pages = latency * p, p
    optimistic = t_seq + max(t_parallel, chain)

    steady_rate = {}
    any_alignment = {}
    phase_floor: dict[str, float] = {}
    phase_used: dict[str, float | None] = {}
    window = 60.0 / scale
    # member requests need the group ids: one chain of list (segment) pages first
    starts = {LIST_MEMBERS: latency * list_pages, SEGMENT_MEMBERS: latency * segment_pages}
    if rate_limits:
        for key in (PROFILES_PATH, LIST_MEMBERS, SEGMENT_MEMBERS):
            lim = ENDPOINT_LIMITS[key]
            s = max(1, math.floor(lim.steady * margin + 1e-9))
            n = needed[key]
            steady_rate[key] = n / (s / 60.0 * scale)
            any_alignment[key] = ((n - 1) // s) * window if n > 0 else 0.0
            phase = phases.get(key)
            if phase is not None:
                t = phase_time(n, lim.burst, lim.steady, scale, phase, starts.get(key, 0.0), margin)
            else:  # unknown alignment: the most favourable one
                t = min(phase_time(n, lim.burst, lim.steady, scale, window * (i + 1) / 600, starts.get(key, 0.0), margin)
                        for i in range(600))
            phase_floor[key] = t + latency  # the last response comes back
            phase_used[key] = phase
        bound = max(phase_floor.values())
        steady_bound = max(steady_rate.values())
        any_alignment_bound = t_seq + max(max(any_alignment.values()), chain)
    else:
        bound = optimistic
        steady_bound = 0.0
        any_alignment_bound = optimistic
    total_pages = sum(needed.values())
    return {
        "bound": bound,
        "optimistic_bound": optimistic,
        "steady_rate_bound": steady_bound,
        "any_alignment_bound": any_alignment_bound,
        "phase_floor": phase_floor,
        "phase_seconds": phase_used,
        "requests_needed": needed,
        "requests_plugin_slicing": plugin_needed,
        "rate_seconds": {k: round(v, 3) for k, v in per_endpoint.items()},
        "t_parallel": t_parallel,
        "t_seq": t_seq,
        "t_chain": chain,
        "chain_pages": chain_pages,
        "concurrency_floor": latency * total_pages / max(1, workers),
    }


def window_phases(budgets_seen: list, started: float, latency: float, scale: float) -> dict[str, float]:
    """Per budget key: seconds from ``started`` (``time.monotonic()`` at the sync's start) to
    the end of the server's steady window running then, from the budgets' first
    ``RateLimit-Reset`` observations (``first_window_end``: the smallest ``now + Reset``
    over that window's responses). The responses reached us ``latency`` after the server
    counted them, so that is taken off (an underestimate only lowers the floor)."""
    window = 60.0 / scale
    out: dict[str, float] = {}
    for registry in budgets_seen:
        for key, budget in registry.budgets().items():
            end = getattr(budget, "first_window_end", None)
            if end is None:
                continue
            phase = (end - latency - started) % window
            out[key] = phase if phase > 1e-9 else window
    return out


# -------------------------------------------------------------------------- main
class WriterSplit:
    """The writer thread's CPU time inside each step of the write path (``--writer-split``).

    Wraps the methods below for the duration of the run; only calls made in the thread
    that created it (the one that calls the sync, which is the writer) are counted, with
    that thread's own CPU clock, so waiting for the interpreter lock or the disk is not.
    A step that calls another counts the inner step's time too.
    """

    STEPS = """
        smartpush_plugin_klaviyo.sync:SyncRun._write_loop               | write loop (all the writer does)
        smartpush_plugin_klaviyo.sync:SyncRun._apply                    |   applying messages
        smartpush_plugin_klaviyo.writer:PageWriter.write_mapped         |     profile pages
        smartpush_devhost.contacts:SqlContactStore.create_many          |       new contacts (encrypt, insert)
        smartpush_devhost.contacts:SqlContactStore.find_by_emails       |       contacts by email
        smartpush_devhost.contacts:SqlContactStore.find_by_phones       |       contacts by phone
        smartpush_plugin_klaviyo.writer:PageWriter.add_membership_tags  |       tags of memberships seen before
        smartpush_plugin_klaviyo.writer:PageWriter.write_members        |     membership pages
        smartpush_plugin_klaviyo.writer:PageWriter._uids_of             |       contacts of their members
        smartpush_devhost.contacts:SqlContactStore.add_tags             |     tags added (both page kinds)
        smartpush_plugin_klaviyo.run_state:RunState.advance             |     checkpoints
        smartpush_plugin_klaviyo.run_state:RunState.verify              |   lease and epoch checks
        sqlalchemy.engine.default:DefaultDialect.do_commit              |   commits
        smartpush_plugin_klaviyo.memory:HeapTrimmer.maybe_trim          |   freed heap returned to the OS
        smartpush_plugin_klaviyo.sync:SyncRun._tag_deferred_groups      | tags of groups new to the run, after the loop
    """
    """``module:Class.method | label``, the label indented under the step it runs in."""

    def __init__(self) -> None:
        import importlib
        import threading

        self._thread = threading.get_ident()
        self._seconds = {}
        self._saved = []
        for line in filter(str.strip, self.STEPS.splitlines()):
            where, label = line.split("|")
            module, _, qualname = where.strip().partition(":")
            cls_name, name = qualname.split(".")
            label = label[1:].rstrip()
            self._seconds[label] = 0.0
            cls = getattr(importlib.import_module(module), cls_name)
            original = cls.__dict__[name]
            self._saved.append((cls, name, original))
            setattr(cls, name, self._wrap(original, label))

    def _wrap(self, fn, label):
        import threading

        seconds, me, clock = self._seconds, self._thread, time.thread_time

        def timed(*args, **kwargs):
            if threading.get_ident() != me:
                return fn(*args, **kwargs)
            start = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[label] += clock() - start

        return timed

    def remove(self) -> None:
        for cls, name, original in self._saved:
            setattr(cls, name, original)
        self._saved.clear()

    def seconds(self) -> dict[str, float]:
        return {label: round(s, 3) for label, s in self._seconds.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--profiles", type=int, default=20000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--groups", type=int, default=None, help="stand-in --groups (default: its 12)")
    p.add_argument("--latency", type=float, default=0.0, help="seconds per request at the stand-in")
    p.add_argument("--no-rate-limits", action="store_true")
    p.add_argument("--clock-scale", type=float, default=1.0)
    p.add_argument("--workers", type=int, default=None, help="SyncOptions.workers (calls service.sync directly)")
    p.add_argument("--map-processes", type=int, default=None,
                   help="host setting KLAVIYO_MAP_PROCESSES: helper processes for profile pages (0: none)")
    p.add_argument("--profile-windows", type=int, default=None, help="SyncOptions.profile_windows")
    p.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                   help="a host setting for the plugin, e.g. KLAVIYO_SPOOL_MEMORY_PAGES=16 (repeatable)")
    p.add_argument("--db", default=None, help="SQLAlchemy URL (default: a fresh SQLite file in a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir")
    p.add_argument("--incremental-after", type=float, default=None, metavar="PERCENT",
                   help="not available with a separate stand-in process (see the docstring)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--writer-split", action="store_true",
                   help="also split the writer thread's CPU by step (per-thread CPU time around each step)")
    args = p.parse_args(argv)

    from hookspecs import get_plugin_manager
    from smartpush_devhost.host import DevHost
    from smartpush_plugin_klaviyo import service
    from smartpush_plugin_klaviyo.ratelimit import watch_budgets
    from smartpush_plugin_klaviyo.sync import SyncOptions

    defaults = SyncOptions()
    options = None
    if args.workers is not None or args.profile_windows is not None:
        kw = {}
        if args.workers is not None:
            kw["workers"] = args.workers
        if args.profile_windows is not None:
            kw["profile_windows"] = args.profile_windows
        if args.map_processes is not None:
            kw["map_processes"] = args.map_processes
        options = SyncOptions(**kw)
    eff = options or defaults

    notes: list[str] = []
    if args.incremental_after is not None:
        notes.append("--incremental-after skipped: the stand-in process has no admin/mutation endpoint "
                     "(GET only), so its profiles cannot be changed from this process")

    t = time.perf_counter()
    shape = account_shape(args.profiles, args.seed, args.groups)
    shape_seconds = time.perf_counter() - t

    tmp = Path(tempfile.mkdtemp(prefix="klaviyo-bench-"))
    standin = StandIn(args, tmp / "standin.log")
    host = None
    try:
        settings = {"KLAVIYO_BASE_URL": standin.base_url, "KLAVIYO_TIME_SCALE": str(args.clock_scale)}
        if args.no_rate_limits:
            settings["KLAVIYO_RATE_LIMITS"] = "off"
        if args.map_processes is not None:
            settings["KLAVIYO_MAP_PROCESSES"] = str(args.map_processes)
        for item in args.setting:  # --setting KLAVIYO_X=value: any host setting
            name, _, value = item.partition("=")
            settings[name] = value
        db_url = args.db or f"sqlite:///{tmp / 'bench.db'}"
        host = DevHost(database_url=db_url, data_dir=tmp / "home", settings=settings, env={})
        pm = get_plugin_manager()
        ctx = host.context("bench")
        # remember the account's rate budgets (made once per process, by the authorization's
        # requests already), to read the server's window phase afterwards
        budgets_seen: list = []
        unwatch = watch_budgets(budgets_seen.append)
        pm.hook.smartpush_install(integration="klaviyo", host=ctx)
        auth = pm.hook.smartpush_authorize(integration="klaviyo", host=ctx, credentials=standin.api_key)
        if not auth or not auth.ok:
            raise RuntimeError(f"authorize failed: {auth and auth.message}")

        cpu0 = standin.cpu_seconds()
        rss_before = rss_now_kb()
        exclude = {standin.proc.pid}
        sampler = RssSampler(exclude=exclude)
        sampler.start()
        helpers0 = helpers_cpu_seconds(exclude)
        writer_split = WriterSplit() if args.writer_split else None
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        t0_monotonic = time.monotonic()
        t0 = time.perf_counter()
        try:
            if options is None:
                report = pm.hook.smartpush_sync(integration="klaviyo", host=ctx, mode="full")
            else:
                report = service.sync(ctx, "full", options)
        finally:
            unwatch()
            if writer_split is not None:
                writer_split.remove()
        wall = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        sampler.stop()
        time.sleep(0.3)  # let the helpers' server reap them, so their CPU is in its counters
        helpers1 = helpers_cpu_seconds(exclude)
        cpu1 = standin.cpu_seconds()
        peak_kb = peak_rss_kb()
    finally:
        if host is not None:
            host.close()
        standin.stop()
        if not args.keep and args.db is None:
            shutil.rmtree(tmp, ignore_errors=True)

    counts = dict(report.counts)
    requests = dict(report.requests)
    phases = window_phases(budgets_seen, t0_monotonic, args.latency, args.clock_scale)
    bound = compute_bound(shape, latency=args.latency, scale=args.clock_scale, rate_limits=not args.no_rate_limits,
                          workers=eff.workers, profile_windows=eff.profile_windows,
                          members_per_slice=eff.members_per_slice, max_member_slices=eff.max_member_slices,
                          first_scan_slices=eff.first_scan_slices, phases=phases)
    bound90 = compute_bound(shape, latency=args.latency, scale=args.clock_scale, rate_limits=not args.no_rate_limits,
                            workers=eff.workers, profile_windows=eff.profile_windows,
                            members_per_slice=eff.members_per_slice, max_member_slices=eff.max_member_slices,
                            first_scan_slices=eff.first_scan_slices, margin=0.9, phases=phases)["bound"]
    total_requests = sum(v for k, v in requests.items() if k.startswith("GET "))
    n429 = requests.get("429", 0)
    profiles = counts.get("profiles_seen", 0)
    lists = sum(1 for g in shape["groups"] if g["kind"] == "list")
    segments = sum(1 for g in shape["groups"] if g["kind"] == "segment")
    sync_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    standin_cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
    helpers_cpu = helpers1 - helpers0
    result = {
        "outcome": report.outcome,
        "message": report.message,
        "args": {k: v for k, v in vars(args).items()},
        "standin": " ".join(standin.cmd[1:]),
        "profiles": profiles,
        "profiles_in_account": shape["profiles"],
        "lists": lists,
        "segments": segments,
        "memberships": counts.get("memberships_seen", 0),
        "memberships_in_account": sum(g["members"] for g in shape["groups"]),
        "counts": counts,
        "requests": requests,
        "requests_total": total_requests,
        "429": n429,
        "429_percent": round(100.0 * n429 / total_requests, 3) if total_requests else 0.0,
        "wall_seconds": round(wall, 3),
        "bound_seconds": round(bound["bound"], 3),
        "wall_over_bound": round(wall / bound["bound"], 3) if bound["bound"] > 0 else None,
        "bound_optimistic_seconds": round(bound["optimistic_bound"], 3),
        "bound_steady_rate_seconds": round(bound["steady_rate_bound"], 3),
        "bound_detail": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in bound.items()},
        "bound_at_90pct_margin": round(bound90, 3),
        "profiles_per_second": round(profiles / wall, 1) if wall > 0 else None,
        "sync_cpu_seconds": round(sync_cpu, 2),
        "standin_cpu_seconds": round(standin_cpu, 2) if standin_cpu is not None else None,
        "helpers_cpu_seconds": round(helpers_cpu, 2),
        "helper_processes": sampler.max_helpers,
        "cpu_budget": cpu_budget(profiles, wall, [sync_cpu, helpers_cpu, standin_cpu or 0.0]),
        "sync_cpu_by_thread": sampler.threads.by_role(),
        "writer_on_cpu_and_runnable_seconds": sampler.threads.writer_sched,
        "peak_tree_rss_mb": round(sampler.tree_rss_kb / 1024, 1),
        "peak_tree_pss_mb": round(sampler.tree_pss_kb / 1024, 1),
        "rss_before_sync_mb": round(rss_before / 1024, 1),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "rss_during_sync_mb": sampler.profile(),
        "workers": eff.workers,
        "account_shape_seconds": round(shape_seconds, 2),
        "notes": notes,
    }
    if writer_split is not None:
        result["writer_cpu_by_step_seconds"] = writer_split.seconds()
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0 if report.outcome == "completed" else 1

    b = bound
    print(f"stand-in       : {result['standin']}")
    print(f"outcome        : {report.outcome} {report.message}")
    print(f"profiles       : {profiles} seen, {counts.get('profiles_imported', 0)} imported, "
          f"{counts.get('skipped', 0)} skipped (account: {shape['profiles']})")
    print(f"lists/segments : {lists} / {segments}")
    print(f"memberships    : {result['memberships']} seen, {counts.get('memberships_added', 0)} added "
          f"(account: {result['memberships_in_account']})")
    print("requests       :")
    for k in sorted(requests):
        if k.startswith("GET "):
            need = b["requests_needed"].get(k[4:])
            print(f"  {k:<50} {requests[k]:>7}" + (f"   (minimal {need})" if need is not None else ""))
    print(f"  {'total':<50} {total_requests:>7}")
    print(f"429s           : {n429} ({result['429_percent']} % of requests); retries {requests.get('retries', 0)}, "
          f"errors {requests.get('errors', 0)}")
    print(f"wall           : {wall:.2f} s   (sync CPU {result['sync_cpu_seconds']} s + helper processes "
          f"{result['helpers_cpu_seconds']} s; stand-in CPU {result['standin_cpu_seconds']} s)")
    cb = result["cpu_budget"]
    if cb["ceiling_profiles_per_second"]:
        print(f"  CPU budget    : {cb['cpu_seconds']} CPU-s in all on {cb['cores']} cores -> no schedule can take less "
              f"than {cb['floor_seconds']} s: at most {cb['ceiling_profiles_per_second']:.0f} profiles/s at this "
              f"CPU per profile ({cb['cpu_us_per_profile']:.0f} us); the cores were busy {cb['busy_percent']}% of the wall")
    split = result["sync_cpu_by_thread"]
    print("  sync by thread: " + ", ".join(f"{role} {cpu} s" for role, cpu in split.items()))
    sched = result["writer_on_cpu_and_runnable_seconds"]
    if sched is not None and wall > 0:
        on_cpu, runnable = sched
        blocked = max(0.0, wall - on_cpu - runnable)
        print(f"  writer thread : on a CPU {100 * on_cpu / wall:.0f}% of the wall time, runnable but waiting for a "
              f"CPU {100 * runnable / wall:.0f}%, blocked {100 * blocked / wall:.0f}% (the interpreter lock, I/O, "
              "or an empty page queue)")
    if b["phase_floor"]:
        print(f"bound          : {b['bound']:.2f} s  phase-aware floor: the least time any client needs for the "
              f"minimal requests, given where the server's windows stood at the start")
        for k, floor in b["phase_floor"].items():
            phase = b["phase_seconds"].get(k)
            where = f"window ends {phase:.2f} s after the start" if phase is not None else "phase unknown: best case"
            print(f"  {k:<45} N {b['requests_needed'][k]:>6}  {where:<34} floor {floor:.2f} s")
        print(f"  optimistic (run starts at the very end of a window): {b['optimistic_bound']:.2f} s = seq {b['t_seq']:.2f} "
              f"+ max(rate {b['t_parallel']:.2f}, chain {b['t_chain']:.2f} [{b['chain_pages']} pages])")
        print(f"  steady rate (N / (S/60), the long-run average): {b['steady_rate_bound']:.2f} s")
        print(f"  any-alignment (never > S in any 60 s span, a sliding log): {b['any_alignment_bound']:.2f} s; "
              f"wall / that = {wall / b['any_alignment_bound']:.3f}")
    else:
        print(f"bound          : {b['bound']:.2f} s = seq {b['t_seq']:.2f} + max(rate {b['t_parallel']:.2f}, "
              f"chain {b['t_chain']:.2f} [{b['chain_pages']} pages])")
    print(f"  info: at the plugin's 90% margin {bound90:.2f} s; "
          f"latency*pages/workers {b['concurrency_floor']:.2f} s (workers {eff.workers})")
    if writer_split is not None:
        imported = max(1, counts.get("profiles_imported", 0))
        print("  writer by step (CPU of the writer thread in each step, steps inside others included in both; "
              "µs per imported profile):")
        for step, seconds in result["writer_cpu_by_step_seconds"].items():
            print(f"    {step:<52} {seconds:7.2f} s  {seconds / imported * 1e6:6.1f} µs")
    print(f"wall / bound   : {result['wall_over_bound']}")
    print(f"profiles/s     : {result['profiles_per_second']}")
    print(f"peak RSS       : {result['peak_rss_mb']} MiB (sync process; before sync {result['rss_before_sync_mb']} MiB)")
    print(f"with helpers   : peak RSS {result['peak_tree_rss_mb']} MiB, PSS {result['peak_tree_pss_mb']} MiB "
          f"(sync process + {result['helper_processes']} helper processes, summed; PSS counts shared pages once)")
    print("RSS over run   : " + ", ".join(f"{t}s:{mb}MiB" for t, mb in result["rss_during_sync_mb"]))
    for n in notes:
        print(f"note           : {n}")
    return 0 if report.outcome == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
