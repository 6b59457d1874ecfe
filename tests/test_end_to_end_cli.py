"""The whole path through the installed ``smartpush`` command, against the stand-in over HTTP.

install -> authorize -> full sync -> export, checked field by field against the
stand-in's own data; then a second full sync must leave the same contacts and uids.
"""

from __future__ import annotations

import json
import subprocess
from collections import defaultdict

import pytest
from klaviyo_standin import DEFAULT_API_KEY, generate_account

from tests import expectations as exp
from tests.conftest import using_postgres
from tests.harness import cli_environment



def smartpush(env, *args, check=True, input=None):
    result = subprocess.run(
        ["smartpush", *args], env=env, capture_output=True, text=True, timeout=300, input=input
    )
    if check and result.returncode != 0:
        raise AssertionError(f"smartpush {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def account():
    return generate_account(profiles=500, seed=5)


@pytest.fixture
def cli_env(tmp_path, db_url, server):
    return cli_environment(tmp_path, db_url, server)


def export(env, tmp_path, name="export.jsonl"):
    out = tmp_path / name
    smartpush(env, "contacts", "export", "--output", str(out))
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def test_apps_lists_klaviyo_through_the_installed_entry_point(cli_env):
    result = smartpush(cli_env, "apps")
    assert "klaviyo" in result.stdout


def test_full_sync_end_to_end(cli_env, tmp_path, account, db_url):
    outputs = []
    outputs.append(smartpush(cli_env, "install", "klaviyo"))
    # The key comes from the environment, never from a command-line argument.
    outputs.append(smartpush({**cli_env, "KLAVIYO_API_KEY": DEFAULT_API_KEY}, "authorize", "klaviyo"))
    outputs.append(smartpush(cli_env, "sync", "klaviyo", "--full", "--json"))
    report = json.loads(outputs[-1].stdout)
    assert report["outcome"] == "completed"
    contacts = export(cli_env, tmp_path)

    by_kid = {}
    for c in contacts:
        for kid in c["klaviyo_ids"]:
            assert kid not in by_kid, "a Klaviyo profile mapped to two contacts"
            by_kid[kid] = c
    profile_tags = exp.expected_profile_tags(account)
    skipped = set()
    result = smartpush(cli_env, "klaviyo", "skipped", "--json")
    for line in result.stdout.splitlines():
        skipped.add(json.loads(line)["klaviyo_id"])

    emails_seen = defaultdict(set)
    checked = 0
    for profile in account.iter_profiles():
        kid, attrs = profile["id"], profile["attributes"]
        email = exp.valid_email(attrs.get("email"))
        phone_raw = attrs.get("phone_number")
        contact = by_kid.get(kid)
        if contact is None:
            assert kid in skipped, f"profile {kid} neither imported nor reported"
            assert email is None
            continue
        assert kid not in skipped
        checked += 1
        shared = len(contact["klaviyo_ids"]) > 1
        # standard fields
        if email:
            emails_seen[email.lower()].add(contact["uid"])
            if not shared:
                assert contact["email"] == email
            else:
                assert contact["email"].lower() == email.lower()
        if not shared:
            assert contact["name"] == exp.expected_name(attrs)
            country = ((attrs.get("location") or {}).get("country") or "").strip() or None
            assert contact["country"] == country
            assert contact["email_subscription"] == (exp.email_status(attrs) if email else None)
            props = contact["properties"]
            if phone_raw and "kla_phone_number" in props:
                assert exp.is_e164_of(props["kla_phone_number"], phone_raw)
            elif phone_raw:
                assert props.get("kla_phone_number_raw") == phone_raw
            if props.get("kla_phone_number"):
                assert contact["sms_subscription"] == exp.sms_status(attrs)
            # every other attribute and every custom property arrives with a kla_ prefix
            for key in ("external_id", "organization", "title", "locale", "image"):
                if attrs.get(key) is not None:
                    assert props.get(f"kla_{key}") == attrs[key] or props.get(f"kla_attr_{key}") == attrs[key]
            for key, value in (attrs.get("properties") or {}).items():
                candidates = [v for k, v in props.items() if k == f"kla_{key}" or k.startswith(f"kla_prop_{key}")]
                assert value in candidates, f"custom property {key!r} of {kid} missing"
            assert all(k.startswith("kla_") for k in props)
        # tags: exactly the union of the contact's profiles' memberships
        want = set()
        for other in contact["klaviyo_ids"]:
            want |= profile_tags.get(other, set())
        assert set(contact["tags"]) == want, f"tags of {kid}"
    assert checked > 400
    # duplicates: one contact per normalised email
    assert all(len(uids) == 1 for uids in emails_seen.values())

    # A second full sync leaves the same contacts and uids.
    smartpush(cli_env, "sync", "klaviyo", "--full")
    again = export(cli_env, tmp_path, "again.jsonl")
    assert sorted(json.dumps(c, sort_keys=True) for c in again) == sorted(json.dumps(c, sort_keys=True) for c in contacts)

    # The key never appears in output, and never in the database file in plain text.
    for result in outputs:
        assert DEFAULT_API_KEY not in result.stdout + result.stderr
    if not using_postgres():
        raw = open(db_url.removeprefix("sqlite:///"), "rb").read()
        assert DEFAULT_API_KEY.encode() not in raw


def test_an_export_imported_into_another_store_keeps_its_uids_through_that_stores_sync(tmp_path, db_url, server):
    """Store B imports store A's export (same uids), then syncs the same Klaviyo account:
    B's sync matches every imported contact and maps it, each store keeping its own id map."""
    from smartpush_devhost.importing import import_contacts
    from tests.harness import Harness, make_host

    host = make_host(db_url, tmp_path, server, KLAVIYO_RATE_LIMITS="off")
    try:
        a, b = (Harness(host=host, server=server, account=None, store=s) for s in ("shop-a", "shop-b"))
        a.install_and_authorize(DEFAULT_API_KEY)
        assert a.sync("full").outcome == "completed"
        in_a = a.export()
        imported = import_contacts(host.storage, b.ctx.contacts, [json.dumps(r) for r in in_a])
        assert (imported.created, imported.skipped) == (len(in_a), [])
        b.install_and_authorize(DEFAULT_API_KEY)
        assert b.sync("full").outcome == "completed"
        in_b = b.export()
        assert {r["uid"]: r["klaviyo_ids"] for r in in_b} == {r["uid"]: r["klaviyo_ids"] for r in in_a}
        assert in_b == in_a  # nothing created, every field and tag as in A
        assert a.export() == in_a  # B's sync touched none of A's contacts of the same uids
    finally:
        host.close()
