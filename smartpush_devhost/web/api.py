"""The JSON API: what the pages do, for machines, under ``/api/stores/<store>/``.

CSRF: a POST must carry a JSON body (``Content-Type: application/json``); a cross-site
HTML form cannot send one and the server sends no CORS headers, so another site cannot
make a browser call these endpoints. The key goes in the body of ``authorize``
(``{"api_key": "..."}``) and is never returned.
"""

from __future__ import annotations

from flask import Blueprint, abort, current_app, request

from smartpush_devhost.web.contacts_page import list_contacts, tag_summary

api = Blueprint("api", __name__, url_prefix="/api")


def _web():
    return current_app.extensions["smartpush"]


def _json_body() -> dict:
    if not request.is_json:
        abort(415, description="Send a JSON body (Content-Type: application/json).")
    body = request.get_json(silent=True)
    if body is None:
        body = {}
    if not isinstance(body, dict):
        abort(400, description="The body must be a JSON object.")
    return body


def _checked(store: str, integration: str | None = None):
    web = _web()
    web.require_store(store)
    if integration is not None:
        web.require_integration(integration)
    return web


@api.get("/stores")
def stores():
    return {"stores": _web().host.list_stores()}


@api.get("/stores/<store>/integrations")
def integrations(store):
    web = _checked(store)
    return {"integrations": [
        {**info.model_dump(), "status": web.status(store, name)} for name, info in web.integrations().items()
    ]}


@api.get("/stores/<store>/integrations/<integration>")
def status(store, integration):
    return _checked(store, integration).status(store, integration)


@api.post("/stores/<store>/integrations/<integration>/install")
def install(store, integration):
    web = _checked(store, integration)
    _json_body()
    web.install(store, integration)
    return web.status(store, integration)


@api.post("/stores/<store>/integrations/<integration>/authorize")
def authorize(store, integration):
    web = _checked(store, integration)
    key = _json_body().get("api_key")
    if not isinstance(key, str) or not key.strip():
        abort(400, description="Give the key as {\"api_key\": \"...\"}.")
    result = web.authorize(store, integration, key)
    return {"result": result.model_dump(mode="json"), "status": web.status(store, integration)}, (200 if result.ok else 422)


@api.post("/stores/<store>/integrations/<integration>/sync")
def sync(store, integration):
    web = _checked(store, integration)
    full = _json_body().get("mode") == "full"
    started = web.sync_now(store, integration, full=full)
    return {"started": started, "status": web.status(store, integration)}, (202 if started else 409)


@api.post("/stores/<store>/integrations/<integration>/cancel")
def cancel(store, integration):
    web = _checked(store, integration)
    if _json_body().get("confirm") is not True:
        abort(400, description="Cancel Integration needs {\"confirm\": true}.")
    web.cancel(store, integration)
    return web.status(store, integration)


@api.get("/stores/<store>/contacts")
def contacts(store):
    web = _checked(store)
    tag = request.args.get("tag") or None
    page = request.args.get("page", "1")
    page = int(page) if page.isdigit() and int(page) > 0 else 1
    custom, other = tag_summary(web.host, store)
    return {
        "custom_user_tags": custom,
        "tags": other,
        "tag": tag,
        "page": page,
        "contacts": [row.as_dict() for row in list_contacts(web.host, store, tag, page)],
    }
