"""CSRF protection for the HTML forms: a random token per browser session.

The token lives in the signed session cookie (``SameSite=Strict``, ``HttpOnly``) and in
a hidden field of every form; a POST whose field does not match is refused with 400.
The JSON API is protected differently (see :mod:`smartpush_devhost.web.api`): it only
accepts ``application/json`` bodies, which a cross-site form cannot send.
"""

from __future__ import annotations

import hmac
import secrets

from flask import abort, request, session

FIELD = "csrf_token"


def token() -> str:
    """The session's CSRF token (created on first use)."""
    value = session.get(FIELD)
    if not value:
        value = secrets.token_urlsafe(32)
        session[FIELD] = value
    return value


def check() -> None:
    """Abort with 400 unless the form's token matches the session's."""
    expected = session.get(FIELD)
    given = request.form.get(FIELD, "")
    if not expected or not hmac.compare_digest(str(expected), str(given)):
        abort(400, description="The form expired or did not come from this site (CSRF check failed); reload the page.")
