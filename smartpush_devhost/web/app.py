"""The Flask application: HTML pages per store and the JSON API under ``/api``.

Every URL that shows or changes a store's data names the store
(``/stores/<store>/...``); a store that does not exist is a 404, and a page reads only
the host context of the store in its URL. The API key reaches the server only in a
POST body, goes straight to ``smartpush_authorize`` and is never rendered, flashed,
logged or kept.
"""

from __future__ import annotations

import secrets

from flask import Flask, abort, flash, redirect, render_template, request, url_for

from smartpush_devhost.host import validate_store_id
from smartpush_devhost.web import csrf
from smartpush_devhost.web.api import api
from smartpush_devhost.web.background import BackgroundSyncs
from smartpush_devhost.web.contacts_page import PAGE_SIZE, list_contacts, tag_summary
from smartpush_devhost.web.status_text import describe


class WebHost:
    """What the views need: the development host, the plugin manager, the background syncs."""

    def __init__(self, host, pm):
        self.host = host
        self.pm = pm
        self.syncs = BackgroundSyncs(host, pm)

    def __repr__(self) -> str:
        return f"WebHost(host={self.host!r})"

    def require_store(self, store_id: str) -> str:
        """``store_id`` if that store exists, else 404 (never creates a store)."""
        try:
            validate_store_id(store_id)
        except ValueError:
            abort(404)
        if store_id not in self.host.list_stores():
            abort(404, description=f"No store {store_id!r}.")
        return store_id

    def integrations(self) -> dict:
        """The discovered integrations by name (``smartpush_integration_info``)."""
        return {info.name: info for info in sorted(self.pm.hook.smartpush_integration_info(), key=lambda i: i.name)}

    def require_integration(self, name: str):
        info = self.integrations().get(name)
        if info is None:
            abort(404, description=f"No integration {name!r}.")
        return info

    def status(self, store_id: str, integration: str) -> dict:
        status = self.pm.hook.smartpush_status(integration=integration, host=self.host.context(store_id))
        return describe(status, self.syncs.state(store_id, integration).as_dict())

    def install(self, store_id: str, integration: str):
        return self.pm.hook.smartpush_install(integration=integration, host=self.host.context(store_id))

    def authorize(self, store_id: str, integration: str, key: str):
        return self.pm.hook.smartpush_authorize(integration=integration, host=self.host.context(store_id),
                                                credentials=key)

    def cancel(self, store_id: str, integration: str):
        return self.pm.hook.smartpush_uninstall(integration=integration, host=self.host.context(store_id))

    def sync_now(self, store_id: str, integration: str, full: bool) -> bool:
        return self.syncs.start(store_id, integration, "full" if full else "incremental")


def create_app(host, pm, *, secret_key: bytes | None = None) -> Flask:
    """The web application for ``host`` (a :class:`~smartpush_devhost.host.DevHost`).

    :param secret_key: signs the session cookie (CSRF token, messages); random per
        server start by default, which simply expires open forms on restart.
    """
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secret_key or secrets.token_bytes(32),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        MAX_CONTENT_LENGTH=64 * 1024,
    )
    web = WebHost(host, pm)
    app.extensions["smartpush"] = web
    app.register_blueprint(api)
    app.jinja_env.globals["csrf_token"] = csrf.token

    @app.after_request
    def no_store(response):
        # pages hold store data: never cached, never framed
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    @app.get("/")
    def index():
        return redirect(url_for("apps", store=host.default_store))

    @app.get("/stores/<store>/apps")
    def apps(store):
        web.require_store(store)
        cards = []
        for name, info in web.integrations().items():
            cards.append({"info": info, "status": web.status(store, name)})
        return render_template("apps.html", store=store, cards=cards, stores=host.list_stores())

    @app.get("/stores/<store>/contacts/import")
    def contacts_import(store):
        web.require_store(store)
        return render_template("contacts_import.html", store=store, integrations=web.integrations())

    @app.get("/stores/<store>/apps/<integration>")
    def integration(store, integration):
        web.require_store(store)
        info = web.require_integration(integration)
        return render_template("integration.html", store=store, info=info, s=web.status(store, integration))

    def _post(store, integration):
        web.require_store(store)
        web.require_integration(integration)
        csrf.check()

    def _back(store, integration):
        return redirect(url_for("integration", store=store, integration=integration))

    @app.post("/stores/<store>/apps/<integration>/install")
    def install(store, integration):
        _post(store, integration)
        web.install(store, integration)
        flash("Installed. Paste a Private API Key and click Integrate.", "ok")
        return _back(store, integration)

    @app.post("/stores/<store>/apps/<integration>/authorize")
    def authorize(store, integration):
        _post(store, integration)
        result = web.authorize(store, integration, request.form.get("api_key", ""))
        flash(result.message, "ok" if result.ok else "error")
        return _back(store, integration)

    @app.post("/stores/<store>/apps/<integration>/sync")
    def sync_now(store, integration):
        _post(store, integration)
        started = web.sync_now(store, integration, full=request.form.get("mode") == "full")
        flash("Sync started." if started else "A sync is already running.", "ok")
        return _back(store, integration)

    @app.get("/stores/<store>/apps/<integration>/cancel")
    def cancel_confirm(store, integration):
        web.require_store(store)
        info = web.require_integration(integration)
        return render_template("cancel.html", store=store, info=info)

    @app.post("/stores/<store>/apps/<integration>/cancel")
    def cancel(store, integration):
        _post(store, integration)
        if request.form.get("confirm") != "yes":
            abort(400, description="Cancel Integration needs confirmation.")
        web.cancel(store, integration)
        flash("Integration cancelled: the key is deleted and no sync runs. Imported contacts are kept.", "ok")
        return _back(store, integration)

    @app.get("/stores/<store>/contacts")
    def contacts(store):
        web.require_store(store)
        tag = request.args.get("tag") or None
        page = request.args.get("page", "1")
        page = int(page) if page.isdigit() and int(page) > 0 else 1
        custom, other = tag_summary(host, store)
        rows = list_contacts(host, store, tag, page)
        return render_template("contacts.html", store=store, tag=tag, page=page, rows=rows, custom_tags=custom,
                               other_tags=other, page_size=PAGE_SIZE)

    @app.errorhandler(400)
    @app.errorhandler(415)
    @app.errorhandler(404)
    def error_page(err):
        if request.path.startswith("/api/"):
            return {"error": err.name, "detail": err.description}, err.code
        return render_template("error.html", err=err, store=None), err.code

    return app
