"""The Klaviyo HTTP client: auth, revision, rate budgets, retries, typed errors, stats.

One :class:`KlaviyoClient` wraps one :class:`httpx.Client` (a keep-alive connection
pool) and is safe to share between the threads of a pool. Every request:

1. takes a slot from its endpoint's :class:`~smartpush_plugin_klaviyo.ratelimit.RateBudget`
   (``profile_count`` requests also take one from that field's stricter budget);
2. is sent with ``Authorization: Klaviyo-API-Key …``, ``revision`` and JSON:API ``Accept``;
3. feeds the response's ``RateLimit-*`` headers back to the ENDPOINT's budget only, with
   that grant's ticket (so the budget knows which of its grants the server had counted):
   Klaviyo's headers describe the endpoint's own window (750/min for ``/api/lists/{id}``
   even on a ``profile_count`` request), never the stacked field's, whose budget keeps its
   documented cap (a strict budget: headers never loosen it);
4. is mapped to the error hierarchy of :mod:`smartpush_plugin_klaviyo.errors`.

Retries (with :mod:`tenacity`: jittered exponential backoff, bounded by ``max_retries``
*and* ``max_retry_time``) cover 429 (waiting at least ``Retry-After`` and penalizing the
budget), 5xx/524, timeouts, connection errors and non-JSON:API 403 pages (CDN/firewall).
400, 401, JSON:API 403 and 404 are never retried. A 403 whose error ``code`` is
``not_authenticated``/``authentication_failed`` is an invalid key, like a 401.

The key never leaves the configured origin: :meth:`KlaviyoClient.get_url` refuses a URL
whose scheme, host or port differ from ``base_url``. It is never logged, and never
appears in an exception or ``repr``.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import random
import re
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote

import httpx
from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_before_delay

from smartpush_plugin_klaviyo import __version__, endpoints
from smartpush_plugin_klaviyo.errors import (
    BadRequestError,
    ConfigurationError,
    ForeignURLError,
    InvalidKeyError,
    KlaviyoAPIError,
    MissingScopeError,
    NotFoundError,
    RateLimitedError,
    RevisionUnsupportedError,
    SyncCancelled,
    TransientError,
)
from smartpush_plugin_klaviyo.ratelimit import RateBudgets

from smartpush_plugin_klaviyo.jsondecode import loads as _loads

_JSONError: tuple[type[BaseException], ...] = (ValueError,)

Decoder = Callable[[bytes], Any]
"""Turns a successful response's body into a result; raises ValueError for a bad body."""

__all__ = [
    "KlaviyoClient",
    "REVISION",
    "DEFAULT_BASE_URL",
    "ENDPOINT_SCOPES",
    "USER_AGENT",
    "endpoint_template",
]

log = logging.getLogger(__name__)

REVISION = "2026-07-15"
DEFAULT_BASE_URL = "https://a.klaviyo.com"
USER_AGENT = f"smartpush-plugin-klaviyo/{__version__} (+SmartPush Klaviyo integration; httpx/{httpx.__version__})"
JSONAPI = "application/vnd.api+json"

# ``x-klaviyo-scopes`` of the endpoints read: a view of the one table, endpoints.py.
ENDPOINT_SCOPES: dict[str, tuple[str, ...]] = endpoints.scopes()

FORBIDDEN_FIELDS = ("predictive_analytics",)
"""Never requested: slower, a stricter rate limit, and nothing the sync needs."""

KEY_REJECTED_CODES = frozenset({"not_authenticated", "authentication_failed"})
"""JSON:API error codes meaning the key itself was refused, whatever the status."""

MAX_BODY_BYTES = 64 * 2**20
"""Largest response body read, once decompressed: a 100-profile page is ~0.2-2 MB, even with
20 kB properties; anything past 64 MiB is a broken or hostile answer (a gzip bomb, an
endless body), abandoned before it can exhaust the worker's memory."""
MAX_REQUEST_SECONDS = 120.0
"""Longest one request may take, body included (httpx's timeouts bound each read, not a
body that trickles a byte at a time forever)."""

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524, 525, 526, 527, 529, 530})

_SCOPE_RE = re.compile(r"\b([a-z][a-z\-]*:(?:read|write))\b")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def endpoint_template(path: str) -> str:
    """The endpoint template of a request path: ids become ``{id}``, query and trailing
    slash dropped. ``/api/lists/XyZ/relationships/profiles`` →
    ``/api/lists/{id}/relationships/profiles``."""
    q = path.find("?")
    if q >= 0:
        path = path[:q]
    if len(path) > 1 and path.endswith("/"):
        path = path.rstrip("/")
    parts = path.split("/")
    # ["", "api", "<collection>", "<id>", ...]
    if len(parts) >= 4 and parts[1] == "api" and parts[3]:
        parts[3] = "{id}"
        return "/".join(parts)
    return path


@functools.lru_cache(maxsize=64)  # one host per client: called for every link followed
def _host_key(host: str | None) -> str:
    """A host name compared by meaning: case and a trailing dot ignored, every loopback
    spelling (``localhost``, ``127.x.y.z``, ``::1``) one name."""
    host = (host or "").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return "<loopback>"
    try:
        if ipaddress.ip_address(host.strip("[]")).is_loopback:
            return "<loopback>"
    except ValueError:
        pass
    return host


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, (TransientError, RateLimitedError)) and not getattr(exc, "final", False)


class KlaviyoClient:
    """A thread-safe, read-only Klaviyo API client.

    :param api_key: a Klaviyo Private API Key (never logged, never in reprs or errors).
    :param base_url: ``https://a.klaviyo.com`` or a stand-in's URL.
    :param revision: the ``revision`` header.
    :param budgets: the account's rate budgets (share one across clients of an account);
        a fresh :class:`RateBudgets` by default. Its ``time_scale`` also shrinks the
        backoff, its ``header_scale`` divides ``Retry-After``.
    :param max_retries: retries after the first attempt.
    :param max_retry_time: seconds after which no new attempt starts.
    :param timeout: httpx timeout.
    :param max_connections: pool size.
    :param transport: an httpx transport (tests).
    :param cancel_event: when set, waits (budget, backoff) raise :class:`SyncCancelled`.
    :param backoff_initial, backoff_max: exponential backoff bounds in server seconds.
    :param max_body_bytes, max_request_seconds: hard limits of one response (see
        :data:`MAX_BODY_BYTES`, :data:`MAX_REQUEST_SECONDS`).
    """

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        revision: str = REVISION,
        budgets: RateBudgets | None = None,
        max_retries: int = 8,
        max_retry_time: float = 300.0,
        timeout: httpx.Timeout | float | None = httpx.Timeout(30, connect=10),
        max_connections: int = 32,
        transport: httpx.BaseTransport | None = None,
        cancel_event: threading.Event | None = None,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_request_seconds: float = MAX_REQUEST_SECONDS,
    ) -> None:
        if not isinstance(api_key, str) or not api_key.strip():
            raise ConfigurationError("an API key is required")
        self._key = api_key.strip()
        base = httpx.URL(base_url.rstrip("/"))
        if base.scheme not in ("http", "https") or not base.host:
            raise ConfigurationError("base_url must be an absolute http(s) URL")
        self.base_url = str(base)
        self._base = base
        self._origin_key = (base.scheme, _host_key(base.host), base.port or _DEFAULT_PORTS[base.scheme])
        # A link spelled exactly like base_url (the usual case) is requested as parsed;
        # httpx would otherwise parse the URL twice more (~50 µs each for a cursor link).
        self._spelling = (base.scheme, base.raw_host, base.port, b"")
        self.revision = revision
        self.budgets = budgets if budgets is not None else RateBudgets()
        self.max_retries = max(0, int(max_retries))
        self.max_retry_time = float(max_retry_time)
        self.max_body_bytes = int(max_body_bytes)
        self.max_request_seconds = float(max_request_seconds)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.cancel_event = cancel_event if cancel_event is not None else threading.Event()
        self._secrets = (self._key,)
        self._stats: dict[str, int] = {"429": 0, "retries": 0, "errors": 0}
        self._stats_lock = threading.Lock()
        self._closed = False
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={
                "Authorization": f"Klaviyo-API-Key {self._key}",
                "revision": revision,
                "Accept": JSONAPI,
                "User-Agent": USER_AGENT,
                # only what _inflater decodes, in bounded steps
                "Accept-Encoding": "gzip, deflate",
            },
            timeout=timeout,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
            follow_redirects=False,
        )
        self._retrying = Retrying(
            stop=stop_after_attempt(self.max_retries + 1) | stop_before_delay(self.max_retry_time),
            wait=self._wait_for,
            retry=retry_if_exception(_retryable),
            sleep=self._sleep,
            before_sleep=self._before_sleep,
            reraise=True,
        )

    # ------------------------------------------------------------ public
    def get(self, path: str, params: Mapping[str, Any] | None = None, *, decode: Decoder | None = None) -> Any:
        """GET ``path`` (e.g. ``/api/profiles``) with query ``params``; the JSON:API document.

        List values are sent comma-separated (``fields[profile]=email,updated``).
        ``decode`` turns a successful response's body into the result instead of the
        JSON decoder; a :class:`ValueError` from it makes the attempt transient (retried).
        """
        if not isinstance(path, str) or not path.startswith("/") or path.startswith("//"):
            raise ConfigurationError("get() takes a path such as /api/profiles; use get_url() for links")
        prepared = self._prepare_params(params) if params else None
        profile_count = False
        if prepared:
            for name, value in prepared.items():
                if name.startswith("additional-fields") and "profile_count" in value:
                    profile_count = True
                    break
        template = endpoint_template(path)
        return self._call(template, path, prepared, profile_count, decode)

    def get_url(self, url: str, *, decode: Decoder | None = None) -> Any:
        """GET a ``links.next``/``links.self`` URL returned by Klaviyo (``decode``: as :meth:`get`).

        Refuses (:class:`ForeignURLError`) any URL whose scheme, host or port differ from
        ``base_url``, so the key is never sent anywhere else. A host written in another
        form of the same name (case, a trailing dot, ``localhost``/``127.0.0.1``/``::1``
        for a loopback base URL, an explicit default port) is the same origin; only the
        link's path and query are used: the request always goes to ``base_url`` itself.
        """
        if not isinstance(url, str) or not url:
            raise ConfigurationError("get_url() needs a URL")
        try:
            parsed = httpx.URL(url)
        except Exception:  # httpx.InvalidURL and friends
            raise ForeignURLError("refused a malformed link URL") from None
        if parsed.is_relative_url:
            if not url.startswith("/") or url.startswith("//"):
                raise ForeignURLError("refused a relative link URL")
        else:
            scheme = parsed.scheme
            origin = (scheme, _host_key(parsed.host), parsed.port or _DEFAULT_PORTS.get(scheme))
            if origin != self._origin_key:
                log.warning("refused to follow a link to another origin (%s://%s)", scheme, parsed.host)
                raise ForeignURLError(endpoint=endpoint_template(parsed.path))
            if (scheme, parsed.raw_host, parsed.port, parsed.userinfo) == self._spelling and not parsed.fragment:
                url = parsed  # base_url's own spelling, nothing more: the same request
            else:
                # Same origin, spelled differently: request the link's path and query
                # from base_url (never from the host as the link spells it).
                url = self._base.copy_with(raw_path=parsed.raw_path)
        query = unquote(parsed.query.decode("ascii", "replace")) if parsed.query else ""
        for forbidden in FORBIDDEN_FIELDS:
            if forbidden in query:
                raise ConfigurationError(f"the plugin never requests {forbidden}")
        profile_count = "profile_count" in query and "additional-fields" in query
        return self._call(endpoint_template(parsed.path), url, None, profile_count, decode)

    @property
    def stats(self) -> dict[str, int]:
        """Requests sent per ``"GET <template>"`` (every attempt), plus ``"429"``,
        ``"retries"`` and ``"errors"`` (errors raised to the caller)."""
        with self._stats_lock:
            return dict(self._stats)

    def cancel(self) -> None:
        """Make every current and future wait of this client raise :class:`SyncCancelled`."""
        self.cancel_event.set()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._http.close()

    def __enter__(self) -> KlaviyoClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"KlaviyoClient(base_url={self.base_url!r}, revision={self.revision!r}, key=***)"

    __str__ = __repr__

    def __reduce__(self):  # never pickle the key
        raise TypeError("KlaviyoClient cannot be pickled")

    # ----------------------------------------------------------- private
    def _prepare_params(self, params: Mapping[str, Any]) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in params.items():
            if value is None:
                continue
            if isinstance(value, (list, tuple, set, frozenset)):
                value = ",".join(str(v) for v in value)
            elif isinstance(value, bool):
                value = "true" if value else "false"
            else:
                value = str(value)
            out[name] = value
            for forbidden in FORBIDDEN_FIELDS:
                if forbidden in value or forbidden in name:
                    raise ConfigurationError(f"the plugin never requests {forbidden}")
        return out

    def _call(self, template: str, target: str | httpx.URL, params: dict | None, profile_count: bool, decode: Decoder | None) -> Any:
        if self._closed:
            raise ConfigurationError("the client is closed")
        budgets = self.budgets.for_request(template, profile_count)
        try:
            return self._retrying(self._attempt, template, target, params, budgets, decode)
        except KlaviyoAPIError:
            self._count("errors")
            raise

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self._stats[key] = self._stats.get(key, 0) + 1

    def _attempt(self, template: str, target: str | httpx.URL, params: dict | None, budgets: tuple, decode: Decoder | None) -> Any:
        cancel = self.cancel_event
        # The endpoint's own budget comes first in ``budgets`` and is taken last (a stacked,
        # stricter budget may make the request wait; the endpoint's grant should not sit
        # idle meanwhile). Only the endpoint's budget follows the response's ``RateLimit-*``
        # headers: they describe the endpoint's window, never a stacked limit's (the
        # ``profile_count`` field's 15/min), which therefore stays a local log that no
        # header can loosen.
        ticket = None
        for budget in reversed(budgets):
            ticket = budget.acquire_ticket(timeout=self.max_retry_time, cancel=cancel)
            if ticket is None:
                exc = RateLimitedError("waited too long for the rate budget", endpoint=template, status=None)
                exc.final = True
                raise exc
        self._count("GET " + template)
        response, content = self._fetch(template, target, params)
        headers = response.headers
        status = response.status_code
        if status < 300:
            budgets[0].observe(headers, ticket=ticket)
            try:
                if decode is not None:
                    return decode(content)
                body = _loads(content)
            except _JSONError:
                raise TransientError("response is not JSON", status=status, endpoint=template) from None
            if not isinstance(body, dict) or not isinstance(body.get("data"), (list, dict)):
                # JSON:API: a successful document has ``data`` (a list for a collection, an
                # object for a resource). Without it, it is a broken answer, never an empty
                # page: retried like any transient failure.
                raise TransientError("response is not a JSON:API document with data", status=status, endpoint=template)
            links = body.get("links")
            if links is not None and (not isinstance(links, dict) or not isinstance(links.get("next") or "", str)):
                raise TransientError("response links are malformed", status=status, endpoint=template)
            return body
        if status == 429:
            self._count("429")
            retry_after = _retry_after(headers)
            for budget in budgets:
                budget.penalize(retry_after)
            code, detail = _error_code_detail(_jsonapi_errors(response, content))
            raise RateLimitedError(status=429, endpoint=template, retry_after=retry_after, code=code,
                                   detail=detail, secrets=self._secrets)
        budgets[0].observe(headers, ticket=ticket)
        raise self._error(template, response, content)

    def _fetch(self, template: str, target: str | httpx.URL, params: dict | None) -> tuple[httpx.Response, bytes]:
        """Send the request and read its body within hard limits (see :meth:`_read`)."""
        try:
            return self._read(template, target, params)
        except zlib.error:
            raise TransientError("undecodable response body (bad compression)", endpoint=template) from None
        except httpx.TimeoutException as exc:
            raise TransientError(f"timed out ({type(exc).__name__})", endpoint=template) from None
        except httpx.TransportError as exc:
            raise TransientError(f"connection failed ({type(exc).__name__})", endpoint=template) from None

    def _read(self, template: str, target: str | httpx.URL, params: dict | None) -> tuple[httpx.Response, bytes]:
        """Send the request and read its body within hard limits: at most
        :data:`MAX_BODY_BYTES` once decompressed (a gzip bomb or an endless chunked body is
        cut off, never held in memory) and :data:`MAX_REQUEST_SECONDS` in all (a body that
        trickles forever is abandoned). Past a limit: :class:`TransientError`, retried like
        any transient failure."""
        deadline = time.monotonic() + self.max_request_seconds
        with self._http.stream("GET", target, params=params) as response:
            # Decompressed here, in bounded steps (httpx would inflate a whole network chunk
            # at once: 64 kB of a gzip bomb is gigabytes).
            inflate = _inflater(response.headers.get("content-encoding", ""), template, response.status_code)
            chunks: list[bytes] = []
            size = 0
            for raw in response.iter_raw():  # as the network delivers it: no re-chunking
                if inflate is None:
                    size += len(raw)
                    chunks.append(raw)
                else:
                    data = raw
                    while data:
                        out = inflate.decompress(data, self.max_body_bytes - size + 1)
                        data = inflate.unconsumed_tail
                        size += len(out)
                        chunks.append(out)
                        if size > self.max_body_bytes:
                            break
                if size > self.max_body_bytes:
                    raise TransientError(
                        f"response body over {self.max_body_bytes:,} bytes (decompressed); abandoned",
                        status=response.status_code, endpoint=template,
                    )
                if time.monotonic() > deadline:
                    raise TransientError(
                        f"response took over {self.max_request_seconds:g} s; abandoned",
                        status=response.status_code, endpoint=template,
                    )
            if inflate is not None:
                tail = inflate.flush()
                if size + len(tail) > self.max_body_bytes:
                    raise TransientError(
                        f"response body over {self.max_body_bytes:,} bytes (decompressed); abandoned",
                        status=response.status_code, endpoint=template,
                    )
                chunks.append(tail)
            return response, b"".join(chunks)

    def _error(self, template: str, response: httpx.Response, content: bytes) -> KlaviyoAPIError:
        status = response.status_code
        errors = _jsonapi_errors(response, content)
        code, detail = _error_code_detail(errors)
        common = dict(status=status, endpoint=template, code=code, detail=detail, secrets=self._secrets)
        revision_refused = status == 410 or (
            status == 400
            and any(isinstance(e.get("source"), dict) and e["source"].get("parameter") == "revision" for e in errors or ())
        )
        if revision_refused:
            # A retired revision answers 410 Gone; an unknown one a 400 on the header.
            return RevisionUnsupportedError(revision=self.revision, **common)
        if status == 401 or (status == 403 and code in KEY_REJECTED_CODES):
            # The spec ties no status to a rejected key (every error is a 4XX ClientError
            # with a free ``code``): a 403 whose code says the key itself was refused is
            # a bad key, not a missing scope.
            return InvalidKeyError(**common)
        if status == 403:
            if errors is None:  # an HTML/CDN page, not Klaviyo's API: retry
                ctype = response.headers.get("content-type", "?").split(";")[0]
                return TransientError(f"403 without a JSON:API body ({ctype})", status=403, endpoint=template)
            scopes = set(ENDPOINT_SCOPES.get(template, ()))
            for err in errors:
                for text in (err.get("detail"), err.get("title")):
                    if isinstance(text, str):
                        scopes.update(_SCOPE_RE.findall(text))
            return MissingScopeError(scopes=scopes, **common)
        if status == 404:
            return NotFoundError(**common)
        if status == 400:
            invalid_cursor = False
            for err in errors or ():
                source = err.get("source") if isinstance(err.get("source"), dict) else {}
                text = " ".join(str(err.get(k) or "") for k in ("detail", "title", "code")).lower()
                if source.get("parameter") == "page[cursor]" or "cursor" in text:
                    invalid_cursor = True
            return BadRequestError(invalid_cursor=invalid_cursor, **common)
        if status in RETRYABLE_STATUS or status >= 500:
            return TransientError(f"Klaviyo answered {status}", **common)
        return KlaviyoAPIError(f"Klaviyo answered {status}", **common)

    # tenacity hooks
    def _wait_for(self, retry_state) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        scale = self.budgets.time_scale
        attempt = max(1, retry_state.attempt_number)
        backoff = min(self.backoff_max, self.backoff_initial * (2 ** (attempt - 1))) / scale
        wait = random.uniform(0, backoff)  # full jitter
        if isinstance(exc, RateLimitedError) and exc.retry_after is not None:
            ra = exc.retry_after / self.budgets.header_scale
            wait = ra + random.uniform(0, min(ra * 0.1, 0.5))
        return wait

    def _sleep(self, seconds: float) -> None:
        if seconds > 0 and self.cancel_event.wait(seconds):
            raise SyncCancelled("the request was cancelled")
        if self.cancel_event.is_set():
            raise SyncCancelled("the request was cancelled")

    def _before_sleep(self, retry_state) -> None:
        self._count("retries")
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        log.warning(
            "GET %s failed (%s %s); retry %d in %.2fs",
            getattr(exc, "endpoint", "?"),
            type(exc).__name__,
            getattr(exc, "status", None),
            retry_state.attempt_number,
            retry_state.upcoming_sleep,
        )


def _inflater(encoding: str, template: str, status: int):
    """A bounded decompressor for a ``Content-Encoding`` (``None``: the body is plain)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj(32 + zlib.MAX_WBITS)  # zlib or gzip header, auto-detected
    raise TransientError(f"unsupported content encoding ({encoding[:20]})", status=status, endpoint=template)


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        from email.utils import parsedate_to_datetime
        from datetime import datetime, timezone

        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    return max(0.0, seconds)


def _error_code_detail(errors: list[dict] | None) -> tuple[str | None, str | None]:
    """The first JSON:API error's ``code`` and ``detail`` (else ``title``), unsanitized."""
    first = errors[0] if errors else {}
    code = first.get("code") if isinstance(first.get("code"), str) else None
    detail = first.get("detail") if isinstance(first.get("detail"), str) else None
    if detail is None and isinstance(first.get("title"), str):
        detail = first["title"]
    return code, detail


def _jsonapi_errors(response: httpx.Response, content: bytes) -> list[dict] | None:
    """The ``errors`` array of a JSON:API error document, ``None`` when the body is not one."""
    ctype = response.headers.get("content-type", "").lower()
    if "json" not in ctype:
        return None
    try:
        body = _loads(content)
    except _JSONError:
        return None
    if not isinstance(body, dict):
        return None
    errors = body.get("errors")
    if not isinstance(errors, list) or not errors:
        return None
    return [e for e in errors if isinstance(e, dict)] or None
