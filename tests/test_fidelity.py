"""Migration rules end to end, over the stand-in's awkward account.

Every expectation is computed from the stand-in's own data (``tests/expectations.py``
re-derives the rules independently of the plugin's mapping code):

1. merge into pre-existing SmartPush contacts (``smartpush contacts import``);
2. consent precedence: existing status x incoming Klaviyo consent, email and SMS, evidence;
3. duplicate emails/phones across Klaviyo profiles: one contact, all ids, reported;
4. tag rules: normalization, collisions (stable, reported), renames, inactive segments;
5. PII at rest (raw SQLite file and every column of every table) and key rotation;
6. bad input: skipped profiles reported with id and reason, without PII;
7. the API key never appears in any output, status or ``-vv`` log.

Most ``smartpush`` commands run in-process through click's runner (the same command
code, a fraction of the start-up cost); the secrets test runs the real console script.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from klaviyo_standin import ALL_SCOPES, DEFAULT_API_KEY, StandInServer, generate_account
from sqlalchemy import MetaData, select

from smartpush_devhost.cli import build_cli
from smartpush_devhost.host import DevHost
from smartpush_devhost.transfer import import_contacts
from tests import expectations as exp
from tests.conftest import using_postgres
from tests.harness import CLOCK_SCALE, Harness, make_host

PROFILES = 300
SEED = 31
NO_SEGMENTS_KEY = "pk_" + "d" * 34
WRONG_KEY = "pk_" + "e" * 34


# ------------------------------------------------------------------------- fixtures
@pytest.fixture
def account():
    return generate_account(profiles=PROFILES, seed=SEED)


@pytest.fixture
def server(account):
    keys = {DEFAULT_API_KEY: ALL_SCOPES, NO_SEGMENTS_KEY: [s for s in ALL_SCOPES if s != "segments:read"]}
    with StandInServer(account, api_keys=keys, clock_scale=CLOCK_SCALE) as srv:
        yield srv


@pytest.fixture
def env(tmp_path, db_url, server):
    """Environment of the ``smartpush`` command for this test's database and stand-in."""
    return {
        "SMARTPUSH_HOME": str(tmp_path / "home"),
        "SMARTPUSH_DATABASE_URL": db_url,
        "KLAVIYO_BASE_URL": server.base_url,
        "KLAVIYO_TIME_SCALE": str(CLOCK_SCALE),
        "SMARTPUSH_MASTER_KEY": None,
        "SMARTPUSH_KEY_FILE": None,
        "SMARTPUSH_STORE": None,
        "KLAVIYO_API_KEY": None,
    }


@pytest.fixture
def h(db_url, tmp_path, server, account):
    """In-process harness on the same database and key file as ``env`` (store ``default``)."""
    host = make_host(db_url, tmp_path, server)
    harness = Harness(host=host, server=server, account=account, store="default")
    yield harness
    host.close()


# ---------------------------------------------------------------------- CLI helpers
@dataclass
class Out:
    returncode: int
    stdout: str
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout + self.stderr


_APP = None


def smartpush(env: dict, *args: str, real: bool = False, check: bool = True, extra_env: dict | None = None) -> Out:
    """Run ``smartpush ARGS``: in-process (click runner) or, ``real=True``, the console script."""
    full_env = {**env, **(extra_env or {})}
    if real:
        proc_env = {k: v for k, v in os.environ.items() if k not in full_env}
        proc_env.update({k: v for k, v in full_env.items() if v is not None})
        r = subprocess.run(["smartpush", *args], env=proc_env, capture_output=True, text=True, timeout=300)
        out = Out(r.returncode, r.stdout, r.stderr)
    else:
        global _APP
        if _APP is None:
            _APP = build_cli()
        r = CliRunner().invoke(_APP, list(args), env=full_env, catch_exceptions=False)
        out = Out(r.exit_code, r.stdout, r.stderr)
    if check and out.returncode != 0:
        raise AssertionError(f"smartpush {' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out


def connect(env: dict) -> list[Out]:
    outs = [smartpush(env, "install", "klaviyo")]
    outs.append(smartpush(env, "authorize", "klaviyo", extra_env={"KLAVIYO_API_KEY": DEFAULT_API_KEY}))
    return outs


def full_sync(env: dict) -> dict:
    report = json.loads(smartpush(env, "sync", "klaviyo", "--full", "--json").stdout)
    assert report["outcome"] == "completed", report["message"]
    return report


def export(env: dict, tmp_path: Path, name: str = "export.jsonl") -> list[dict]:
    out = tmp_path / name
    smartpush(env, "contacts", "export", "--output", str(out))
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def import_file(env: dict, tmp_path: Path, records: list[dict]) -> Out:
    path = tmp_path / "pre-existing.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = smartpush(env, "contacts", "import", str(path))
    assert f"created {len(records)}" in out.stdout and "skipped 0" in out.stdout, out.text
    return out


def status_json(env: dict) -> dict:
    return json.loads(smartpush(env, "status", "klaviyo", "--json").stdout)


# ------------------------------------------------------------------- data helpers
def profiles_of(account) -> dict[str, dict]:
    """Klaviyo id -> attributes, every live profile (sort=updated order)."""
    return {p["id"]: p["attributes"] for p in account.iter_profiles()}


def singletons(profiles: dict[str, dict]) -> list[str]:
    """Imported profiles whose email and phone are shared with no other profile."""
    resources = [{"id": k, "attributes": a} for k, a in profiles.items()]
    return [c[0] for c in exp.identity_clusters(resources) if len(c) == 1]


def by_klaviyo_id(contacts: list[dict]) -> dict[str, dict]:
    out = {}
    for c in contacts:
        for kid in c["klaviyo_ids"]:
            assert kid not in out, f"Klaviyo profile {kid} mapped to two contacts"
            out[kid] = c
    return out


def expected_country(attrs) -> str | None:
    country = (attrs.get("location") or {}).get("country")
    return country.strip() or None if isinstance(country, str) else None


def assert_custom_properties(contact: dict, attrs: dict) -> None:
    props = contact["properties"]
    for key, value in (attrs.get("properties") or {}).items():
        candidates = [v for k, v in props.items() if k == f"kla_{key}" or k.startswith(f"kla_prop_{key}")]
        assert value in candidates, f"custom property {key!r} missing"
    assert props.get("kla_created") == attrs["created"]


def expected_merge(existing: str | None, incoming: str | None) -> str | None:
    """The consent precedence rule: a Klaviyo subscribe overwrites; anything else only fills."""
    if incoming is None:
        return existing
    if existing is None or incoming == "subscribed":
        return incoming
    return existing


EMAIL_EVIDENCE = {
    "consent": "kla_email_consent",
    "consent_timestamp": "kla_email_consent_timestamp",
    "method": "kla_email_consent_method",
    "method_detail": "kla_email_consent_method_detail",
    "last_updated": "kla_email_consent_last_updated",
    "double_optin": "kla_email_double_optin",
    "can_receive_email_marketing": "kla_email_can_receive_marketing",
    "suppression": "kla_email_suppressions",
    "list_suppressions": "kla_email_list_suppressions",
}
SMS_EVIDENCE = {
    "consent": "kla_sms_consent",
    "consent_timestamp": "kla_sms_consent_timestamp",
    "method": "kla_sms_consent_method",
    "method_detail": "kla_sms_consent_method_detail",
    "last_updated": "kla_sms_consent_last_updated",
    "can_receive_sms_marketing": "kla_sms_can_receive_marketing",
}


def assert_evidence_mirrored(contact: dict, attrs: dict) -> None:
    """Every non-null consent evidence field is on the contact, as given by Klaviyo."""
    subs = attrs.get("subscriptions") or {}
    props = contact["properties"]
    for channel, table in (("email", EMAIL_EVIDENCE), ("sms", SMS_EVIDENCE)):
        marketing = ((subs.get(channel) or {}).get("marketing")) or {}
        for field, key in table.items():
            value = marketing.get(field)
            if value is None:
                assert key not in props, f"{key} present though Klaviyo has no {field}"
            else:
                assert props.get(key) == value, f"{key} != Klaviyo's {channel}.marketing.{field}"


# ======================================================================== 1. merge
def test_merge_into_pre_existing_contacts(env, tmp_path, account):
    profiles = profiles_of(account)
    alone = singletons(profiles)
    with_email = [k for k in alone if exp.valid_email(profiles[k].get("email"))]
    # Klaviyo's side is awkward too: padded, mixed-case addresses first
    padded = [k for k in with_email if profiles[k]["email"] != profiles[k]["email"].strip().lower()][:3]
    assert padded, "the account has padded / mixed-case addresses"
    email_kids = padded + [k for k in with_email if k not in padded][: 8 - len(padded)]
    by_phone_only = [k for k in alone if not exp.valid_email(profiles[k].get("email")) and exp.expected_phone(profiles[k])]
    # two written in E.164 by Klaviyo, two in national format (readable with location.country)
    phone_kids = [k for k in by_phone_only if profiles[k]["phone_number"].strip().startswith("+")][:2] + [
        k for k in by_phone_only if not profiles[k]["phone_number"].strip().startswith("+")][:2]
    fill_kid = next(k for k in alone if k not in email_kids and exp.valid_email(profiles[k].get("email"))
                    and exp.expected_phone(profiles[k]))
    assert len(email_kids) == 8 and len(phone_kids) == 4

    pre: dict[str, dict] = {}  # uid -> record
    for i, kid in enumerate(email_kids):
        email = exp.valid_email(profiles[kid]["email"])
        variant = email.swapcase() if i % 2 else f"  {email.upper()}  "
        assert variant.strip() != email  # different case / padding than Klaviyo's
        keep = i < 4
        pre[f"pre-email-{i}"] = {
            "uid": f"pre-email-{i}", "email": variant,
            "name": f"Merchant Name {i}" if keep else None, "country": "Atlantis" if keep else None,
            "properties": {"shop_note": f"keep {i}", "loyalty_points": i}, "tags": ["merchant_vip", f"cohort_{i}"],
        }
    for i, kid in enumerate(phone_kids):
        keep = i % 2 == 0
        pre[f"pre-phone-{i}"] = {
            "uid": f"pre-phone-{i}", "phone": exp.expected_phone(profiles[kid]),
            "name": f"Phone Person {i}" if keep else None, "country": "Atlantis" if keep else "",
            "properties": {"pos_customer": True}, "tags": ["in_store"],
        }
    # a phone-only SmartPush contact whose Klaviyo profile also has an email: the email is filled
    pre["pre-fill"] = {"uid": "pre-fill", "phone": exp.expected_phone(profiles[fill_kid]), "tags": []}
    unrelated = {"uid": "pre-unrelated", "email": "unrelated.customer@merchant.example", "name": "Walk In",
                 "properties": {"kla_like_but_mine": 1, "note": "x"}, "tags": ["walk_in"]}
    pre["pre-unrelated"] = unrelated
    import_file(env, tmp_path, list(pre.values()))
    matched = dict(zip([f"pre-email-{i}" for i in range(8)], email_kids)) | dict(
        zip([f"pre-phone-{i}" for i in range(4)], phone_kids)
    ) | {"pre-fill": fill_kid}

    connect(env)
    report = full_sync(env)
    contacts = export(env, tmp_path)
    uid_of = {c["uid"]: c for c in contacts}
    kid_of = by_klaviyo_id(contacts)
    profile_tags = exp.expected_profile_tags(account)

    for uid, kid in matched.items():
        attrs, record = profiles[kid], pre[uid]
        c = uid_of.get(uid)
        assert c is not None, f"pre-existing contact {uid} disappeared"
        assert c["klaviyo_ids"] == [kid], f"{uid}: Klaviyo id not mapped to the existing contact"
        assert kid_of[kid]["uid"] == uid
        if uid.startswith("pre-email"):
            assert c["email"] == record["email"].strip(), f"{uid}: the merchant's address was rewritten"
        elif uid == "pre-fill":
            assert c["phone"] == record["phone"]
            assert c["email"] == exp.valid_email(attrs["email"]), "empty email not filled from Klaviyo"
        else:
            assert c["phone"] == record["phone"]
            assert c["email"] is None
        # non-empty fields kept, empty ones filled from Klaviyo
        assert c["name"] == (record.get("name") or exp.expected_name(attrs)), uid
        assert c["country"] == ((record.get("country") or None) or expected_country(attrs)), uid
        if not record.get("phone") and exp.expected_phone(attrs):
            assert c["phone"] == exp.expected_phone(attrs), f"{uid}: empty phone not filled"
        # statuses: the contact had none, so it starts with Klaviyo's
        assert c["email_subscription"] == (exp.email_status(attrs) if c["email"] else None), uid
        # the merchant's own properties and tags survive; kla_ properties and tags are added
        for key, value in record.get("properties", {}).items():
            assert c["properties"].get(key) == value, f"{uid}: own property {key} lost"
        assert_custom_properties(c, attrs)
        assert set(c["tags"]) == set(record["tags"]) | profile_tags.get(kid, set()), uid
        if c["phone"]:
            assert c["sms_subscription"] == exp.sms_status(attrs), uid

    # the unrelated contact is untouched
    u = uid_of["pre-unrelated"]
    assert u["klaviyo_ids"] == [] and u["properties"] == unrelated["properties"] and u["tags"] == ["walk_in"]
    assert u["name"] == "Walk In" and u["email"] == unrelated["email"]

    # one contact per normalized email and per phone; everything imported is mapped
    emails = Counter(c["email"].strip().lower() for c in contacts if c["email"])
    assert [e for e, n in emails.items() if n > 1] == []
    phones = Counter(c["phone"] for c in contacts if c["phone"])
    assert [p for p, n in phones.items() if n > 1] == []
    resources = [{"id": k, "attributes": a} for k, a in profiles.items()]
    clusters = exp.identity_clusters(resources)
    assert len(contacts) == len(clusters) + 1, "contacts = identity clusters + the unrelated contact"
    assert report["counts"].get("contacts_merged") == len(matched)


# ====================================================================== 2. consent
EXISTING = ("subscribed", "unsubscribed", "never_subscribed")
INCOMING = ("SUBSCRIBED", "UNSUBSCRIBED", "NEVER_SUBSCRIBED")


def test_consent_precedence_all_combinations(h, tmp_path, account):
    profiles = profiles_of(account)
    alone = singletons(profiles)
    email_only = [k for k in alone if exp.valid_email(profiles[k].get("email")) and not profiles[k].get("phone_number")]
    with_phone = [k for k in alone if exp.valid_email(profiles[k].get("email")) and exp.expected_phone(profiles[k])]
    pool, sms_pool = iter(email_only), iter(with_phone)
    cases = []  # (kid, channel, existing or None for a new contact, label)
    # email: 3 x 3, clean (no suppression)
    for existing in EXISTING:
        for incoming in INCOMING:
            kid = next(pool)
            account.set_subscription(kid, "email", incoming, suppression=[], method="API", method_detail="fidelity")
            cases.append((kid, "email", existing, f"{existing} x {incoming}"))
    # new contacts start with Klaviyo's status
    for incoming in INCOMING:
        kid = next(pool)
        account.set_subscription(kid, "email", incoming, suppression=[])
        cases.append((kid, "email", None, f"new x {incoming}"))
    # SUBSCRIBED but globally suppressed (spam complaint), or can_receive_email_marketing false
    for existing in (*EXISTING, None):
        kid = next(pool)
        account.set_subscription(kid, "email", "SUBSCRIBED", suppression=[{"reason": "SPAM_COMPLAINT"}])
        cases.append((kid, "email", existing, f"{existing} x SUBSCRIBED+SPAM_COMPLAINT"))
    for existing in ("unsubscribed", "never_subscribed", None):
        kid = next(pool)
        account.set_subscription(kid, "email", "SUBSCRIBED", suppression=[], can_receive=False)
        cases.append((kid, "email", existing, f"{existing} x SUBSCRIBED+cannot_receive"))
    # SMS: 3 x 3, new contacts, and SUBSCRIBED that cannot receive
    for existing in (*EXISTING, None):
        for incoming in INCOMING:
            kid = next(sms_pool)
            account.set_subscription(kid, "sms", incoming, method="TEXT", method_detail="JOIN")
            cases.append((kid, "sms", existing, f"sms {existing} x {incoming}"))
    for existing in ("never_subscribed", None):
        kid = next(sms_pool)
        account.set_subscription(kid, "sms", "SUBSCRIBED", can_receive=False, method="TEXT")
        cases.append((kid, "sms", existing, f"sms {existing} x SUBSCRIBED+cannot_receive"))

    profiles = profiles_of(account)  # read back: expectations from what Klaviyo serves now
    lines = []
    for kid, channel, existing, label in cases:
        if existing is None:
            continue
        attrs = profiles[kid]
        record = {"uid": f"pre-{kid.lower()}", "email": exp.valid_email(attrs["email"]).upper()}
        if channel == "email":
            record["email_subscription"] = existing
        else:
            record["phone"] = exp.expected_phone(attrs)
            record["sms_subscription"] = existing
        lines.append(json.dumps(record))
    ctx = h.ctx
    result = import_contacts(h.host.storage, ctx.contacts, lines)
    assert result.created == len(lines) and not result.skipped

    h.install_and_authorize(DEFAULT_API_KEY)
    assert h.sync("full").outcome == "completed"
    first = {kid: c for kid, c in by_klaviyo_id(h.export()).items()}

    failures = []
    for kid, channel, existing, label in cases:
        attrs, c = profiles[kid], first[kid]
        if existing is not None:
            assert c["uid"] == f"pre-{kid.lower()}", label
        incoming = exp.email_status(attrs) if channel == "email" else exp.sms_status(attrs)
        want = expected_merge(existing, incoming)
        got = c["email_subscription"] if channel == "email" else c["sms_subscription"]
        if got != want:
            failures.append(f"{label}: expected {want}, got {got}")
        marketing = attrs["subscriptions"][channel]["marketing"]
        suppressed = channel == "email" and (bool(marketing.get("suppression")) or marketing.get("can_receive_email_marketing") is False)
        if channel == "sms":
            suppressed = marketing.get("can_receive_sms_marketing") is False and marketing["consent"] == "SUBSCRIBED"
        if suppressed and existing != "subscribed" and got == "subscribed":
            failures.append(f"{label}: a suppressed profile was made subscribed")
    assert not failures, "\n".join(failures)

    # consent evidence: every single-profile contact mirrors Klaviyo's evidence
    for kid, c in first.items():
        if len(c["klaviyo_ids"]) == 1:
            assert_evidence_mirrored(c, profiles[kid])
    spam = [first[kid] for kid, ch, _e, label in cases if "SPAM_COMPLAINT" in label]
    for c in spam:
        reasons = [s.get("reason") for s in c["properties"]["kla_email_suppressions"]]
        assert reasons == ["SPAM_COMPLAINT"]
        assert c["properties"]["kla_email_consent_timestamp"] and c["properties"]["kla_email_consent_method"] == "API"
    listed = [k for k, a in profiles.items() if a["subscriptions"]["email"]["marketing"].get("list_suppressions") and k in first]
    assert listed, "the account has list suppressions"
    for kid in listed:
        assert first[kid]["properties"]["kla_email_list_suppressions"] == profiles[kid]["subscriptions"]["email"]["marketing"]["list_suppressions"]
    for kid, channel, _e, _label in cases:
        if channel == "sms":
            props = first[kid]["properties"]
            assert props["kla_sms_consent_timestamp"] and props["kla_sms_consent_method"] == "TEXT"

    # a re-sync with unchanged Klaviyo consent changes no status
    assert h.sync("incremental").outcome == "completed"
    again = by_klaviyo_id(h.export())
    for kid, _channel, _existing, label in cases:
        assert (again[kid]["email_subscription"], again[kid]["sms_subscription"]) == (
            first[kid]["email_subscription"], first[kid]["sms_subscription"]), label


# =================================================================== 3. duplicates
def test_duplicate_profiles_become_one_contact_and_are_reported(env, tmp_path, account):
    profiles = profiles_of(account)
    alone = singletons(profiles)
    email_dups = [c for c in exp.identity_clusters([{"id": k, "attributes": a} for k, a in profiles.items()]) if len(c) > 1]
    assert email_dups, "the account has duplicate emails"
    # more duplicates: another case/padding of an unshared address, and an unshared phone again
    target = next(k for k in alone if exp.valid_email(profiles[k].get("email")) and not profiles[k].get("phone_number"))
    account.create_profile({"email": "  " + exp.valid_email(profiles[target]["email"]).title() + " ", "first_name": "Dup"})
    phone_target = next(k for k in alone if k != target and exp.expected_phone(profiles[k]))
    account.create_profile({"phone_number": exp.expected_phone(profiles[phone_target]), "first_name": "Dup Phone"})
    profiles = profiles_of(account)
    resources = [{"id": k, "attributes": a} for k, a in profiles.items()]
    clusters = exp.identity_clusters(resources)
    shared = [c for c in clusters if len(c) > 1]
    assert len(shared) >= len(email_dups) + 2
    # one pre-existing SmartPush contact with the address of the first duplicate pair
    pair = shared[0]
    pair_email = exp.valid_email(profiles[pair[0]]["email"])
    import_file(env, tmp_path, [{"uid": "pre-dup", "email": pair_email.swapcase(), "tags": ["mine"]}])

    connect(env)
    report = full_sync(env)
    contacts = export(env, tmp_path)
    ids_to_contact = by_klaviyo_id(contacts)
    for cluster in clusters:
        owner = ids_to_contact[cluster[0]]
        assert owner["klaviyo_ids"] == cluster, "profiles sharing an email/phone must share one contact"
    assert ids_to_contact[pair[0]]["uid"] == "pre-dup"
    assert "mine" in ids_to_contact[pair[0]]["tags"]
    emails = Counter(c["email"].strip().lower() for c in contacts if c["email"])
    assert max(emails.values()) == 1

    expected_dups = sum(len(c) - 1 for c in shared)
    assert report["counts"].get("duplicate_profiles") == expected_dups
    assert status_json(env)["counts"].get("last_run_duplicate_profiles") == expected_dups
    events = smartpush(env, "klaviyo", "events", "--limit", "1000").stdout
    dup_lines = [line for line in events.splitlines() if "\tduplicate_profile\t" in line]
    assert len(dup_lines) == expected_dups
    for cluster in shared:
        lines = [line for line in dup_lines if any(k in line for k in cluster)]
        assert len(lines) == len(cluster) - 1, f"duplicates of {cluster} not reported"
        mentioned = {k for line in lines for k in cluster if k in line}
        assert mentioned == set(cluster)
    needles = exp.pii_needles(resources)
    assert not [n for n in needles if n.lower() in events.lower()], "PII in the event log"

    # a duplicate that appears later is caught by the incremental sync as well
    contacts_before = len(contacts)
    late_target = next(k for k in alone if k not in (target, phone_target) and exp.valid_email(profiles[k].get("email")))
    late = account.create_profile({"email": exp.valid_email(profiles[late_target]["email"]).upper()})
    inc = json.loads(smartpush(env, "sync", "klaviyo", "--json").stdout)
    assert inc["outcome"] == "completed" and inc["mode"] == "incremental"
    assert inc["counts"].get("duplicate_profiles") == 1
    contacts = export(env, tmp_path, "after-late.jsonl")
    assert len(contacts) == contacts_before
    assert by_klaviyo_id(contacts)[late]["klaviyo_ids"] == sorted([late_target, late])
    events = smartpush(env, "klaviyo", "events", "--limit", "1000").stdout
    assert any("duplicate_profile" in line and late in line and late_target in line for line in events.splitlines())


# ========================================================================= 4. tags
def _tag_of(contacts: list[dict], kids_of_group) -> set[str]:
    by_kid = by_klaviyo_id(contacts)
    sets = [set(by_kid[k]["tags"]) for k in kids_of_group if k in by_kid]
    return set.intersection(*sets) if sets else set()


def _assert_tags_exact(contacts: list[dict], account) -> None:
    expected = exp.expected_profile_tags(account)
    for c in contacts:
        want = set()
        for kid in c["klaviyo_ids"]:
            want |= expected.get(kid, set())
        assert set(c["tags"]) == want, f"tags of contact with {c['klaviyo_ids']}"


def test_tag_rules_collisions_renames_and_inactive_segments(h, env, account):
    ids = account.profile_ids()
    groups = {g["id"]: g for g in account.lists() + account.segments()}
    kinds = {g["id"]: g["type"] for g in groups.values()}
    names = {gid: g["attributes"].get("name") for gid, g in groups.items()}
    empty = [gid for gid in groups if account.member_count(gid) == 0]
    for i, gid in enumerate(empty):  # every group gets a member so its tag shows on a contact
        account.add_member(gid, ids[20 + i])
    h.install_and_authorize(DEFAULT_API_KEY)
    assert h.sync("full").outcome == "completed"
    first = h.export()
    _assert_tags_exact(first, account)

    tags = exp.expected_group_tags(account)
    all_tags = {t for c in first for t in c["tags"]}
    for gid, tag in tags.items():
        assert tag in all_tags, f"group {gid} ({names[gid]!r}) has no tag on any contact"
        assert tag == tag.lower() and "__" not in tag and not tag.endswith("_") and " " not in tag
        name = names[gid]
        if isinstance(name, str) and name.strip():
            core = "_".join(name.strip().lower().split())
            assert tag.startswith(f"kla_{kinds[gid]}_{core}"), (name, tag)
            for ch in name:  # accents, emoji and punctuation survive
                if not ch.isspace() and not ch.isascii():
                    assert ch.lower() in tag, (name, tag)
        else:
            assert tag == f"kla_{kinds[gid]}_{gid.lower()}"
    # collisions: same kind, same normalized name -> the first created keeps the base tag
    by_base = defaultdict(list)
    for gid in groups:
        by_base[exp.tag_for(kinds[gid], names[gid], gid)].append(gid)
    collisions = {base: gids for base, gids in by_base.items() if len(gids) > 1}
    assert collisions, "the account has groups whose names differ only by case"
    for base, gids in collisions.items():
        winner = min(gids, key=lambda g: (groups[g]["attributes"]["created"], g))
        assert tags[winner] == base
        for gid in gids:
            if gid != winner:
                assert tags[gid] == f"{base}_{gid.lower()}"
    events = smartpush(env, "klaviyo", "events", "--limit", "1000").stdout
    for base, gids in collisions.items():
        assert any("tag_collision" in line and all(g in line for g in gids) for line in events.splitlines()), base
    # inactive segments still tag their members
    inactive = [gid for gid, g in groups.items() if g["type"] == "segment" and g["attributes"].get("is_active") is False]
    assert inactive
    by_kid = by_klaviyo_id(first)
    for gid in inactive:
        members = [pid for pid, _ in account.iter_members(gid) if pid in by_kid]
        assert members and all(tags[gid] in by_kid[pid]["tags"] for pid in members)

    # stable across a second sync
    assert h.sync("full").outcome == "completed"
    second = h.export()
    assert {c["uid"]: c["tags"] for c in second} == {c["uid"]: c["tags"] for c in first}

    # renames: a plain one, a loser leaving its collision, an inactive segment, and a
    # group renamed into a collision with an older group (the older one keeps its tag)
    lists = {names[g]: g for g in groups if kinds[g] == "list"}
    loser = next(g for gids in collisions.values() for g in gids if tags[g] != exp.tag_for(kinds[g], names[g], g))
    account.rename_group(lists["Summer  Sale  2025 "], "  Summer   Sale 2026 ☀️ ")
    account.rename_group(loser, "VIP  Gold")
    account.rename_group(inactive[0], "Winback: lapsed 365d+")
    account.rename_group(lists["Clientes Fiéis"], " NEWSLETTER ")
    newsletter_tag = tags[lists["Newsletter"]]
    assert h.sync("incremental").outcome == "completed"
    third = h.export()
    _assert_tags_exact(third, account)
    new_tags = exp.expected_group_tags(account)
    assert new_tags[lists["Newsletter"]] == newsletter_tag
    present = {t for c in third for t in c["tags"]}
    for gid in (lists["Summer  Sale  2025 "], loser, inactive[0], lists["Clientes Fiéis"]):
        assert new_tags[gid] != tags[gid]
        assert new_tags[gid] in present and tags[gid] not in present, f"tag of renamed group {gid}"
    assert {c["uid"] for c in third} == {c["uid"] for c in first}


# ================================================================ 5. PII at rest
def _scan_database(db_url: str) -> dict[str, str]:
    """table.column -> every value of that column as text (bytes as latin-1)."""
    from sqlalchemy import create_engine

    engine = create_engine(db_url)
    out: dict[str, list[str]] = defaultdict(list)
    try:
        meta = MetaData()
        meta.reflect(bind=engine)
        with engine.connect() as conn:
            for table in meta.sorted_tables:
                for row in conn.execute(select(table)):
                    for col, value in zip(table.c.keys(), row):
                        if value is None:
                            continue
                        if isinstance(value, memoryview):
                            value = bytes(value)
                        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
                        out[f"{table.name}.{col}"].append(text)
    finally:
        engine.dispose()
    assert "sp_contacts.data" in out
    return {k: "\n".join(v) for k, v in out.items()}


def _find_needles(haystack: str, needles: set[str]) -> list[str]:
    low = haystack.lower()
    return sorted(n for n in needles if n.lower() in low)


def test_no_pii_or_key_at_rest_and_key_rotation_keeps_contacts(env, tmp_path, account, db_url):
    connect(env)
    full_sync(env)
    before = export(env, tmp_path, "before.jsonl")
    assert len(before) > 200

    out = smartpush(env, "keys", "rotate").stdout
    assert f"re-encrypted {len(before)} contacts" in out
    keys = smartpush(env, "keys", "status").stdout
    assert "retired" in keys and "active" in keys
    after = export(env, tmp_path, "after.jsonl")
    assert after == before, "a contact changed or became unreadable after rotation"

    # lookups by (any case of) email and by phone find the same contacts under the new key
    host = DevHost(database_url=db_url, data_dir=tmp_path / "home", settings={}, env={})
    try:
        ctx = host.context("default")
        emails = {c["email"].upper(): c["uid"] for c in before if c["email"]}
        phones = {c["phone"]: c["uid"] for c in before if c["phone"]}
        with host.storage.transaction(readonly=True) as tx:
            found = ctx.contacts.find_by_emails(tx, list(emails))
            found_phones = ctx.contacts.find_by_phones(tx, list(phones))
        assert {e: found.get(e) for e in emails} == {e: [u] for e, u in emails.items()}
        assert {p: found_phones.get(p) for p in phones} == {p: [u] for p, u in phones.items()}
    finally:
        host.close()

    # a sync after the rotation matches every profile to its contact again: no duplicates
    full_sync(env)
    again = export(env, tmp_path, "again.jsonl")
    assert sorted(json.dumps(c, sort_keys=True) for c in again) == sorted(json.dumps(c, sort_keys=True) for c in before)

    # nothing PII and not the API key anywhere in the database
    resources = list(account.iter_profiles())
    needles = exp.pii_needles(resources)
    for c in before:  # whatever the plugin stored, raw and normalized
        for value in (c["email"], c["phone"], c["properties"].get("kla_phone_number"),
                      c["properties"].get("kla_phone_number_raw"), c["properties"].get("kla_email_raw")):
            if isinstance(value, str) and len(value.strip()) >= 8:
                needles.update({value.strip(), value.strip().lower()})
    assert len(needles) > 300
    # positive control: the scanner finds the needles where they are in plain text
    plain = (tmp_path / "before.jsonl").read_text(encoding="utf-8")
    assert len(_find_needles(plain, needles)) > 200
    leaks = {}
    for column, text in _scan_database(db_url).items():
        hits = _find_needles(text, needles | {DEFAULT_API_KEY})
        if hits:
            leaks[column] = len(hits)
    assert not leaks, f"plain-text PII or API key in columns: {leaks}"
    if not using_postgres():
        path = Path(db_url.removeprefix("sqlite:///"))
        raw = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
        text = raw.decode("latin-1")
        hits = _find_needles(text, needles | {DEFAULT_API_KEY})
        assert not hits, f"{len(hits)} PII values or the key in the raw SQLite files"


# ================================================================== 6. bad input
def test_bad_profiles_are_skipped_reported_without_pii_and_the_rest_imports(env, tmp_path, account):
    taken = {exp.expected_phone(a) for a in profiles_of(account).values()}
    fresh_phone = next(p for p in ("+442079460958", "+33142685300", "+4930901820") if p not in taken and exp.expected_phone({"phone_number": p}))
    made = {
        "blank": account.create_profile({"email": "   ", "first_name": "Blank"}),
        "bad_email": account.create_profile({"email": "broken@@example..com", "last_name": "Broken"}),
        "bad_phone": account.create_profile({"phone_number": "555-CALL-NOW", "locale": "en"}),
        "too_large": account.create_profile({"email": "big.props.person@example.com", "properties": {"blob": "x" * 70_000}}),
        "bad_email_good_phone": account.create_profile({"email": "nope-at-example.com", "phone_number": fresh_phone}),
    }
    profiles = profiles_of(account)
    resources = [{"id": k, "attributes": a} for k, a in profiles.items()]
    expected = {k: r for k, a in profiles.items() if (r := exp.expected_skip_reason(a)) is not None}
    assert expected[made["too_large"]] == "property_too_large"
    assert made["bad_email_good_phone"] not in expected
    assert len(set(expected.values())) >= 4, expected

    connect(env)
    report = full_sync(env)
    assert report["counts"].get("skipped") == len(expected)
    listed = [json.loads(line) for line in smartpush(env, "klaviyo", "skipped", "--json").stdout.splitlines()]
    assert {r["klaviyo_id"]: r["reason"] for r in listed} == expected
    text_out = smartpush(env, "klaviyo", "skipped")
    for kid, reason in expected.items():
        assert f"{kid}\t{reason}" in text_out.stdout
    status = status_json(env)
    assert status["counts"]["skipped"] == len(expected)

    needles = exp.pii_needles(resources, min_len=4) | {"broken@@example..com", "555-CALL-NOW", "nope-at-example.com"}
    needles = {n for n in needles if not n.isdigit() or len(n) >= 9}
    for name, blob in (("skipped --json", json.dumps(listed)), ("skipped", text_out.text),
                       ("status --json", json.dumps(status)), ("sync --json", json.dumps(report))):
        assert not _find_needles(blob, needles), f"PII in `{name}` output"

    # the rest of the sync went on
    contacts = export(env, tmp_path)
    mapped = set(by_klaviyo_id(contacts))
    assert mapped == set(profiles) - set(expected)
    phone_contact = by_klaviyo_id(contacts)[made["bad_email_good_phone"]]
    assert phone_contact["email"] is None and phone_contact["phone"] == fresh_phone
    assert phone_contact["properties"]["kla_email_raw"] == "nope-at-example.com"

    # fixed in Klaviyo: imported by the next sync and no longer reported
    account.update_profile(made["blank"], {"email": "fixed.later.person@example.com"})
    assert json.loads(smartpush(env, "sync", "klaviyo", "--json").stdout)["outcome"] == "completed"
    listed = [json.loads(line)["klaviyo_id"] for line in smartpush(env, "klaviyo", "skipped", "--json").stdout.splitlines()]
    assert made["blank"] not in listed and len(listed) == len(expected) - 1
    assert status_json(env)["counts"]["skipped"] == len(expected) - 1


# ==================================================================== 7. secrets
def test_api_key_never_appears_in_output_status_or_debug_logs(env, tmp_path, server, account, caplog):
    outs: list[Out] = []
    run = lambda *args, check=True, **kw: outs.append(smartpush(env, *args, check=check, **kw)) or outs[-1]  # noqa: E731
    keys = {"KLAVIYO_API_KEY": DEFAULT_API_KEY}
    # the real console script at -vv for the commands that handle the key
    run("-vv", "install", "klaviyo")
    bad = run("-vv", "authorize", "klaviyo", real=True, check=False, extra_env={"KLAVIYO_API_KEY": WRONG_KEY})
    assert bad.returncode != 0 and WRONG_KEY not in bad.text
    partial = run("-vv", "authorize", "klaviyo", real=True, check=False, extra_env={"KLAVIYO_API_KEY": NO_SEGMENTS_KEY})
    assert partial.returncode != 0 and "segments:read" in partial.text and NO_SEGMENTS_KEY not in partial.text
    run("-vv", "authorize", "klaviyo", real=True, extra_env=keys)
    sync = run("-vv", "sync", "klaviyo", "--full", "--json", real=True)
    assert json.loads(sync.stdout)["outcome"] == "completed"
    assert "DEBUG" in sync.stderr, "-vv must log at debug level (else this test proves nothing)"
    run("-vv", "status", "klaviyo", "--json")
    # the key is revoked: the sync pauses, and the pause is explained without the key
    server.api_keys.pop(DEFAULT_API_KEY)
    paused = run("-vv", "sync", "klaviyo", real=True, check=False)
    assert paused.returncode == 3  # paused
    status = run("-vv", "status", "klaviyo", "--json", real=True)
    assert json.loads(status.stdout)["state"] == "sync_paused"
    server.api_keys[DEFAULT_API_KEY] = ALL_SCOPES
    # the other commands in-process, their logs captured at debug level
    caplog.set_level(logging.DEBUG)
    run("-vv", "authorize", "klaviyo", "--json", extra_env=keys)
    run("-vv", "sync", "klaviyo", "--json")
    run("-vv", "status", "klaviyo")
    run("-vv", "klaviyo", "events")
    run("-vv", "klaviyo", "skipped")
    run("-vv", "contacts", "export", "--output", str(tmp_path / "x.jsonl"))
    run("-vv", "keys", "rotate")
    run("-vv", "uninstall", "klaviyo", "--json")
    assert caplog.text, "no log records captured"
    for out in outs:
        assert DEFAULT_API_KEY not in out.text
        assert WRONG_KEY not in out.text and NO_SEGMENTS_KEY not in out.text
    assert DEFAULT_API_KEY not in caplog.text
    # and no email address or phone number in the debug logs either
    needles = exp.pii_needles(list(account.iter_profiles()))
    logs = "".join(o.stderr for o in outs if o is not None) + caplog.text
    assert not _find_needles(logs, needles), "PII in -vv log output"
