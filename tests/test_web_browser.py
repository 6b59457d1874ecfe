"""The Apps > Integrations page in a real browser (Debian's headless Chromium, Playwright).

A merchant's path from the help article: install -> key -> full sync -> paused (the key is
revoked in Klaviyo) -> new key -> resumed -> Cancel Integration, with a screenshot of each
state in ``tests/artifacts/``. The server is the real ``smartpush serve`` process, the
provider the Klaviyo stand-in over HTTP.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest
from klaviyo_standin import ALL_SCOPES, DEFAULT_API_KEY, StandInServer, generate_account

from smartpush_devhost.host import DevHost
from tests.harness import CLOCK_SCALE, cli_environment
from tests.web_helpers import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, chromium_available, serve_process

_MISSING = f"needs the playwright package and Debian's chromium at {CHROMIUM} (apt-get install -y chromium; .ci/run does)"
if not chromium_available() and os.environ.get("CI"):
    # in CI the browser test must run: .ci/run installs chromium
    raise RuntimeError(f"CI is set but the browser test cannot run: {_MISSING}")
pytestmark = pytest.mark.skipif(not chromium_available(), reason=_MISSING)

NEW_KEY = "pk_" + "c" * 34


@pytest.fixture
def shots():
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS / "browser", ignore_errors=True)
    (ARTIFACTS / "browser").mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / "browser"


def test_merchant_clicks_through_install_key_sync_pause_resume_cancel(tmp_path, db_url, shots):
    from playwright.sync_api import expect, sync_playwright

    account = generate_account(profiles=400, seed=11)
    with StandInServer(account, api_keys={DEFAULT_API_KEY: ALL_SCOPES}, latency=0.02, clock_scale=CLOCK_SCALE) as klaviyo, \
            serve_process(cli_environment(tmp_path, db_url, klaviyo), tmp_path / "serve.log") as url, \
            sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        badge = page.locator("#state")

        def shot(name: str) -> None:
            page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

        # Apps > Integrations lists the Klaviyo Data Import Tool; Contacts > Import leads to the same place
        page.goto(f"{url}/stores/default/contacts/import")
        page.click("text=Sync Klaviyo Contacts")
        expect(page.locator("h1")).to_contain_text("Klaviyo Data Import Tool")
        page.click("#nav-integrations")
        expect(page.locator("#card-klaviyo")).to_contain_text("Klaviyo Data Import Tool")
        shot("01-apps-integrations")
        page.click("#card-klaviyo")
        page.click("#install")
        expect(badge).to_have_text("Pending Integration")
        shot("02-installed-pending")

        # the key form: a password field, never echoed back
        assert page.get_attribute("#api_key", "type") == "password"
        page.fill("#api_key", DEFAULT_API_KEY)
        page.click("#integrate")
        expect(badge).to_have_text("Syncing")
        expect(page.locator(".flash")).to_contain_text("Key accepted")
        assert DEFAULT_API_KEY not in page.content()
        assert page.input_value("#api_key") == ""
        shot("03-key-accepted-syncing")

        # full sync from the page; the page shows live progress, then the result
        page.check("input[name=mode]")
        page.click("#sync-now")
        expect(page.locator("#progress")).to_be_visible()
        shot("04-sync-running")
        expect(page.locator("#last-run")).to_contain_text("completed", timeout=120_000)
        expect(page.locator("#last-success")).not_to_have_text("never")
        expect(page.locator("#counts")).to_contain_text("contacts")
        shot("05-full-sync-done")
        contacts_after_full = int(page.locator("#counts tr:has(th:text-is('contacts')) td").inner_text())
        assert contacts_after_full > 300

        # the key is revoked in Klaviyo: the next sync pauses with the reason and what to do
        klaviyo.api_keys.pop(DEFAULT_API_KEY)
        page.click("#sync-now")
        expect(badge).to_have_text("Sync Paused", timeout=60_000)
        expect(page.locator("#pause")).to_contain_text("key is invalid")
        expect(page.locator("#pause")).to_contain_text("paste it below")
        shot("06-paused-key-revoked")
        # the top of the page, small enough for the README (docs/web-integration-page.png)
        page.screenshot(path=str(shots / "readme-paused.png"), clip={"x": 0, "y": 0, "width": 1200, "height": 520})

        # a new key resumes
        klaviyo.api_keys[NEW_KEY] = ALL_SCOPES
        page.fill("#api_key", NEW_KEY)
        page.click("#integrate")
        expect(badge).to_have_text("Syncing")
        expect(page.locator("#pause")).to_have_count(0)
        page.click("#sync-now")
        expect(page.locator("#last-run")).to_contain_text("completed", timeout=120_000)
        expect(badge).to_have_text("Syncing")
        shot("07-resumed")

        # contacts: PII masked, kla_ tags listed as custom user tags, filter by tag
        page.click("#nav-contacts")
        custom = page.locator("#custom-tags a")
        assert custom.count() > 0
        tags = custom.all_inner_texts()
        assert all(t.startswith("kla_") for t in tags), tags
        custom.first.click()
        expect(page.locator("#current-tag")).to_have_text(tags[0])
        rows = page.locator("#contacts tr")
        assert rows.count() > 1
        for cell in page.locator("#contacts td.tags").all_inner_texts():
            assert tags[0] in cell
        html = page.content()
        host = DevHost(db_url, tmp_path / "home", env={})
        try:
            with host.storage.transaction(readonly=True) as tx:
                emails = [c.email for _, c in zip(range(200), host.contacts("default").iter_all(tx)) if c.email]
        finally:
            host.close()
        assert emails and not any(e in html for e in emails), "the contacts page shows a whole email address"
        shot("08-contacts-by-tag")

        # Cancel Integration, with a confirmation step
        page.click("#nav-integrations")
        page.click("#card-klaviyo")
        page.click("#cancel")
        expect(page.locator("h1")).to_have_text("Cancel Integration?")
        shot("09-cancel-confirm")
        page.click("#confirm-cancel")
        expect(badge).to_have_text("Pending Integration")
        expect(page.locator("#install")).to_be_visible()
        shot("10-cancelled")
        browser.close()

    log = (tmp_path / "serve.log").read_text()
    assert re.search(r"POST /stores/default/apps/klaviyo/authorize HTTP/1.1\S*\" 302", log), log[-1500:]
    for key in (DEFAULT_API_KEY, NEW_KEY):
        assert key not in log, "the key reached the server's log"
