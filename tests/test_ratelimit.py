"""RateBudget / RateBudgets on a fake clock: windows never exceeded, margin, observe,
penalize; the server-guided steady window against simulated fixed-window servers."""

from __future__ import annotations

import heapq
import itertools
import math
import random
import threading
import time

import pytest

from smartpush_plugin_klaviyo.errors import SyncCancelled
from smartpush_plugin_klaviyo.ratelimit import (
    ENDPOINT_LIMITS,
    PROFILE_COUNT_SUFFIX,
    Limit,
    RateBudget,
    RateBudgets,
    parse_rate_limit_headers,
)


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


def make(limit=Limit(75, 750), margin=0.9, time_scale=1.0, clock=None):
    clock = clock or FakeClock()
    return RateBudget("/api/profiles", limit, margin=margin, time_scale=time_scale, clock=clock, sleep=clock.sleep), clock


def grant_times(budget, clock, n, jitter=None):
    times = []
    rng = random.Random(1)
    for _ in range(n):
        if jitter:
            clock.now += rng.random() * jitter
        assert budget.acquire_ticket()
        times.append(clock.now)
    return times


def max_in_window(times, window):
    """The most grants inside any half-open window [t, t+window) — aligned or not."""
    best = 0
    j = 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def max_in_aligned(times, window, offset=0.0):
    counts = {}
    for t in times:
        key = math.floor((t - offset) / window)
        counts[key] = counts.get(key, 0) + 1
    return max(counts.values())


def test_burst_and_steady_windows_never_exceeded():
    budget, clock = make()
    start = clock.now
    times = grant_times(budget, clock, 1500)
    assert max_in_window(times, 1.0) == 67  # 90 % of 75/s
    assert max_in_window(times, 60.0) == 675  # 90 % of 750/min
    for offset in (0.0, 0.25, 0.5, 0.999):
        assert max_in_aligned(times, 1.0, offset) <= 67
        assert max_in_aligned(times, 60.0, offset) <= 675
    # and it is not needlessly slow: 675 in about 10 s, then the steady window gates
    assert times[674] - start < 11
    assert 120 <= times[-1] - start < 135


def test_windows_respected_with_irregular_arrivals():
    budget, clock = make(limit=Limit(10, 40), margin=1.0)
    times = grant_times(budget, clock, 400, jitter=0.3)
    assert max_in_window(times, 1.0) <= 10
    assert max_in_window(times, 60.0) <= 40


def test_margin_is_configurable_and_never_zero():
    budget, clock = make(margin=0.5)
    times = grant_times(budget, clock, 200)
    assert max_in_window(times, 1.0) == 37
    tiny, clock2 = make(limit=Limit(1, 15), margin=0.9)
    assert tiny.burst_allowed == 1 and tiny.steady_allowed == 13
    times = grant_times(tiny, clock2, 30)
    assert max_in_window(times, 1.0) == 1
    assert max_in_window(times, 60.0) == 13


def test_time_scale_shrinks_windows():
    budget, clock = make(time_scale=10.0)
    times = grant_times(budget, clock, 1000)
    assert max_in_window(times, 0.1) == 67
    assert max_in_window(times, 6.0) == 675
    assert times[-1] - times[0] < 15


def test_observe_slows_down_when_server_has_less_left():
    budget, clock = make()
    budget.acquire_ticket()
    # another integration used most of the steady window: 100 left, resets in 30 s
    budget.observe({"RateLimit-Limit": "750", "RateLimit-Remaining": "100", "RateLimit-Reset": "30"})
    start = clock.now
    times = grant_times(budget, clock, 60)
    # reserve = 75 (10 %), so only 25 more before the reset
    assert sum(1 for t in times if t < start + 30) == 25
    assert times[25] >= start + 30


def test_observe_ignores_plenty_and_garbage():
    budget, clock = make()
    budget.observe({"RateLimit-Limit": "750", "RateLimit-Remaining": "749", "RateLimit-Reset": "59"})
    budget.observe({"RateLimit-Limit": "nope"})
    budget.observe({})
    times = grant_times(budget, clock, 67)
    assert times[-1] == times[0]  # no waiting within the burst allowance


def test_observe_with_time_scale_and_window_parameter():
    budget, clock = make(time_scale=10)
    budget.observe({"RateLimit-Limit": "75, 75;w=1, 750;w=60", "RateLimit-Remaining": "8", "RateLimit-Reset": "1"})
    start = clock.now
    # burst window (w=1): 8 left is exactly the 10 % reserve, so wait for the reset (1 s / 10)
    assert budget.acquire_ticket()
    assert clock.now == pytest.approx(start + 0.1)


def test_parse_rate_limit_headers():
    assert parse_rate_limit_headers({"RateLimit-Limit": "750", "RateLimit-Remaining": "3", "RateLimit-Reset": "12"}) == (750, 3, 12.0, None)
    assert parse_rate_limit_headers({"RateLimit-Limit": "75;w=1", "RateLimit-Remaining": "3"}) == (75, 3, 0.0, 1.0)
    assert parse_rate_limit_headers({"RateLimit-Limit": "750, 75;w=1, 750;w=60", "RateLimit-Remaining": "3", "RateLimit-Reset": "4"})[3] == 60.0
    assert parse_rate_limit_headers({}) is None


def test_penalize_blocks_then_slows_down():
    budget, clock = make()
    start = clock.now
    budget.penalize(5)
    assert budget.try_acquire() == pytest.approx(5)  # the seconds to wait
    times = grant_times(budget, clock, 200)
    assert times[0] >= start + 5
    # reduced to half the allowance for a steady window
    assert max_in_window(times, 1.0) == 33
    assert budget.burst_allowed == 33
    clock.now = start + 5 + 61
    assert budget.burst_allowed == 67


def test_penalize_retry_after_is_real_seconds_unless_header_scale():
    budget, clock = make(time_scale=10)
    start = clock.now
    budget.penalize(2)  # Klaviyo and the stand-in send real seconds
    budget.acquire_ticket()
    assert clock.now == pytest.approx(start + 2)
    clock2 = FakeClock()
    scaled = RateBudget("x", Limit(75, 750), time_scale=10, header_scale=10, clock=clock2, sleep=clock2.sleep)
    start = clock2.now
    scaled.penalize(2)
    scaled.acquire_ticket()
    assert clock2.now == pytest.approx(start + 0.2)


def test_acquire_timeout_and_cancel():
    budget, clock = make(limit=Limit(1, 15), margin=1.0)
    assert budget.acquire_ticket()
    start = clock.now
    assert budget.acquire_ticket(timeout=0.5) is None
    assert clock.now == pytest.approx(start + 0.5)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(SyncCancelled):
        budget.acquire_ticket(cancel=cancel)


def test_cancel_wakes_a_real_wait_promptly():
    budget = RateBudget("x", Limit(1, 1), margin=1.0)
    budget.acquire_ticket()
    cancel = threading.Event()
    threading.Timer(0.05, cancel.set).start()
    t0 = time.monotonic()
    with pytest.raises(SyncCancelled):
        budget.acquire_ticket(cancel=cancel)
    assert time.monotonic() - t0 < 1.0


def test_threads_share_a_budget_without_exceeding_it():
    granted: list[float] = []

    class Recording(RateBudget):
        def _grant(self, now):  # called under the budget's lock
            granted.append(now)
            super()._grant(now)

    budget = Recording("x", Limit(20, 60), margin=1.0, time_scale=80.0)  # 12.5 ms / 0.75 s windows
    errors = []

    def worker():
        try:
            for _ in range(10):
                budget.acquire_ticket()
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    assert len(granted) == 80
    assert granted == sorted(granted)
    assert max_in_window(granted, 1.0 / 80) <= 20
    assert max_in_window(granted, 60.0 / 80) <= 60


def test_registry_creates_budgets_per_template():
    clock = FakeClock()
    budgets = RateBudgets(clock=clock, sleep=clock.sleep)
    a = budgets.get("/api/profiles")
    assert budgets.get("/api/profiles") is a
    assert a.limit == ENDPOINT_LIMITS["/api/profiles"]
    pair = budgets.for_request("/api/lists/{id}", profile_count=True)
    assert [b.name for b in pair] == ["/api/lists/{id}", "/api/lists/{id}" + PROFILE_COUNT_SUFFIX]
    assert pair[1].limit == Limit(1, 15)
    unknown = budgets.get("/api/something-else")
    assert unknown.limit.burst <= 3
    # separate endpoints do not share a budget
    for _ in range(67):
        a.acquire_ticket()
    start = clock.now
    budgets.get("/api/lists").acquire_ticket()
    assert clock.now == start


def test_disabled_registry_never_waits():
    budgets = RateBudgets(enabled=False)
    b = budgets.get("/api/profiles")
    t0 = time.monotonic()
    for _ in range(10_000):
        b.acquire_ticket()
    b.penalize(100)
    b.acquire_ticket()
    assert time.monotonic() - t0 < 1.0


# ----------------------------------------------- server-guided steady window
class FixedWindowServer:
    """Klaviyo-like fixed windows aligned to ``t0``: ``burst`` per second and ``steady``
    per minute (both divided by ``scale``). ``Reset`` is whole seconds rounded up (or
    down with ``rounding="floor"``); ``others`` maps a steady window's index to requests
    another integration made at its start; ``headers=False`` sends none."""

    def __init__(self, burst, steady, t0, *, scale=1.0, rounding="ceil", headers=True, others=None):
        self.burst, self.steady, self.t0 = burst, steady, t0
        self.burst_window, self.steady_window = 1.0 / scale, 60.0 / scale
        self.rounding, self.headers, self.others = rounding, headers, dict(others or {})
        self.counts: dict[int, int] = {}
        self.burst_counts: dict[int, int] = {}
        self.log: list[tuple[float, int]] = []  # (arrival, status)
        self.lock = threading.Lock()

    def window(self, t):
        return math.floor((t - self.t0) / self.steady_window)

    def check(self, t):
        with self.lock:
            k, b = self.window(t), math.floor((t - self.t0) / self.burst_window)
            used = self.counts.get(k, 0) + self.others.get(k, 0)
            left = self.t0 + (k + 1) * self.steady_window - t
            reset = max(1, math.ceil(left)) if self.rounding == "ceil" else max(0, math.floor(left))
            if used >= self.steady or self.burst_counts.get(b, 0) >= self.burst:
                self.log.append((t, 429))
                return 429, {"Retry-After": "1"}
            self.counts[k] = self.counts.get(k, 0) + 1
            self.burst_counts[b] = self.burst_counts.get(b, 0) + 1
            self.log.append((t, 200))
            if not self.headers:
                return 200, {}
            return 200, {"RateLimit-Limit": str(self.steady), "RateLimit-Remaining": str(self.steady - used - 1),
                         "RateLimit-Reset": str(reset)}

    def accepted(self):
        return [t for t, s in self.log if s == 200]

    def throttled(self):
        return sum(1 for _, s in self.log if s == 429)

    def per_window(self):
        counts: dict[int, int] = {}
        for t in self.accepted():
            counts[self.window(t)] = counts.get(self.window(t), 0) + 1
        return counts


def simulate(budget, clock, server, n, latency=0.2, lose=()):
    """Send ``n`` requests as fast as ``budget`` grants them (unbounded concurrency) on the
    fake clock: each arrives at the server when granted, its response is observed
    ``latency`` later (never, for tickets in ``lose``). Returns the grant times."""
    events: list = []
    seq = itertools.count()
    grants: list[float] = []
    while len(grants) < n or events:
        while events and events[0][0] <= clock.now:
            t, _, kind, data = heapq.heappop(events)
            if kind == "arrive":
                status, headers = server.check(t)
                if data not in lose:
                    heapq.heappush(events, (t + latency, next(seq), "response", (data, status, headers)))
            else:
                ticket, status, headers = data
                if status == 429:
                    budget.penalize(float(headers["Retry-After"]))
                else:
                    budget.observe(headers, ticket=ticket)
        following = events[0][0] if events else math.inf
        if len(grants) < n:
            wait = budget.try_acquire()
            if wait == 0.0:
                grants.append(clock.now)
                heapq.heappush(events, (clock.now, next(seq), "arrive", budget.ticket))
                continue
            following = min(following, clock.now + wait)
        if following == math.inf:
            break
        clock.now = max(clock.now, following)
    return grants


@pytest.mark.parametrize("phase", [55.0, 30.0, 3.0, 0.4])
def test_server_guided_grants_per_window_stay_within_remaining_minus_reserve(phase):
    """The server's first window has ``phase`` seconds left; another integration uses 300
    of window 1 and 700 of window 3: no 429, and in every server window ours plus theirs
    never exceed 750 - 75 (the reserve stays free), but for the one probe that finds out
    they already went beyond it."""
    budget, clock = make()
    start = clock.now
    server = FixedWindowServer(75, 750, t0=start + phase - 60, others={1: 300, 3: 700})
    grants = simulate(budget, clock, server, 2342)
    assert server.throttled() == 0
    assert budget.server_guided
    per_window = server.per_window()
    for k, ours in per_window.items():
        assert ours + server.others.get(k, 0) <= max(675, server.others.get(k, 0) + 1), (k, ours)
    assert per_window[1] == 675 - 300 and per_window[3] == 1  # follows the server's remaining
    assert max_in_window(grants, 1.0) <= 67  # the burst window stays a local sliding log
    assert max(server.burst_counts.values()) <= 67


def test_server_guided_uses_the_window_boundary():
    """Window 0 has 50 s left: 675 go out at once; at its reset exactly one probe goes out,
    and once its response is in, a full window's worth (674 more) follows within ~10 s."""
    budget, clock = make()
    start = clock.now
    server = FixedWindowServer(75, 750, t0=start - 10)
    boundary = start + 50
    latency = 0.2
    grants = simulate(budget, clock, server, 2342, latency=latency)
    assert server.throttled() == 0
    assert server.per_window() == {0: 675, 1: 675, 2: 675, 3: 317}
    # window 0: 675 granted in ~10 s, then nothing until the server's window resets
    assert grants[674] < start + 11 and grants[675] >= boundary
    # one probe (Reset is rounded up: it goes out within the latency of the boundary)...
    probe = grants[675]
    assert boundary <= probe <= boundary + latency + 0.01
    assert grants[676] >= probe + latency
    # ...then the new window's figures: 674 more in about 10 s
    assert grants[675 + 674] < probe + latency + 11
    assert budget.probes == 3
    # 2342 requests in 3 windows + 317 at the burst rate: 50 + 120 + ~5 s. The sliding log
    # (no headers) needs 3 x 60 s after its first grant, plus the burst tail.
    assert grants[-1] - start < 50 + 120 + 6
    slide, slide_clock = make()
    slide_server = FixedWindowServer(75, 750, t0=start - 10, headers=False)
    slow = simulate(slide, slide_clock, slide_server, 2342, latency=latency)
    assert not slide.server_guided and slide_server.throttled() == 0
    assert slow[-1] - start > 180
    assert grants[-1] - start < slow[-1] - start - 5


def test_without_headers_the_sliding_log_is_used():
    budget, clock = make()
    server = FixedWindowServer(75, 750, t0=clock.now - 59.5, headers=False)
    grants = simulate(budget, clock, server, 1500)
    assert not budget.server_guided and budget.probes == 0
    assert server.throttled() == 0
    assert max_in_window(grants, 60.0) == 675  # any 60 s span, aligned or not
    assert max_in_window(grants, 1.0) == 67


def guided(warm_up: int):
    """A budget already following a fixed-window server (10 s into its window) after
    ``warm_up`` requests: ``(budget, clock, server, start)``."""
    budget, clock = make()
    start = clock.now
    server = FixedWindowServer(75, 750, t0=start - 10)
    simulate(budget, clock, server, warm_up)
    assert budget.server_guided
    return budget, clock, server, start


def test_headers_that_vanish_fall_back_to_the_sliding_log_once_stale():
    budget, clock, server, start = guided(100)
    # an error page without headers while the figures are fresh changes nothing
    budget.observe({}, ticket=budget.ticket)
    assert budget.server_guided
    server.headers = False
    grants = simulate(budget, clock, server, 1400)
    assert not budget.server_guided
    assert server.throttled() == 0
    everything = server.accepted()
    assert max(server.per_window().values()) <= 675
    assert max_in_window(everything, 1.0) <= 67
    assert budget.probes == 1  # the response to the one probe had no headers: sliding log
    assert grants[-1] > start + 60


def test_probe_showing_the_old_window_still_running_keeps_waiting():
    """A server that rounds Reset *down*: the budget's reset instant comes up to a second
    early, so probes land in the old window. Their responses say so; it keeps waiting, the
    probes come out of the reserve, and no 429 happens."""
    budget, clock = make()
    start = clock.now
    server = FixedWindowServer(75, 750, t0=start - 10.5, rounding="floor")
    simulate(budget, clock, server, 2000)
    assert server.throttled() == 0
    windows = server.per_window()
    assert max(windows.values()) <= 750 - 60  # at most a few probes above 675
    assert windows[1] >= 670  # and the new window is still used fully
    assert budget.probes <= 10


def test_a_lost_probe_response_is_replaced_after_a_burst_window():
    budget, clock = make(limit=Limit(10, 100))  # 90 per window, 9 per second
    start = clock.now
    server = FixedWindowServer(10, 100, t0=start - 30)
    # the first window (30 s left) takes 90; request 91 is the probe: its response is lost
    grants = simulate(budget, clock, server, 120, latency=0.2, lose={91})
    assert server.throttled() == 0
    assert grants[90] >= start + 30  # the probe, after the reset
    assert grants[91] == pytest.approx(grants[90] + budget.probe_timeout, abs=0.03)  # a second probe
    assert grants[92] >= grants[91] + 0.2  # then its response opens the window
    assert server.per_window() == {0: 90, 1: 30}
    assert budget.probes == 2


def test_sliding_window_servers_are_safe_too():
    """A server counting the last 60 s (not fixed windows): Remaining only recovers as old
    requests age out, so following it never gives a 429."""

    class SlidingServer:
        def __init__(self):
            self.accepted: list[float] = []
            self.refused = 0

        def check(self, t):
            recent = [a for a in self.accepted if a > t - 60.0]
            if len(recent) >= 750 or sum(1 for a in recent if a > t - 1.0) >= 75:
                self.refused += 1
                return 429, {"Retry-After": "1"}
            self.accepted.append(t)
            reset = math.ceil(recent[0] + 60.0 - t) if recent else 60
            return 200, {"RateLimit-Limit": "750", "RateLimit-Remaining": str(750 - len(recent) - 1),
                         "RateLimit-Reset": str(max(1, reset))}

    budget, clock = make()
    server = SlidingServer()
    simulate(budget, clock, server, 2000)
    assert server.refused == 0
    assert max_in_window(server.accepted, 60.0) <= 750


def test_penalize_in_server_guided_mode_blocks_then_halves():
    budget, clock, server, _ = guided(10)
    start = clock.now
    budget.penalize(5)
    grants = simulate(budget, clock, server, 400)
    assert grants[0] >= start + 5  # Retry-After honoured
    penalized = [t for t in grants if t < start + 60]
    assert max_in_window(penalized, 1.0) == 33  # half the burst allowance for a steady window
    assert 300 < len(penalized) <= 337  # the half-rate sliding log applies too
    assert max_in_window(grants, 1.0) == 67  # and afterwards the full rate is back
    assert server.throttled() == 0


def test_tickets_and_first_window_figures():
    budget, clock = make()
    assert budget.ticket == 0
    assert [budget.acquire_ticket() for _ in range(3)] == [1, 2, 3]
    assert budget.acquire_ticket() == 4 and budget.ticket == 4
    assert not budget.server_guided and budget.first_reset is None
    budget.observe({"RateLimit-Limit": "750", "RateLimit-Remaining": "746", "RateLimit-Reset": "20"}, ticket=4)
    first = clock.now
    assert budget.server_guided
    assert budget.first_observed_at == first and budget.first_reset == 20.0 and budget.first_window_end == first + 20
    clock.now += 0.5
    # older (lower ticket) observations are ignored; a later one of the same window refines its end
    budget.observe({"RateLimit-Limit": "750", "RateLimit-Remaining": "700", "RateLimit-Reset": "19"}, ticket=2)
    assert budget.first_window_end == first + 20
    budget.observe({"RateLimit-Limit": "750", "RateLimit-Remaining": "745", "RateLimit-Reset": "19"}, ticket=5)
    assert budget.first_window_end == pytest.approx(first + 19.5)
    # a new window (remaining grew) does not move the first window's end
    clock.now = first + 21
    budget.observe({"RateLimit-Limit": "750", "RateLimit-Remaining": "749", "RateLimit-Reset": "59"}, ticket=5)
    assert budget.first_window_end == pytest.approx(first + 19.5)
    tiny, _ = make(limit=Limit(1, 15), margin=1.0)
    assert tiny.acquire_ticket() == 1
    assert tiny.acquire_ticket(timeout=0.5) is None


def test_threads_follow_a_fixed_window_server_without_429():
    """8 threads in real time at 50x: the budget follows a fixed-window server's headers
    (sent in scaled seconds, ``header_scale=50``) with tickets: no 429, no server window
    over its limit, and the boundary is used (two windows' worth in well under a window).
    The burst limit is generous: a 20 ms burst window is shorter than a loaded machine's
    scheduling jitter (the burst log is tested on the fake clock above)."""
    scale = 50.0  # burst window 20 ms, steady window 1.2 s
    server = FixedWindowServer(100, 40, t0=time.monotonic() - 0.9, scale=scale)  # 0.3 s left

    def check(t):
        status, headers = server.check(t)
        if headers.get("RateLimit-Reset"):  # whole *scaled* seconds, rounded up
            left = server.t0 + (server.window(t) + 1) * server.steady_window - t
            headers["RateLimit-Reset"] = str(max(1, math.ceil(left * scale)))
        return status, headers

    budget = RateBudget("x", Limit(100, 40), time_scale=scale, header_scale=scale)
    errors: list[BaseException] = []

    def worker():
        try:
            for _ in range(9):
                ticket = budget.acquire_ticket(timeout=5)
                status, headers = check(time.monotonic())
                time.sleep(0.002)  # the response's latency
                if status == 429:
                    budget.penalize(1)
                else:
                    budget.observe(headers, ticket=ticket)
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    elapsed = time.monotonic() - t0
    assert not errors
    assert server.throttled() == 0
    windows = server.per_window()
    assert sum(windows.values()) == 72 and max(windows.values()) <= 40
    assert budget.server_guided
    # 36 per window (90 %): a sliding log needs a full window (1.2 s) between the first
    # and the 37th grant; following the server, the 37th goes out at the boundary (0.3 s)
    assert elapsed < 1.2
