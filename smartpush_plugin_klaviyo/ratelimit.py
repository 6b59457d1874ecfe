"""Per-endpoint rate budgets matching Klaviyo's burst (1 s) and steady (60 s) windows.

Klaviyo counts requests per *account* and endpoint in **fixed** windows (a burst window
of 1 s, a steady window of 60 s), and every private-key integration of the account
shares the quota. A :class:`RateBudget` keeps a safety margin under each published limit
(default 90 %; the rest, the *reserve*, is left to the other integrations and to timing
jitter) and runs in one of two modes for the steady window:

**Sliding log** (no server information yet, or the server sends no ``RateLimit-*``
headers). A request is granted only if fewer than ``allowed`` requests were granted in
the last window length. That bounds the count in *every* span of that length, aligned
or not, so Klaviyo's fixed windows can never see more than ``allowed`` of ours, whatever
their alignment. The price: it cannot use the window boundary. Right after a boundary
Klaviyo allows a full window again, but the log still remembers the grants of the last
60 s, so a long run gets ``allowed`` per 60 s span instead of ``allowed`` per fixed window.

**Server-guided** (once a response's headers were seen). Every non-429 response reports
``RateLimit-Remaining`` (left in the current steady window) and ``RateLimit-Reset``
(seconds until it resets), which is exactly what the sliding log has to guess. Every
grant gets a *ticket* (a grant number, returned by :meth:`RateBudget.acquire_ticket`);
the client passes it back to :meth:`RateBudget.observe` with the response's headers, and
the budget keeps the newest observation (highest ticket):

* it grants while ``remaining - reserve - (grants made after that ticket) > 0``, where
  ``reserve = limit - floor(limit * margin)`` (75 of 750 at 90 %), so the other
  integrations keep their share and requests still in flight are counted;
* it knows when the observed window resets: ``now + Reset`` at the observation, the
  smallest such instant over the observations made before it passed (``Reset`` comes in
  whole seconds rounded up, as the stand-in sends it, so each instant is an upper bound
  of the end of the window the request was counted in: the response left the server
  after the request was counted; a response from the next window gives a later one);
* once that instant has passed, the stored ``remaining`` is stale: exactly **one** probe
  request is granted, and nothing more until a response to a request granted since then
  is observed (if none comes within a burst window, another probe goes out). The probe
  lands in the new window and its response reports the new window's ``remaining``, so a
  full window's worth follows at once. If the probe shows the old window still running
  (a server that rounds ``Reset`` down), the budget just keeps waiting: the probe came
  out of the reserve, so no 429 happens.

This is safe with other clients on the account (they show up in ``remaining``) and with
servers whose windows slide (their ``remaining`` only recovers gradually). When the
stored figures are stale and a newer response comes without the headers (or with
malformed ones), the budget goes back to the sliding log; a response without them while
the figures are fresh (an error page, say) changes nothing, since the figures stay true
until their window resets. The sliding log records every grant in both modes, so
switching is safe in both directions.

**Stacked limits** (an additional field's own limit on top of the endpoint's, such as
``profile_count``'s 1/s 15/min on ``/api/lists/{id}``) get a *strict* budget: the request
takes a slot from both, the headers (which describe the endpoint's window) are only fed to
the endpoint's budget, and a strict budget keeps its sliding steady log whatever it is told,
so headers can only make it stricter, never exceed the documented cap.

Always, whatever the mode:

* the burst window is a local sliding log at the margin (67 per second for 75/s);
* :meth:`RateBudget.penalize` (on a 429) blocks the endpoint until ``Retry-After`` has
  passed, and for one steady window afterwards the sliding log runs at half the rate
  *in addition to* the server's figures;
* observations of a burst window (a ``w=1`` policy) cap the grants until it resets.

The clock is injected (``clock`` monotonic seconds, ``sleep``) so tests are fast and
deterministic, and ``time_scale`` shrinks every window for stand-ins whose clock runs
faster (``time_scale=10``: the 1 s burst window lasts 0.1 s); header durations
(``Retry-After``, ``RateLimit-Reset``) are divided by ``header_scale``.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from smartpush_plugin_klaviyo import endpoints
from smartpush_plugin_klaviyo.errors import SyncCancelled

__all__ = [
    "Limit",
    "ENDPOINT_LIMITS",
    "DEFAULT_LIMIT",
    "PROFILE_COUNT_SUFFIX",
    "BURST_WINDOW",
    "STEADY_WINDOW",
    "RateBudget",
    "RateBudgets",
    "parse_rate_limit_headers",
    "watch_budgets",
    "account_budgets",
]

BURST_WINDOW = 1.0
STEADY_WINDOW = 60.0
PROFILE_COUNT_SUFFIX = endpoints.STACKED_SEPARATOR + "profile_count"
"""Budget key suffix of requests with ``additional-fields[list|segment]=profile_count``."""


@dataclass(frozen=True)
class Limit:
    """Klaviyo's published limits for one endpoint: ``burst`` per second, ``steady`` per minute."""

    burst: int
    steady: int


# From ``x-klaviyo-ratelimit`` (and the descriptions, for stacked limits such as the
# ``profile_count`` additional field): a view of the one table, endpoints.py, which
# tests/test_spec_agreement.py checks against the 2026-07-15 OpenAPI spec.
ENDPOINT_LIMITS: dict[str, Limit] = {key: Limit(*pair) for key, pair in endpoints.limits().items()}

DEFAULT_LIMIT = Limit(3, 60)
"""Klaviyo's small tier: used for any endpoint not in :data:`ENDPOINT_LIMITS`."""

DEFAULT_JITTER_PAD = 0.05
"""Seconds (real) a grant is remembered beyond its window, for network jitter."""

PENALTY_FACTOR = 0.5
"""After a 429 the endpoint runs at this fraction of its rate for one steady window."""

_NUM_RE = re.compile(r"\d+(?:\.\d+)?")
_WINDOW_RE = re.compile(r"w=(\d+(?:\.\d+)?)")


def _first_number(value: str | None) -> float | None:
    if not value:
        return None
    m = _NUM_RE.search(value)
    return float(m.group(0)) if m else None


def parse_rate_limit_headers(headers: Mapping[str, str]) -> tuple[int, int, float, float | None] | None:
    """``(limit, remaining, reset_seconds, window_seconds|None)`` from IETF-draft
    ``RateLimit-*`` headers, or ``None`` when absent/malformed. The window comes from a
    ``w=`` parameter when the server sends one."""
    get = headers.get
    limit_h = get("RateLimit-Limit") or get("ratelimit-limit")
    remaining_h = get("RateLimit-Remaining") or get("ratelimit-remaining")
    if not limit_h or not remaining_h:
        return None
    limit = _first_number(limit_h)
    remaining = _first_number(remaining_h)
    reset = _first_number(get("RateLimit-Reset") or get("ratelimit-reset"))
    if limit is None or remaining is None:
        return None
    window = None
    first_policy = limit_h.split(",")[0]
    m = _WINDOW_RE.search(first_policy)
    if m is None and "," in limit_h:
        # "75, 75;w=1, 750;w=60": the first value names the policy closest to exhaustion
        for part in limit_h.split(",")[1:]:
            if _first_number(part) == limit:
                m = _WINDOW_RE.search(part)
                if m:
                    break
    if m:
        window = float(m.group(1))
    return int(limit), int(remaining), float(reset if reset is not None else 0.0), window


class RateBudget:
    """Thread-safe burst + steady budget of one endpoint (one budget key).

    :param limit: the published limits.
    :param margin: fraction of each limit we allow ourselves (the rest is left to other
        integrations of the account and to clock skew).
    :param time_scale: server seconds per real second (windows are divided by it).
    :param strict: a documented stricter limit stacked on an endpoint's (the
        ``profile_count`` field): headers may make it stricter, never looser (its sliding
        steady log applies even once server-guided).
    :param header_scale: divisor of header durations (``Retry-After``, ``RateLimit-Reset``).
    :param jitter_pad: real seconds a grant is remembered beyond each window (capped at a
        quarter of the window, a whole one for a strict budget), so latency jitter cannot
        push two windows' worth of requests into one of Klaviyo's.

    Diagnostics (read-only): ``granted``, ``waited``, ``penalties``, ``probes`` (grants
    made while the server's figures were stale), ``server_guided`` (the steady window
    follows the server), ``ticket`` (the last grant's number) and, from the first
    ``RateLimit-*`` observation of the steady window, ``first_observed_at`` (clock
    seconds), ``first_reset`` (its ``Reset``, real seconds) and ``first_window_end``
    (clock seconds by which that first server window reset: the smallest ``now + Reset``
    over that window's observations).
    """

    def __init__(
        self,
        name: str,
        limit: Limit,
        *,
        margin: float = 0.9,
        time_scale: float = 1.0,
        header_scale: float = 1.0,
        jitter_pad: float = DEFAULT_JITTER_PAD,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        strict: bool = False,
    ) -> None:
        if not 0 < margin <= 1:
            raise ValueError("margin must be in (0, 1]")
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.name = name
        self.limit = limit
        # A documented stricter limit stacked on an endpoint's (``profile_count``): the
        # server's headers describe the endpoint's window, not this one, so they may only
        # make this budget stricter; its steady log always applies.
        self.strict = strict
        self.margin = margin
        self.time_scale = time_scale
        self.header_scale = header_scale
        # Grants are remembered a little longer than the window: requests reach Klaviyo
        # some (variable) time after they are granted, so two granted a full window apart
        # may arrive closer. The pad (at most a quarter of the window) absorbs that jitter;
        # the microsecond keeps float rounding from squeezing an extra grant in. A strict
        # budget allows one request per burst window (``profile_count``'s 1/s), where any
        # jitter beyond the pad is a 429, and it grants a handful per run, so its pad may
        # take up to a whole window (a scaled clock's windows are a few milliseconds long).
        burst, steady = BURST_WINDOW / time_scale, STEADY_WINDOW / time_scale
        pad, share = max(0.0, jitter_pad), (1.0 if strict else 0.25)
        self.burst_window = burst + min(pad, burst * share) + 1e-6
        self.steady_window = steady + min(pad, steady * share) + 1e-6
        # A probe whose response never came is replaced after this long.
        self.probe_timeout = self.burst_window
        # While responses are awaited, waiters re-check this often (real seconds).
        self._poll = max(0.002, min(0.02, self.burst_window / 10))
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._burst_log: deque[float] = deque()
        self._steady_log: deque[float] = deque()
        self._blocked_until = 0.0
        self._penalty_until = 0.0
        # burst-window observation (``w=1``): at most _cap_allowed grants until _cap_until
        self._cap_until = 0.0
        self._cap_allowed = 0
        self._cap_granted = 0
        # the steady window, server-guided: the newest observation (see the module docstring)
        self._ticket = 0  # grants so far == the last grant's ticket
        self._last_grant_at = float("-inf")
        self._guided = False
        self._obs_ticket = 0
        self._obs_remaining = 0
        self._obs_reserve = 0
        self._obs_deadline = float("-inf")
        self._probe_ticket = 0
        self._probe_at = float("-inf")
        self._first_window_open = True
        self.first_observed_at: float | None = None
        self.first_reset: float | None = None
        self.first_window_end: float | None = None
        self.granted = 0
        self.waited = 0.0
        self.penalties = 0
        self.probes = 0
        self._burst_allowed_n = self._allowed(limit.burst, 1.0)
        self._steady_allowed_n = self._allowed(limit.steady, 1.0)

    def _allowed(self, published: int, factor: float) -> int:
        return max(1, int(math.floor(published * self.margin * factor + 1e-9)))

    # ------------------------------------------------------------ public
    @property
    def burst_allowed(self) -> int:
        """Requests we allow ourselves per burst window right now."""
        with self._lock:
            return self._limits(self._clock())[0]

    @property
    def steady_allowed(self) -> int:
        """Requests the sliding log allows per steady window right now."""
        with self._lock:
            return self._limits(self._clock())[1]

    @property
    def server_guided(self) -> bool:
        """``True`` once the steady window follows the server's ``RateLimit-*`` figures."""
        with self._lock:
            return self._guided

    @property
    def ticket(self) -> int:
        """The ticket of the last grant (0 before the first)."""
        with self._lock:
            return self._ticket

    def try_acquire(self) -> float:
        """Take a slot if one is free now (returns 0.0); else return the seconds to wait."""
        with self._lock:
            now = self._clock()
            wait = self._wait(now)
            if wait <= 0.0:
                self._grant(now)
                return 0.0
            return wait

    def acquire_ticket(self, timeout: float | None = None, cancel: threading.Event | None = None) -> int | None:
        """Block until a slot is free and take it; return its ticket (``>= 1``), to pass
        to :meth:`observe` with the response's headers.

        :param timeout: give up after this many seconds (returns ``None``).
        :param cancel: an event; when set, raises :class:`SyncCancelled`.
        """
        deadline = None if timeout is None else self._clock() + timeout
        while True:
            if cancel is not None and cancel.is_set():
                raise SyncCancelled("cancelled while waiting for the rate budget")
            with self._lock:
                now = self._clock()
                wait = self._wait(now)
                if wait <= 0.0:
                    self._grant(now)
                    return self._ticket
            if deadline is not None:
                left = deadline - now
                if left <= 0:
                    return None
                wait = min(wait, left)
            self.waited += wait
            self._pause(wait, cancel)

    def observe(self, headers: Mapping[str, str], ticket: int | None = None) -> None:
        """Follow a response's ``RateLimit-*`` headers (Klaviyo reports the steady window).

        :param ticket: the ticket of the grant the request was sent with (default: the
            last grant, right for a single caller). An observation older than the stored
            one (lower ticket) is ignored.

        Steady window: from now on grant while ``remaining - reserve - (grants after
        ticket) > 0`` until ``now + Reset``; then one probe at a time until a fresh
        observation comes (see the module docstring). Headers absent or malformed on a
        response newer than the stored observation, once that one's window has reset:
        back to the sliding log. A burst window observation (``w=1``): at most
        ``remaining - reserve`` grants until it resets.
        """
        parsed = parse_rate_limit_headers(headers)
        with self._lock:
            now = self._clock()
            if ticket is None:
                ticket = self._ticket
            if parsed is None:
                # The stored figures stay valid until their window resets (an error page
                # may lack the headers); past that, with nothing fresh: the sliding log.
                if self._guided and ticket >= self._obs_ticket and now >= self._obs_deadline:
                    self._guided = False
                    self._obs_ticket = ticket
                    self._first_window_open = False
                return
            limit, remaining, reset, window = parsed
            if window is None:
                window = BURST_WINDOW if limit == self.limit.burst and limit != self.limit.steady else STEADY_WINDOW
            if reset <= 0:  # integer seconds: "0" means the window resets within a second
                reset = 1.0
            until = now + min(reset / self.header_scale, window / self.time_scale)
            reserve = limit - math.floor(limit * self.margin + 1e-9)
            if window < STEADY_WINDOW:
                self._cap_until = until
                self._cap_allowed = max(0, remaining - reserve)
                self._cap_granted = 0
                return
            if ticket < self._obs_ticket:
                return
            # Every ``now + Reset`` is an upper bound of the end of the window its request
            # was counted in, and a later window ends later: while the stored end has not
            # passed, keep the smallest (a response of the next window cannot lower it).
            same_window = self._guided and now < self._obs_deadline
            if same_window:
                until = min(until, self._obs_deadline)
            if self.first_observed_at is None:
                self.first_observed_at = now
                self.first_reset = reset / self.header_scale
                self.first_window_end = until
            elif self._first_window_open:
                if same_window:
                    self.first_window_end = until
                else:
                    self._first_window_open = False
            self._guided = True
            self._obs_ticket = ticket
            self._obs_remaining = remaining
            self._obs_reserve = reserve
            self._obs_deadline = until

    def penalize(self, retry_after: float | None) -> None:
        """A 429: block until ``retry_after`` seconds (divided by ``header_scale``) passed,
        and for one steady window run the sliding log at half the rate (on top of the
        server's figures when server-guided)."""
        with self._lock:
            now = self._clock()
            if retry_after is None or retry_after < 0:
                wait = self.burst_window
            else:
                wait = retry_after / self.header_scale
            self._blocked_until = max(self._blocked_until, now + wait)
            self._penalty_until = max(self._penalty_until, now + self.steady_window)
            self.penalties += 1

    def __repr__(self) -> str:
        return f"RateBudget({self.name!r}, burst={self.limit.burst}/s, steady={self.limit.steady}/m, margin={self.margin})"

    # ----------------------------------------------------------- private
    def _limits(self, now: float) -> tuple[int, int]:
        if now < self._penalty_until:
            return self._allowed(self.limit.burst, PENALTY_FACTOR), self._allowed(self.limit.steady, PENALTY_FACTOR)
        return self._burst_allowed_n, self._steady_allowed_n

    def _wait(self, now: float) -> float:
        """Seconds until a grant is possible (<= 0: now). Caller holds the lock."""
        wait = self._blocked_until - now
        burst_n, steady_n = self._limits(now)
        log = self._burst_log
        horizon = now - self.burst_window
        while log and log[0] <= horizon:
            log.popleft()
        if len(log) >= burst_n:
            wait = max(wait, log[len(log) - burst_n] + self.burst_window - now)
        # the steady log records every grant, whatever the mode, so falling back is safe
        log = self._steady_log
        horizon = now - self.steady_window
        while log and log[0] <= horizon:
            log.popleft()
        if (not self._guided or self.strict or now < self._penalty_until) and len(log) >= steady_n:
            wait = max(wait, log[len(log) - steady_n] + self.steady_window - now)
        if self._guided:
            wait = max(wait, self._server_wait(now))
        if now < self._cap_until and self._cap_granted >= self._cap_allowed:
            wait = max(wait, self._cap_until - now)
        return wait

    def _server_wait(self, now: float) -> float:
        """The steady window's wait when server-guided. Caller holds the lock."""
        if now < self._obs_deadline:
            available = self._obs_remaining - self._obs_reserve - (self._ticket - self._obs_ticket)
            if available > 0:
                return 0.0
            wait = self._obs_deadline - now
        elif self._probe_ticket > self._obs_ticket and now < self._probe_at + self.probe_timeout:
            # the stored figures are stale and a probe is out: wait for its response
            wait = self._probe_at + self.probe_timeout - now
        else:
            return 0.0  # stale, no probe out: this grant is the probe
        if self._ticket > self._obs_ticket and now < self._last_grant_at + self.probe_timeout:
            # responses to newer grants are due and may bring fresher figures: re-check soon
            wait = min(wait, self._poll)
        return wait

    def _grant(self, now: float) -> None:
        self._burst_log.append(now)
        self._steady_log.append(now)
        if now < self._cap_until:
            self._cap_granted += 1
        self._ticket += 1
        self._last_grant_at = now
        if self._guided and now >= self._obs_deadline:
            self._probe_ticket = self._ticket
            self._probe_at = now
            self.probes += 1
        self.granted += 1

    def _pause(self, seconds: float, cancel: threading.Event | None) -> None:
        # a tiny floor avoids spinning on float rounding at window edges
        seconds = max(seconds, 1e-4)
        if cancel is not None and self._sleep is time.sleep:
            if cancel.wait(seconds):
                raise SyncCancelled("cancelled while waiting for the rate budget")
        else:
            self._sleep(seconds)


class _Unlimited:
    """A budget that never waits (``RateBudgets(enabled=False)``)."""

    name = "unlimited"

    def try_acquire(self) -> float:
        return 0.0

    def acquire_ticket(self, timeout: float | None = None, cancel: threading.Event | None = None) -> int:
        if cancel is not None and cancel.is_set():
            raise SyncCancelled("cancelled")
        return 0

    def observe(self, headers, ticket: int | None = None) -> None:
        pass

    def penalize(self, retry_after: float | None) -> None:
        pass


UNLIMITED = _Unlimited()


_WATCHERS: list[Callable[[RateBudgets], None]] = []
_WATCHERS_LOCK = threading.Lock()


def watch_budgets(callback: Callable[[RateBudgets], None]) -> Callable[[], None]:
    """Call ``callback(budgets)`` for every :class:`RateBudgets` created from now on
    (diagnostics: benchmarks read the budgets' figures after a run). Returns a function
    that stops watching."""
    with _WATCHERS_LOCK:
        _WATCHERS.append(callback)

    def stop() -> None:
        with _WATCHERS_LOCK:
            if callback in _WATCHERS:
                _WATCHERS.remove(callback)

    return stop


class RateBudgets:
    """The budgets of one account (share one instance across every client of an account).

    :param limits: per budget key (endpoint template, or template +
        :data:`PROFILE_COUNT_SUFFIX`); defaults to :data:`ENDPOINT_LIMITS`.
    :param margin: fraction of each published limit used (default 0.9).
    :param time_scale: server seconds per real second (stand-ins with a scaled clock):
        the burst and steady windows and the client's backoff are divided by it.
    :param header_scale: divisor of the durations servers send (``Retry-After``,
        ``RateLimit-Reset``). Klaviyo and the stand-in send real seconds: keep 1.0; use
        ``time_scale`` for a stand-in that sends durations in its scaled seconds.
    :param jitter_pad: see :class:`RateBudget`.
    :param enabled: ``False`` disables limiting entirely.
    :param clock, sleep: injectable time source (monotonic seconds) and sleep.
    """

    def __init__(
        self,
        limits: Mapping[str, Limit] | None = None,
        *,
        margin: float = 0.9,
        time_scale: float = 1.0,
        header_scale: float = 1.0,
        jitter_pad: float = DEFAULT_JITTER_PAD,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        default_limit: Limit = DEFAULT_LIMIT,
    ) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.limits = dict(ENDPOINT_LIMITS if limits is None else limits)
        self.margin = margin
        self.time_scale = float(time_scale)
        self.header_scale = float(header_scale)
        self.jitter_pad = jitter_pad
        if self.header_scale <= 0:
            raise ValueError("header_scale must be positive")
        self.enabled = enabled
        self.default_limit = default_limit
        self.clock = clock
        self.sleep = sleep
        self._budgets: dict[str, RateBudget] = {}
        self._lock = threading.Lock()
        with _WATCHERS_LOCK:
            watchers = list(_WATCHERS)
        for callback in watchers:
            callback(self)

    def get(self, key: str) -> RateBudget | _Unlimited:
        """The budget of one key (created on first use)."""
        if not self.enabled:
            return UNLIMITED
        budget = self._budgets.get(key)
        if budget is None:
            with self._lock:
                budget = self._budgets.get(key)
                if budget is None:
                    strict = endpoints.STACKED_SEPARATOR in key
                    budget = RateBudget(
                        key,
                        self.limits.get(key, self.default_limit),
                        # a stacked cap keeps its own margin: one request is a whole second of it
                        margin=min(self.margin, STRICT_MARGIN) if strict else self.margin,
                        time_scale=self.time_scale,
                        header_scale=self.header_scale,
                        # A stacked 1/s limit is spent by a single request: requests a
                        # window apart must not arrive in one window whatever the network
                        # jitter, so its grants are spaced by a quarter window more.
                        jitter_pad=1.0 if key.endswith(PROFILE_COUNT_SUFFIX) else self.jitter_pad,
                        clock=self.clock,
                        sleep=self.sleep,
                        strict=strict,
                    )
                    self._budgets[key] = budget
        return budget

    __getitem__ = get

    def for_request(self, template: str, profile_count: bool = False) -> tuple:
        """The budgets one request consumes: its endpoint's (always first: the one the
        response's ``RateLimit-*`` headers describe), plus the stricter ``profile_count``
        one when that additional field is asked for (stacked: the request counts against
        both)."""
        if not self.enabled:
            return (UNLIMITED,)
        if profile_count:
            return (self.get(template), self.get(template + PROFILE_COUNT_SUFFIX))
        return (self.get(template),)

    def budgets(self) -> dict[str, RateBudget]:
        """The budgets created so far."""
        with self._lock:
            return dict(self._budgets)

    def __repr__(self) -> str:
        return f"RateBudgets(enabled={self.enabled}, margin={self.margin}, time_scale={self.time_scale})"


_ACCOUNT_BUDGETS: dict[tuple, RateBudgets] = {}
_ACCOUNT_BUDGETS_LOCK = threading.Lock()


ACCOUNT_MARGIN = 0.9
"""The share of each published endpoint limit a sync uses (``KLAVIYO_RATE_MARGIN``). Once
the server's ``RateLimit-*`` headers are seen, grants follow what the server says is left
in its window (other integrations' requests show there); the reserve covers the requests
still on their way to Klaviyo when a newer one's answer is read. 0.95 was measured 1 s
faster on a 100,000-profile account but brought 429s in the 160-group daily test on a busy
machine; 1.0 cost a 429 and a 16 s back-off."""
STRICT_MARGIN = 0.9
"""Margin of a stacked limit (``profile_count``'s 1/s, 15/min), whatever ``ACCOUNT_MARGIN`` says."""


def account_budgets(base_url: str, api_key: str, *, time_scale: float = 1.0, enabled: bool = True,
                    margin: float = ACCOUNT_MARGIN) -> RateBudgets:
    """The one :class:`RateBudgets` of a Klaviyo account in this process.

    Klaviyo counts per account; runs of one store follow each other (a full sync, then the
    daily run) and would each start with an empty log if they had budgets of their own, so
    a run could spend what the previous one already used of a window (the 15/min of
    ``profile_count`` in a few seconds). The account is known by a digest of its key,
    never by the key itself.
    """
    import hashlib

    digest = hashlib.sha256(api_key.encode()).hexdigest()[:32]
    key = (base_url, digest, float(time_scale), bool(enabled), float(margin))
    with _ACCOUNT_BUDGETS_LOCK:
        budgets = _ACCOUNT_BUDGETS.get(key)
        if budgets is None:
            budgets = _ACCOUNT_BUDGETS[key] = RateBudgets(time_scale=time_scale, enabled=enabled, margin=margin)
        return budgets
