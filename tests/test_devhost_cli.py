"""The smartpush CLI: real console script, host commands, plugin hooks by keyword."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

from hookspecs import get_plugin_manager, hookimpl
from smartpush_devhost.cli import build_cli
from hookspecs.types import AuthorizeResult, IntegrationInfo, IntegrationState, IntegrationStatus, SyncReport


SECRET = "pk_test_DO_NOT_PRINT_0123456789"


class FakePlugin:
    """A tiny integration named ``fake``; every hook checks it gets keywords only."""

    def __init__(self):
        self.seen_keys: list[str] = []

    @hookimpl
    def smartpush_integration_info(self):
        return IntegrationInfo(name="fake", title="Fake CRM", version="9.9")

    def _status(self, host, installed=True):
        return IntegrationStatus(integration="fake", store_id=host.store_id, installed=installed,
                                 state=IntegrationState.PENDING_INTEGRATION)

    @hookimpl
    def smartpush_install(self, integration, host):
        return self._status(host) if integration == "fake" else None

    @hookimpl
    def smartpush_authorize(self, integration, host, credentials):
        if integration != "fake":
            return None
        self.seen_keys.append(credentials)
        host.secrets.put("fake_key", credentials)
        host.scheduler.schedule("fake", every=timedelta(days=1), first_run=datetime.now(timezone.utc))
        return AuthorizeResult(ok=credentials == SECRET, message="checked")

    @hookimpl
    def smartpush_sync(self, integration, host, mode):
        if integration != "fake":
            return None
        outcome = "completed" if host.secrets.get("fake_key") == SECRET else "paused"
        return SyncReport(integration="fake", store_id=host.store_id, mode=mode, outcome=outcome,
                          counts={"profiles_seen": 3})

    @hookimpl
    def smartpush_status(self, integration, host):
        return self._status(host) if integration == "fake" else None

    @hookimpl
    def smartpush_uninstall(self, integration, host):
        return self._status(host, installed=False) if integration == "fake" else None


@pytest.fixture
def run(tmp_path, db_url, store_ids):
    pm = get_plugin_manager(load_entry_points=False)
    plugin = FakePlugin()
    pm.register(plugin)
    cli = build_cli(pm)
    (store,) = store_ids(1)
    base = ["--db", db_url, "--home", str(tmp_path / "home"), "--store", store]

    def invoke(*args, input=None, env=None):
        env = {"SMARTPUSH_MASTER_KEY": None, "KLAVIYO_API_KEY": None, "FAKE_API_KEY": None, **(env or {})}
        return CliRunner().invoke(cli, [*base, *args], input=input, env=env, catch_exceptions=False)

    invoke.plugin, invoke.store = plugin, store
    yield invoke
    pm.unregister(plugin)


def test_console_script_lists_klaviyo(tmp_path):
    exe = shutil.which("smartpush") or pytest.skip("console script not installed")
    env = {**os.environ, "SMARTPUSH_HOME": str(tmp_path / "h")}
    env.pop("SMARTPUSH_DATABASE_URL", None)
    out = subprocess.run([exe, "apps"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert any(line.split()[0] == "klaviyo" for line in out.stdout.splitlines() if line.strip())
    out = subprocess.run([exe, "apps", "--json"], capture_output=True, text=True, env=env, timeout=60)
    assert "klaviyo" in [i["name"] for i in json.loads(out.stdout)]
    assert not (tmp_path / "h").exists()  # listing apps touches no database


def test_lifecycle_with_a_plugin(run):
    assert "fake" in run("apps").output
    assert "pending_integration" in run("install", "fake").output
    result = run("authorize", "fake", input=SECRET + "\n")
    assert result.exit_code == 0 and SECRET not in result.output
    assert run.plugin.seen_keys == [SECRET]
    result = run("authorize", "fake", env={"FAKE_API_KEY": "wrong"})
    assert result.exit_code == 1 and "wrong" not in result.output
    assert run("sync", "fake").exit_code == 3  # paused: the stored key is wrong now
    run("authorize", "fake", env={"FAKE_API_KEY": SECRET})
    result = run("sync", "fake", "--full", "--json")
    assert result.exit_code == 0 and json.loads(result.output)["mode"] == "full"
    assert json.loads(run("status", "fake", "--json").output)["installed"] is True
    assert f"{run.store}/fake: completed" in run("scheduler", "run").output
    assert f"{run.store}/fake" not in run("scheduler", "run", "--once").output  # next run is tomorrow
    assert "installed:            no" in run("uninstall", "fake").output


def test_unknown_integration_exits_2(run):
    for args in (["install", "nope"], ["sync", "nope"], ["status", "nope"], ["uninstall", "nope"]):
        result = run(*args)
        assert result.exit_code == 2
        assert "no installed plugin provides integration nope" in result.output


def test_plan_stores_and_keys(run):
    assert run("plan", "show").output.strip() == "pro"
    assert run("plan", "set", "free").exit_code == 0
    assert run("plan", "show").output.strip() == "free"
    assert run("plan", "set", "gold").exit_code == 2
    assert run.store in run("stores").output
    assert run("keys", "rotate").exit_code == 0
    assert "retired" in run("keys", "status").output


def test_contacts_import_export_round_trip(run, tmp_path):
    lines = [
        {"email": " Ann@Example.com ", "phone": "+14155550123", "name": "Ann", "country": "US",
         "email_subscription": "subscribed", "properties": {"kla_vip": True}, "tags": ["b", "a"]},
        {"uid": "sp_custom_1", "phone": "+447911123456", "sms_subscription": "unsubscribed"},
        {"email": "bad-address"},
        {"phone": "4155550123"},
        {"name": "nobody"},
        "not an object",
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(x) for x in lines) + "\n{broken\n")
    result = run("contacts", "import", str(src))
    assert result.exit_code == 6  # lines were skipped
    assert "created 2, updated 0, unchanged 0, skipped 5" in result.output
    assert "5 line(s) skipped" in result.output
    assert "line 3: invalid email" in result.output and "line 4: phone is not E.164" in result.output
    assert run("contacts", "count").output.strip() == "2"
    # re-importing a known uid updates it
    src.write_text(json.dumps({"uid": "sp_custom_1", "phone": "+447911123456", "name": "Bob"}) + "\n")
    assert "created 0, updated 1, unchanged 0, skipped 0" in run("contacts", "import", str(src)).output
    assert "created 0, updated 0, unchanged 1, skipped 0" in run("contacts", "import", str(src)).output

    out = tmp_path / "out.jsonl"
    assert run("contacts", "export", "--output", str(out)).exit_code == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    records = {r["uid"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(records["sp_custom_1"]) == {"uid", "email", "phone", "name", "country", "email_subscription",
                                           "sms_subscription", "properties", "tags", "klaviyo_ids"}
    assert records["sp_custom_1"]["name"] == "Bob" and records["sp_custom_1"]["klaviyo_ids"] == []
    (ann,) = [r for r in records.values() if r["uid"] != "sp_custom_1"]
    assert ann["email"] == "Ann@Example.com" and ann["tags"] == ["a", "b"] and ann["properties"] == {"kla_vip": True}


def test_demo_end_to_end(tmp_path):
    """The real plugin against the real stand-in, through the real console script."""
    pytest.importorskip("smartpush_plugin_klaviyo.service")
    exe = shutil.which("smartpush") or pytest.skip("console script not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMARTPUSH_", "KLAVIYO_"))}
    out = subprocess.run([exe, "--home", str(tmp_path / "demo"), "demo", "--profiles", "150", "--json"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout)
    assert summary["outcome"] == "completed"
    assert 0 < summary["contacts"] <= 150
    assert summary["requests"].get("GET /api/profiles", 0) >= 2
    for sample in summary["samples"]:
        assert sample["email"] == "-" or "***@" in sample["email"]
    assert (tmp_path / "demo" / "smartpush.db").exists()


def test_settings_come_from_env_without_secrets(tmp_path):
    from smartpush_devhost.host import DevHost

    env = {"KLAVIYO_BASE_URL": "http://127.0.0.1:1", "KLAVIYO_TIME_SCALE": "5", "KLAVIYO_API_KEY": SECRET}
    host = DevHost(None, tmp_path, {"KLAVIYO_TIME_SCALE": "7"}, env=env)
    assert host.context().settings == {"KLAVIYO_BASE_URL": "http://127.0.0.1:1", "KLAVIYO_TIME_SCALE": "7"}
    assert SECRET not in repr(host.context()) + repr(host) + repr(host.keyring)
