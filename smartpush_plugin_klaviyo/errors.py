"""The one error hierarchy of the Klaviyo plugin.

::

    KlaviyoPluginError
    ├── KlaviyoAPIError              (status, endpoint, code, detail)
    │   ├── InvalidKeyError          401: the key was revoked, expired or mistyped
    │   ├── MissingScopeError        403 with a JSON:API error body (scopes)
    │   ├── RateLimitedError         429 after the retries were exhausted (retry_after)
    │   ├── TransientError           5xx/524, timeouts, resets, HTML 403, retries exhausted
    │   ├── BadRequestError          400 (invalid_cursor)
    │   ├── NotFoundError            404
    │   ├── PaginationError          a ``links.next`` chain that repeats a cursor or never ends
    │   ├── RevisionUnsupportedError 410, or a 400 refusing the ``revision`` header
    │   └── ForeignURLError          a ``links.next`` pointing outside the configured base URL
    ├── SyncCancelled                the sync was asked to stop (uninstall, host request)
    │   ├── SyncStopped              the host is shutting down; the next run resumes
    │   └── LeaseLost                this worker's lease expired and another worker took it
    ├── DatabaseBusy                 a lock wait ran past the database's bound (transient)
    └── ConfigurationError           the plugin was asked for something it never does

Every message is sanitized: it never contains the API key, email addresses or phone
numbers, and response bodies are truncated. ``str()`` and ``repr()`` only show the
sanitized fields.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = [
    "KlaviyoPluginError",
    "KlaviyoAPIError",
    "InvalidKeyError",
    "MissingScopeError",
    "RateLimitedError",
    "TransientError",
    "BadRequestError",
    "NotFoundError",
    "ForeignURLError",
    "PaginationError",
    "RevisionUnsupportedError",
    "SyncCancelled",
    "LeaseLost",
    "DatabaseBusy",
    "ConfigurationError",
    "sanitize",
    "MAX_DETAIL_CHARS",
]

MAX_DETAIL_CHARS = 300

_EMAIL_RE = re.compile(r"[A-Za-z0-9._%+\-']+@[A-Za-z0-9.\-]+(?:\.[A-Za-z]{2,})?")
# Klaviyo private keys look like ``pk_`` + hex; public ones are 6 characters (not secret).
_KEY_RE = re.compile(r"\bpk_[A-Za-z0-9_\-]+")
# Anything resembling a phone number: an optional +, then 7+ digits possibly separated.
_PHONE_RE = re.compile(
    r"(\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:[+-]\d{2}:?\d{2}|Z)?)?)"  # keep dates
    r"|(?<![\w])\+?\d(?:[\s().\-]*\d){6,}"
)
_AUTH_RE = re.compile(r"(Klaviyo-API-Key)\s+\S+", re.IGNORECASE)


def sanitize(text: object, secrets: Iterable[str] = (), limit: int = MAX_DETAIL_CHARS) -> str | None:
    """``text`` without secrets, API keys, emails or phone numbers, truncated to ``limit``."""
    if text is None:
        return None
    if not isinstance(text, str):
        text = str(text)
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    text = _AUTH_RE.sub(r"\1 [redacted]", text)
    text = _KEY_RE.sub("[redacted-key]", text)
    text = _EMAIL_RE.sub("[redacted-email]", text)
    text = _PHONE_RE.sub(lambda m: m.group(1) or "[redacted-phone]", text)
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


class KlaviyoPluginError(Exception):
    """Root of every error the plugin raises."""

    def __init__(self, message: str = "", *, secrets: Iterable[str] = ()) -> None:
        self.message = sanitize(message, secrets) or ""
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class SyncCancelled(KlaviyoPluginError):
    """The sync was asked to stop (uninstall, host shutdown, client cancelled)."""


class SyncStopped(SyncCancelled):
    """The host asked the run to stop (it is shutting down); the next run resumes."""


class LeaseLost(SyncCancelled):
    """This worker no longer holds the store's sync lease (it expired and another worker took
    it): the write transaction that noticed is rolled back and the run stops, writing nothing."""


class DatabaseBusy(KlaviyoPluginError):
    """A statement waited for a lock longer than the database allows (SQLite's busy timeout,
    PostgreSQL's ``lock_timeout``): another transaction, maybe a frozen worker's, holds it.
    Transient: the run fails, is counted as a failed attempt, and resumes from its
    checkpoint next time. The message names the database and never a value."""


class ConfigurationError(KlaviyoPluginError):
    """The plugin was configured or asked to do something it never does."""


class KlaviyoAPIError(KlaviyoPluginError):
    """Klaviyo answered with an error, or could not be reached.

    :ivar status: HTTP status (``None`` when no response was received).
    :ivar endpoint: the endpoint *template*, e.g. ``/api/lists/{id}`` (never ids or queries).
    :ivar code: Klaviyo's JSON:API error code (e.g. ``permission_denied``), if any.
    :ivar detail: sanitized, truncated detail (no key, emails or phone numbers).
    """

    default_message = "Klaviyo API error"

    def __init__(
        self,
        message: str | None = None,
        *,
        status: int | None = None,
        endpoint: str | None = None,
        code: str | None = None,
        detail: str | None = None,
        secrets: Iterable[str] = (),
    ) -> None:
        secrets = tuple(s for s in secrets if s)
        self.status = status
        self.endpoint = endpoint
        self.code = sanitize(code, secrets, 80)
        self.detail = sanitize(detail, secrets)
        super().__init__(message or self.default_message, secrets=secrets)

    def __str__(self) -> str:
        parts = [self.message]
        where = []
        if self.status is not None:
            where.append(str(self.status))
        if self.endpoint:
            where.append(f"GET {self.endpoint}")
        if where:
            parts.append(f"({' '.join(where)})")
        if self.code:
            parts.append(f"[{self.code}]")
        if self.detail:
            parts.append(f"- {self.detail}")
        return " ".join(parts)

    def __repr__(self) -> str:
        extra = "".join(f", {name}={value!r}" for name, value in self._repr_fields())
        return (
            f"{type(self).__name__}({self.message!r}, status={self.status!r}, "
            f"endpoint={self.endpoint!r}, code={self.code!r}, detail={self.detail!r}{extra})"
        )

    def _repr_fields(self) -> list[tuple[str, object]]:
        return []


class InvalidKeyError(KlaviyoAPIError):
    """401: Klaviyo does not accept the key (revoked, expired or mistyped)."""

    default_message = "Klaviyo rejected the API key"


class MissingScopeError(KlaviyoAPIError):
    """403 with a JSON:API error body: the key lacks a scope the endpoint needs.

    :ivar scopes: the scopes the endpoint requires (from the embedded table) plus any
        scope named in Klaviyo's detail, sorted and deduplicated.
    """

    default_message = "The API key lacks a required scope"

    def __init__(self, message: str | None = None, *, scopes: Iterable[str] = (), **kwargs) -> None:
        self.scopes: list[str] = sorted(set(scopes))
        super().__init__(message, **kwargs)

    def __str__(self) -> str:
        text = super().__str__()
        if self.scopes:
            text += f" (needs: {', '.join(self.scopes)})"
        return text

    def _repr_fields(self):
        return [("scopes", self.scopes)]


class RateLimitedError(KlaviyoAPIError):
    """429 still answered after every retry. ``retry_after``: Klaviyo's last hint, in seconds."""

    default_message = "Klaviyo rate limit exceeded; retries exhausted"

    def __init__(self, message: str | None = None, *, retry_after: float | None = None, **kwargs) -> None:
        self.retry_after = retry_after
        kwargs.setdefault("status", 429)
        super().__init__(message, **kwargs)

    def _repr_fields(self):
        return [("retry_after", self.retry_after)]


class TransientError(KlaviyoAPIError):
    """Klaviyo unavailable: 5xx/524, timeouts, connection resets, a non-JSON:API 403
    (CDN/firewall page), or retries exhausted. Retrying later may succeed."""

    default_message = "Klaviyo is temporarily unavailable"


class BadRequestError(KlaviyoAPIError):
    """400. ``invalid_cursor`` is true when Klaviyo refused the ``page[cursor]``."""

    default_message = "Klaviyo refused the request"

    def __init__(self, message: str | None = None, *, invalid_cursor: bool = False, **kwargs) -> None:
        self.invalid_cursor = bool(invalid_cursor)
        kwargs.setdefault("status", 400)
        super().__init__(message, **kwargs)

    def _repr_fields(self):
        return [("invalid_cursor", self.invalid_cursor)]


class NotFoundError(KlaviyoAPIError):
    """404: the resource (e.g. a list or segment) does not exist (any more)."""

    default_message = "Not found in Klaviyo"

    def __init__(self, message: str | None = None, **kwargs) -> None:
        kwargs.setdefault("status", 404)
        super().__init__(message, **kwargs)


class ForeignURLError(KlaviyoAPIError):
    """A ``links.next`` URL pointing outside the configured base URL: never followed,
    so the key is never sent anywhere else."""

    default_message = "Refused to follow a URL outside the Klaviyo base URL"


class PaginationError(KlaviyoAPIError):
    """A ``links.next`` chain that repeats a cursor, never ends, or whose cursor Klaviyo
    kept refusing after every restart. Not retried: the same chain would do it again."""

    default_message = "Klaviyo's pagination did not end"


class RevisionUnsupportedError(KlaviyoAPIError):
    """Klaviyo no longer accepts (410 Gone: retired) or never knew (400 on the ``revision``
    header) the API revision the plugin sends. Not retried: the same revision fails again."""

    default_message = "Klaviyo does not accept this API revision"

    def __init__(self, message: str | None = None, *, revision: str = "", **kwargs) -> None:
        self.revision = revision
        super().__init__(message or f"Klaviyo does not accept API revision {revision}", **kwargs)

    def _repr_fields(self):
        return [("revision", self.revision)]
