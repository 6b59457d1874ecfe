"""The web server over real HTTP (no browser): per-store URLs and checks, CSRF, the JSON
API, the key kept out of answers; and the wheel's contents."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest
from klaviyo_standin import ALL_SCOPES, DEFAULT_API_KEY, StandInServer, generate_account

from hookspecs import get_plugin_manager
from hookspecs.interfaces import NewContact
from smartpush_devhost.web.server import WebServer
from tests.harness import CLOCK_SCALE, make_host

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def klaviyo():
    with StandInServer(generate_account(profiles=60, seed=5), api_keys={DEFAULT_API_KEY: ALL_SCOPES},
                       clock_scale=CLOCK_SCALE) as srv:
        yield srv


@pytest.fixture
def web(db_url, tmp_path, klaviyo):
    pm = get_plugin_manager()
    host = make_host(db_url, tmp_path, klaviyo)
    host.ensure_store("shop-a")
    host.ensure_store("shop-b")
    with WebServer(host, pm, port=0) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        yield host, http
    host.close()


def _csrf(http: httpx.Client, path: str) -> str:
    page = http.get(path)
    assert page.status_code == 200, page.text
    return re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)


def _wait_idle(http: httpx.Client, store: str) -> dict:
    import time

    deadline = time.monotonic() + 60
    while True:
        status = http.get(f"/api/stores/{store}/integrations/klaviyo").json()
        if not status["running"]:
            return status
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_unknown_store_or_integration_is_404_and_never_created(web):
    host, http = web
    assert http.get("/stores/nope/apps").status_code == 404
    assert http.get("/stores/nope/contacts").status_code == 404
    assert http.get("/api/stores/nope/integrations").status_code == 404
    assert http.post("/api/stores/nope/integrations/klaviyo/install", json={}).status_code == 404
    assert http.get("/stores/shop-a/apps/mailchimp").status_code == 404
    assert http.get("/stores/..%2Fetc/apps").status_code == 404
    assert "nope" not in host.list_stores()


def test_forms_need_the_csrf_token_and_the_api_needs_json(web):
    host, http = web
    # a form post without (or with a wrong) token changes nothing
    assert http.post("/stores/shop-a/apps/klaviyo/install", data={}).status_code == 400
    assert http.post("/stores/shop-a/apps/klaviyo/install", data={"csrf_token": "forged"}).status_code == 400
    assert http.get("/api/stores/shop-a/integrations/klaviyo").json()["installed"] is False
    # a cross-site form cannot send JSON: the API refuses form bodies
    assert http.post("/api/stores/shop-a/integrations/klaviyo/install", data={"x": "1"}).status_code == 415
    token = _csrf(http, "/stores/shop-a/apps/klaviyo")
    assert http.post("/stores/shop-a/apps/klaviyo/install", data={"csrf_token": token}).status_code == 302
    assert http.get("/api/stores/shop-a/integrations/klaviyo").json()["installed"] is True
    # Cancel Integration needs the confirmation too
    token = _csrf(http, "/stores/shop-a/apps/klaviyo/cancel")
    assert http.post("/stores/shop-a/apps/klaviyo/cancel", data={"csrf_token": token}).status_code == 400
    assert http.post("/api/stores/shop-a/integrations/klaviyo/cancel", json={}).status_code == 400


def test_json_api_runs_the_integration_and_keeps_stores_apart(web):
    host, http = web
    base = "/api/stores/shop-a/integrations/klaviyo"
    assert http.post(f"{base}/install", json={}).json()["state"] == "pending_integration"
    refused = http.post(f"{base}/authorize", json={"api_key": "pk_" + "z" * 34})
    assert refused.status_code == 422 and "pk_zzz" not in refused.text
    accepted = http.post(f"{base}/authorize", json={"api_key": DEFAULT_API_KEY})
    assert accepted.status_code == 200, accepted.text
    assert DEFAULT_API_KEY not in accepted.text
    assert accepted.json()["status"]["state_label"] == "Syncing"
    started = http.post(f"{base}/sync", json={"mode": "full"})
    assert started.status_code == 202
    status = _wait_idle(http, "shop-a")
    assert status["web_run"]["outcome"] == "completed", status
    assert status["counts"]["contacts"] > 0 and status["last_successful_sync_at"]
    contacts = http.get("/api/stores/shop-a/contacts").json()
    assert contacts["contacts"] and all("***" in c["email"] for c in contacts["contacts"] if c["email"] != "-")
    tag = next(iter(contacts["custom_user_tags"]))
    tagged = http.get("/api/stores/shop-a/contacts", params={"tag": tag}).json()["contacts"]
    assert tagged and all(tag in c["tags"] for c in tagged)
    # the other store sees none of it
    other = http.get("/api/stores/shop-b/integrations/klaviyo").json()
    assert other["installed"] is False and other["counts"].get("contacts", 0) == 0
    assert http.get("/api/stores/shop-b/contacts").json()["contacts"] == []
    page_b = http.get("/stores/shop-b/contacts").text
    assert tag not in page_b and "No contacts." in page_b
    # cancel
    cancelled = http.post(f"{base}/cancel", json={"confirm": True}).json()
    assert cancelled["state"] == "pending_integration" and cancelled["has_key"] is False


def test_the_same_uid_in_two_stores_shows_each_store_its_own_contact(web):
    host, http = web
    for store, email, tag in (("shop-a", "ann@a.example", "kla_list_a"), ("shop-b", "bob@b.example", "kla_list_b")):
        with host.storage.transaction() as tx:
            contacts = host.contacts(store)
            contacts.create_many(tx, [NewContact(email=email, name=store)], uids=["sp_shared"])
            contacts.add_tags(tx, [("sp_shared", tag)])
    for store, email, tag, other_tag in (("shop-a", "a***@a.example", "kla_list_a", "kla_list_b"),
                                         ("shop-b", "b***@b.example", "kla_list_b", "kla_list_a")):
        (row,) = http.get(f"/api/stores/{store}/contacts").json()["contacts"]
        assert (row["uid"], row["email"], row["tags"]) == ("sp_shared", email, [tag])
        assert http.get(f"/api/stores/{store}/contacts", params={"tag": other_tag}).json()["contacts"] == []


def test_the_wheel_ships_contract_host_and_plugin_but_not_the_standin(tmp_path):
    """Built from the checkout with setuptools (no network: build isolation off)."""
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("smartpush_plugin_klaviyo-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names if "/" in n and ".dist-info" not in n}
    assert tops == {"hookspecs", "smartpush_devhost", "smartpush_plugin_klaviyo"}, tops
    assert not any("klaviyo_standin" in n for n in names)
    assert "smartpush_devhost/web/templates/integration.html" in names
    assert "smartpush_devhost/web/static/style.css" in names


def test_smartpush_serve_picks_a_free_port_and_redirects_to_the_default_store(tmp_path, db_url, klaviyo):
    from tests.harness import cli_environment
    from tests.web_helpers import serve_process

    with serve_process(cli_environment(tmp_path, db_url, klaviyo), tmp_path / "serve.log") as url:
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        with httpx.Client(base_url=url, timeout=30) as http:
            first = http.get("/")
            assert first.status_code == 302 and first.headers["location"].endswith("/stores/default/apps")
            page = http.get("/stores/default/apps")
            assert "Klaviyo Data Import Tool" in page.text
            assert page.headers["cache-control"] == "no-store"
            assert "Sync Klaviyo Contacts" in http.get("/stores/default/contacts/import").text
