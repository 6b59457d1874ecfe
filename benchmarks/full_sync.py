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
3. Builds a :class:`~hookspecs.devhost.host.DevHost` on a fresh SQLite file in a temp
   dir (or ``--db URL``) with the settings ``KLAVIYO_BASE_URL``, ``KLAVIYO_TIME_SCALE``
   (= the stand-in's ``--clock-scale``) and ``KLAVIYO_RATE_LIMITS=off`` with
   ``--no-rate-limits``; then installs, authorizes and runs the full sync through the
   plugin manager hooks (keyword arguments). With ``--workers`` (the hook takes no
   options) the sync is run by ``service.sync(ctx, "full", SyncOptions(...))`` instead.
4. Prints counts, requests per endpoint (the report's ``requests``), 429s, wall time of
   the sync call, the lower bound implied by the rate limits (below), wall/bound,
   profiles per second and the peak RSS of *this* process (``ru_maxrss``; the stand-in
   is another process and is not included). RSS is also sampled every 0.25 s so the
   output shows whether memory stays flat during the run.

The lower bound (seconds)
-------------------------
Limits come from :data:`smartpush_plugin_klaviyo.ratelimit.ENDPOINT_LIMITS` (the
published ones: burst ``B`` per 1 s, steady ``S`` per 60 s, both windows divided by the
clock scale ``k``). For one budget (endpoint template) needing ``N`` requests::

    T_rate(N) = max( max(0, N - S) / (S/60 * k),      # steady: 750/min -> 12.5 req/s * k
                     max(0, N - B) / (B * k) )          # burst: 75/s * k

This is the *optimistic* bound: it equals what a client achieves on Klaviyo's fixed
one-minute windows only when the run starts at the very end of a window (S requests at
the end of window 0, S more at the start of window 1, ...). A client that cannot see
the window alignment and never exceeds S in *any* 60 s span (the plugin's sliding log)
needs about ``floor((N-1)/S) * 60 s`` instead; the script prints that figure too
("any-alignment bound").

Requests needed per budget (first full sync; every group is scanned in
``first_scan_slices`` (6) ``joined_group_at`` slices, since its size is not known yet):

* ``/api/profiles``: ``ceil(P/100)`` pages + 2 probes (newest/oldest ``updated``);
* ``/api/lists/{id}/relationships/profiles``: ``sum over lists of s * max(1, ceil(m/s/100))``;
* ``/api/segments/{id}/relationships/profiles``: the same over segments (a separate
  budget: lists' and segments' relationship endpoints do not share a quota);
* ``/api/lists``, ``/api/segments``: ``ceil(groups/10)`` pages each.

Profiles and the two membership families run in parallel on separate budgets, so::

    T_parallel = max over those budgets of T_rate(N_budget)

The parts that cannot overlap with them are sequential: the two probes and the group
listing (``lists`` pages, then ``segments`` pages); they cost latency, not budget::

    T_seq = L * (2 + ceil(lists/10) + ceil(segments/10))

With a latency ``L`` per request a cursor is a chain (its pages come one after the
other), so the longest single-cursor stream bounds the run too: ``profile_windows`` (12)
``updated`` windows of ``ceil(P/12/100)`` pages, and per group ``s`` slices of
``ceil(m/s/100)`` pages::

    T_chain = L * max(pages of the longest window or slice)

Then::

    bound = T_seq + max(T_parallel, T_chain)

With no latency and no rate limits the bound is 0 (CPU-bound: read profiles/s instead).
Also printed, for information (not part of the bound): the bound at the plugin's own
90 % margin and the concurrency limit ``L * total_requests / workers``.

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


class RssSampler(threading.Thread):
    def __init__(self, interval: float = 0.25):
        super().__init__(daemon=True, name="rss-sampler")
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop_event = threading.Event()
        self.t0 = time.perf_counter()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append((time.perf_counter() - self.t0, rss_now_kb()))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.samples.append((time.perf_counter() - self.t0, rss_now_kb()))

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
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            tick = os.sysconf("SC_CLK_TCK")
            return (int(fields[11]) + int(fields[12])) / tick
        except (OSError, ValueError, IndexError):
            return None

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
    """Seconds ``n`` requests need on one budget (bucket model; see the module docstring)."""
    b = max(1, math.floor(burst * margin + 1e-9))
    s = max(1, math.floor(steady * margin + 1e-9))
    steady_rate = s / 60.0 * scale
    burst_rate = b * scale
    return max(max(0, n - s) / steady_rate, max(0, n - b) / burst_rate)


def compute_bound(shape: dict, *, latency: float, scale: float, rate_limits: bool, workers: int,
                  profile_windows: int, members_per_slice: int, max_member_slices: int,
                  first_scan_slices: int = 6,
                  margin: float = 1.0) -> dict:
    from smartpush_plugin_klaviyo.ratelimit import ENDPOINT_LIMITS, PROFILE_COUNT_SUFFIX

    n_profiles = shape["profiles"]
    lists = [g for g in shape["groups"] if g["kind"] == "list"]
    segments = [g for g in shape["groups"] if g["kind"] == "segment"]

    def pages(m: int) -> int:
        return max(1, math.ceil(m / PAGE))

    def slices(m: int) -> int:
        # a first full sync does not know group sizes: every group gets first_scan_slices
        return first_scan_slices

    def rt(endpoint: str, n: int) -> float:
        if not rate_limits or n <= 0:
            return 0.0
        lim = ENDPOINT_LIMITS[endpoint]
        return rate_time(n, lim.burst, lim.steady, scale, margin)

    # pages of a sliced group: the slices are equal time ranges, not equal counts; members
    # join evenly in the stand-in, so each slice holds about m/slices (+1 page per slice).
    member_pages = {id(g): sum(pages(math.ceil(g["members"] / slices(g["members"]))) for _ in range(slices(g["members"])))
                    for g in shape["groups"]}
    needed = {
        PROFILES_PATH: math.ceil(n_profiles / PAGE) + 2,
        LISTS_PATH: max(1, math.ceil(len(lists) / GROUP_PAGE)),
        SEGMENTS_PATH: max(1, math.ceil(len(segments) / GROUP_PAGE)),
        LIST_MEMBERS: sum(member_pages[id(g)] for g in lists),
        SEGMENT_MEMBERS: sum(member_pages[id(g)] for g in segments),
        LIST_COUNT: 0,  # a first full sync asks no profile_count (slices are fixed)
        SEGMENT_COUNT: 0,
    }
    per_endpoint = {
        PROFILES_PATH: rt(PROFILES_PATH, needed[PROFILES_PATH]),
        LISTS_PATH: rt(LISTS_PATH, needed[LISTS_PATH]),
        SEGMENTS_PATH: rt(SEGMENTS_PATH, needed[SEGMENTS_PATH]),
        LIST_MEMBERS: rt(LIST_MEMBERS, needed[LIST_MEMBERS]),
        SEGMENT_MEMBERS: rt(SEGMENT_MEMBERS, needed[SEGMENT_MEMBERS]),
        LIST_COUNT: rt("/api/lists/{id}" + PROFILE_COUNT_SUFFIX, needed[LIST_COUNT]),
        SEGMENT_COUNT: rt("/api/segments/{id}" + PROFILE_COUNT_SUFFIX, needed[SEGMENT_COUNT]),
    }
    t_parallel = max(per_endpoint[k] for k in (PROFILES_PATH, LIST_MEMBERS, SEGMENT_MEMBERS, LIST_COUNT, SEGMENT_COUNT))
    t_seq = latency * (2 + needed[LISTS_PATH] + needed[SEGMENTS_PATH]) + per_endpoint[LISTS_PATH] + per_endpoint[SEGMENTS_PATH]

    # chains: a profile window, or a group's slice that can only start once its count is known.
    window_pages = math.ceil(n_profiles / max(1, profile_windows) / PAGE)
    chain = latency * window_pages
    chain_pages = window_pages
    count_budget = {"list": "/api/lists/{id}" + PROFILE_COUNT_SUFFIX, "segment": "/api/segments/{id}" + PROFILE_COUNT_SUFFIX}
    for g in shape["groups"]:
        p = math.ceil(member_pages[id(g)] / slices(g["members"]))
        if latency * p > chain:
            chain, chain_pages = latency * p, p
    total_pages = sum(needed.values())
    bound = t_seq + max(t_parallel, chain)
    # Any-alignment bound: never more than S requests in any 60 s span (see docstring).
    any_alignment = 0.0
    if rate_limits:
        for key in (PROFILES_PATH, LIST_MEMBERS, SEGMENT_MEMBERS):
            steady = math.floor(ENDPOINT_LIMITS[key].steady * margin + 1e-9)
            n = needed[key]
            any_alignment = max(any_alignment, ((n - 1) // steady) * 60.0 / scale if n > 0 else 0.0)
    any_alignment = t_seq + max(any_alignment, t_parallel if any_alignment == 0 else any_alignment, chain)
    return {
        "any_alignment_bound": any_alignment,
        "requests_needed": needed,
        "rate_seconds": {k: round(v, 3) for k, v in per_endpoint.items()},
        "t_parallel": t_parallel,
        "t_seq": t_seq,
        "t_chain": chain,
        "chain_pages": chain_pages,
        "concurrency_floor": latency * total_pages / max(1, workers),
        "bound": bound,
    }


# -------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--profiles", type=int, default=20000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--groups", type=int, default=None, help="stand-in --groups (default: its 12)")
    p.add_argument("--latency", type=float, default=0.0, help="seconds per request at the stand-in")
    p.add_argument("--no-rate-limits", action="store_true")
    p.add_argument("--clock-scale", type=float, default=1.0)
    p.add_argument("--workers", type=int, default=None, help="SyncOptions.workers (calls service.sync directly)")
    p.add_argument("--profile-windows", type=int, default=None, help="SyncOptions.profile_windows")
    p.add_argument("--db", default=None, help="SQLAlchemy URL (default: a fresh SQLite file in a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir")
    p.add_argument("--incremental-after", type=float, default=None, metavar="PERCENT",
                   help="not available with a separate stand-in process (see the docstring)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = p.parse_args(argv)

    from hookspecs import get_plugin_manager
    from hookspecs.devhost.host import DevHost
    from smartpush_plugin_klaviyo import service
    from smartpush_plugin_klaviyo.sync import SyncOptions

    defaults = SyncOptions()
    options = None
    if args.workers is not None or args.profile_windows is not None:
        kw = {}
        if args.workers is not None:
            kw["workers"] = args.workers
        if args.profile_windows is not None:
            kw["profile_windows"] = args.profile_windows
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
        db_url = args.db or f"sqlite:///{tmp / 'bench.db'}"
        host = DevHost(database_url=db_url, data_dir=tmp / "home", settings=settings, env={})
        pm = get_plugin_manager()
        ctx = host.context("bench")
        pm.hook.smartpush_install(integration="klaviyo", host=ctx)
        auth = pm.hook.smartpush_authorize(integration="klaviyo", host=ctx, credentials=standin.api_key)
        if not auth or not auth.ok:
            raise RuntimeError(f"authorize failed: {auth and auth.message}")

        cpu0 = standin.cpu_seconds()
        rss_before = rss_now_kb()
        sampler = RssSampler()
        sampler.start()
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        if options is None:
            report = pm.hook.smartpush_sync(integration="klaviyo", host=ctx, mode="full")
        else:
            report = service.sync(ctx, "full", options)
        wall = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        sampler.stop()
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
    bound = compute_bound(shape, latency=args.latency, scale=args.clock_scale, rate_limits=not args.no_rate_limits,
                          workers=eff.workers, profile_windows=eff.profile_windows,
                          members_per_slice=eff.members_per_slice, max_member_slices=eff.max_member_slices,
                          first_scan_slices=eff.first_scan_slices)
    bound90 = compute_bound(shape, latency=args.latency, scale=args.clock_scale, rate_limits=not args.no_rate_limits,
                            workers=eff.workers, profile_windows=eff.profile_windows,
                            members_per_slice=eff.members_per_slice, max_member_slices=eff.max_member_slices,
                            first_scan_slices=eff.first_scan_slices, margin=0.9)["bound"]
    total_requests = sum(v for k, v in requests.items() if k.startswith("GET "))
    n429 = requests.get("429", 0)
    profiles = counts.get("profiles_seen", 0)
    lists = sum(1 for g in shape["groups"] if g["kind"] == "list")
    segments = sum(1 for g in shape["groups"] if g["kind"] == "segment")
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
        "bound_detail": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in bound.items()},
        "bound_at_90pct_margin": round(bound90, 3),
        "profiles_per_second": round(profiles / wall, 1) if wall > 0 else None,
        "sync_cpu_seconds": round((ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime), 2),
        "standin_cpu_seconds": round(cpu1 - cpu0, 2) if cpu0 is not None and cpu1 is not None else None,
        "rss_before_sync_mb": round(rss_before / 1024, 1),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "rss_during_sync_mb": sampler.profile(),
        "workers": eff.workers,
        "account_shape_seconds": round(shape_seconds, 2),
        "notes": notes,
    }
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
            print(f"  {k:<50} {requests[k]:>7}" + (f"   (needed {need})" if need is not None else ""))
    print(f"  {'total':<50} {total_requests:>7}")
    print(f"429s           : {n429} ({result['429_percent']} % of requests); retries {requests.get('retries', 0)}, "
          f"errors {requests.get('errors', 0)}")
    print(f"wall           : {wall:.2f} s   (sync CPU {result['sync_cpu_seconds']} s; "
          f"stand-in CPU {result['standin_cpu_seconds']} s)")
    print(f"bound          : {b['bound']:.2f} s = seq {b['t_seq']:.2f} + max(rate {b['t_parallel']:.2f}, "
          f"chain {b['t_chain']:.2f} [{b['chain_pages']} pages])")
    print("  rate per budget: " + ", ".join(f"{k} {v}s" for k, v in b["rate_seconds"].items()))
    print(f"  any-alignment bound (never > S per 60 s span): {b['any_alignment_bound']:.2f} s; "
          f"wall / that = {wall / b['any_alignment_bound']:.3f}" if b["any_alignment_bound"] else "  any-alignment bound: 0")
    print(f"  info: at the plugin's 90% margin {bound90:.2f} s; "
          f"latency*pages/workers {b['concurrency_floor']:.2f} s (workers {eff.workers})")
    print(f"wall / bound   : {result['wall_over_bound']}")
    print(f"profiles/s     : {result['profiles_per_second']}")
    print(f"peak RSS       : {result['peak_rss_mb']} MiB (sync process; before sync {result['rss_before_sync_mb']} MiB)")
    print("RSS over run   : " + ", ".join(f"{t}s:{mb}MiB" for t, mb in result["rss_during_sync_mb"]))
    for n in notes:
        print(f"note           : {n}")
    return 0 if report.outcome == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
