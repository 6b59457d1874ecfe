"""RateBudget / RateBudgets on a fake clock: windows never exceeded, margin, observe, penalize."""

from __future__ import annotations

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
        assert budget.acquire()
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
    budget.acquire()
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
    assert budget.acquire()
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
    assert budget.blocked_for() == pytest.approx(5)
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
    budget.acquire()
    assert clock.now == pytest.approx(start + 2)
    clock2 = FakeClock()
    scaled = RateBudget("x", Limit(75, 750), time_scale=10, header_scale=10, clock=clock2, sleep=clock2.sleep)
    start = clock2.now
    scaled.penalize(2)
    scaled.acquire()
    assert clock2.now == pytest.approx(start + 0.2)


def test_acquire_timeout_and_cancel():
    budget, clock = make(limit=Limit(1, 15), margin=1.0)
    assert budget.acquire()
    start = clock.now
    assert budget.acquire(timeout=0.5) is False
    assert clock.now == pytest.approx(start + 0.5)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(SyncCancelled):
        budget.acquire(cancel=cancel)


def test_cancel_wakes_a_real_wait_promptly():
    budget = RateBudget("x", Limit(1, 1), margin=1.0)
    budget.acquire()
    cancel = threading.Event()
    threading.Timer(0.05, cancel.set).start()
    t0 = time.monotonic()
    with pytest.raises(SyncCancelled):
        budget.acquire(cancel=cancel)
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
                budget.acquire()
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
        a.acquire()
    start = clock.now
    budgets.get("/api/lists").acquire()
    assert clock.now == start


def test_disabled_registry_never_waits():
    budgets = RateBudgets(enabled=False)
    b = budgets.get("/api/profiles")
    t0 = time.monotonic()
    for _ in range(10_000):
        b.acquire()
    b.penalize(100)
    b.acquire()
    assert time.monotonic() - t0 < 1.0
