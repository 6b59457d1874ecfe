"""Issue #15 (3): SIGKILL a store's sync runs again and again, each time in a chosen phase,
across full and daily (incremental) runs in a row with a day of Klaviyo-side changes between
them, and check after the last resume that nothing is duplicated, orphaned or lost.

Each kill is aimed at one phase by polling what the run stores in the plugin's tables
(``klaviyo_integration.phase``/``current_run_id``, the run's streams and which groups it has
checked) and what the stand-in has been asked; a phase too short to hit is stretched by
slowing the stand-in's answers to that phase's requests (``StandInServer.inject(kind="slow")``
or its ``latency``), never skipped. After each kill the phase the dead run actually left in
the tables is recorded, and the test asserts the scenario hit every phase it aimed at.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime

import pytest
from klaviyo_standin import ALL_SCOPES, DEFAULT_API_KEY, StandInServer, daily_churn, generate_account
from sqlalchemy import and_, create_engine, delete, exists, func, or_, select

from hookspecs.interfaces import normalize_email_key
from smartpush_devhost.models import contacts_t, tags_t
from smartpush_plugin_klaviyo.state import group_t, integration_t, lease_t, profile_map_t, run_t, stream_t
from tests import expectations as exp
from tests.harness import CLOCK_SCALE, MEMBER_TEMPLATES, cli_environment
from tests.test_end_to_end_cli import export, smartpush

pytestmark = pytest.mark.slow

STORE = "default"
LATENCY = 0.02
COUNT_TEMPLATES = ("/api/lists/{id}", "/api/segments/{id}")


# ----------------------------------------------------------------------- what a run stored
@dataclass
class Seen:
    """A run's state as its tables hold it (read by the test while the run works or after it died)."""

    run_id: str | None
    phase: str | None
    mode: str | None = None
    finished: bool = False
    profiles_pending: bool = False
    profile_records: int = 0
    members_pending: bool = False
    groups_pending_scan: int = 0
    groups_pending_check: int = 0

    def activities(self) -> set[str]:
        """What the run was doing: its stored phase, refined by its streams and groups."""
        if self.run_id is None:
            return {"idle"}
        if self.phase in (None, "starting"):
            return {"starting"}
        if self.phase != "profiles_and_memberships":
            return {self.phase}
        out = set()
        if self.profiles_pending:
            out.add("profiles")
        if self.members_pending or self.groups_pending_scan:
            out.add("memberships")
        if self.groups_pending_check:
            out.add("group_checks")
        return out or {"memberships"}


def observe(engine, run_id: str | None = None) -> Seen:
    """The current run (or ``run_id``) of the store, from the plugin's tables."""
    with engine.connect() as conn:
        integ = conn.execute(
            select(integration_t.c.phase, integration_t.c.current_run_id).where(integration_t.c.store_id == STORE)
        ).first()
        current = integ.current_run_id if integ else None
        rid = current or run_id
        if rid is None:
            return Seen(None, None)
        run = conn.execute(
            select(run_t.c.mode, run_t.c.finished_at).where(and_(run_t.c.store_id == STORE, run_t.c.run_id == rid))
        ).first()
        if current is None:  # the run we watched is over (its end committed)
            return Seen(None, None, run.mode if run else None, finished=bool(run and run.finished_at))
        streams = conn.execute(
            select(stream_t.c.kind, stream_t.c.group_id, stream_t.c.done, stream_t.c.records).where(
                and_(stream_t.c.store_id == STORE, stream_t.c.run_id == rid)
            )
        ).all()
        pending = set(conn.execute(
            select(group_t.c.group_id).where(
                and_(group_t.c.store_id == STORE, or_(group_t.c.checked_run.is_(None), group_t.c.checked_run != rid))
            )
        ).scalars())
    scanned = {s.group_id for s in streams if s.kind == "members"}
    return Seen(
        run_id=rid,
        phase=integ.phase,
        mode=run.mode if run else None,
        profiles_pending=any(s.kind == "profiles" and not s.done for s in streams),
        profile_records=sum(s.records for s in streams if s.kind == "profiles"),
        members_pending=any(s.kind == "members" and not s.done for s in streams),
        groups_pending_scan=len(pending & scanned),
        groups_pending_check=len(pending - scanned),
    )


# ------------------------------------------------------------------------ aiming a kill
@dataclass
class Kill:
    """One SIGKILL: what it aimed at and what the dead run's tables show it hit."""

    target: str
    mode: str
    hit: set[str] = field(default_factory=set)
    requests: int = 0
    profile_records: int = 0
    lease_left: bool = False

    def __str__(self) -> str:
        return (f"{self.mode} run killed aiming at {self.target}: hit {sorted(self.hit)} after "
                f"{self.requests} requests, {self.profile_records} profiles written"
                + (", lease not yet released" if self.lease_left else ""))


class Aim:
    """Per target: how to stretch the phase (faults/latency when a state is seen) and when to kill."""

    def __init__(self, server, target: str):
        self.server, self.target = server, target
        self.mark: dict[str, int] = {}
        self.faults: dict[str, tuple] = {}
        self.saw_run = False
        self.finishing_at: float | None = None
        self.base = server.stats.get("total", 0)

    def _requests(self, *templates: str) -> int:
        stats = self.server.stats
        return sum(stats.get(f"GET {t}", 0) for t in templates)

    def _slow(self, templates, count: int, delay: float = 2.0) -> None:
        """The next ``count`` requests to each template are answered ``delay`` s late."""
        for t in templates:
            self.faults[t] = (self.server.inject(t, kind="slow", count=count, delay=delay), count)

    def _slowed(self, *templates: str) -> bool:
        """Whether a slowed request has arrived (it is in flight: the stand-in sleeps first)."""
        return any(self.faults[t][0].remaining < self.faults[t][1] for t in templates)

    def _asked_since(self, *templates: str) -> bool:
        return any(self._requests(t) > self.mark[t] for t in templates)

    def launch(self) -> None:
        """Before the process starts."""
        if self.target == "groups":
            self._slow(["/api/segments"], 1, 3.0)
        elif self.target == "memberships":
            self._slow(MEMBER_TEMPLATES, 10_000, 0.5)  # memberships outlast the profile windows
        elif self.target == "group_checks":
            self._slow(COUNT_TEMPLATES, 2)
        elif self.target in ("profiles", "finishing"):
            # Slower answers: the profile reads, and the deleted-profile lookups by id
            # (``any(id, [...])``, 100 ids a request), last long enough to be hit.
            self.server.latency = 0.1 if self.target == "profiles" else 0.3

    def ready(self, s: Seen) -> bool:
        """Whether to kill now (may stretch the phase first)."""
        if self.server.stats.get("total", 0) == self.base:
            return False  # the new process has not asked anything yet: ``s`` may be a dead run's
        if s.run_id is not None:
            self.saw_run = True
        if self.target == "groups":
            return s.phase == "groups" and self._slowed("/api/segments")
        if self.target == "profiles":
            return s.phase == "profiles_and_memberships" and s.profiles_pending and s.profile_records >= 150
        if self.target == "memberships":
            return s.phase == "profiles_and_memberships" and not s.profiles_pending and (
                s.members_pending or s.groups_pending_scan > 0)
        if self.target == "group_checks":
            return s.phase == "profiles_and_memberships" and s.groups_pending_check > 0 and self._slowed(*COUNT_TEMPLATES)
        if self.target == "finishing":
            if s.phase != "finishing":
                return False
            if self.finishing_at is None:  # from now on only the lookups ask /api/profiles
                self.finishing_at = time.monotonic()
                self.mark["/api/profiles"] = self._requests("/api/profiles")
            return self._asked_since("/api/profiles") or time.monotonic() - self.finishing_at > 0.15
        if self.target == "finalization":
            # The run's end is committed (watermark, sweep position, streams deleted) and the
            # process is still ending it: releasing its lease, reporting, exiting.
            return self.saw_run and s.run_id is None and s.finished
        raise AssertionError(self.target)


def sync_and_kill(env, server, engine, target: str, *, full: bool, timeout: float = 90) -> Kill:
    """Run ``smartpush sync klaviyo`` and SIGKILL it when the run is in ``target``."""
    aim = Aim(server, target)
    aim.launch()
    before = server.stats.get("total", 0)
    args = ["smartpush", "sync", "klaviyo", "--json", "--no-progress"] + (["--full"] if full else [])
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    last = Seen(None, None)
    try:
        while True:
            seen = observe(engine, last.run_id)
            if seen.run_id is not None:
                last = seen
            if aim.ready(seen):
                proc.send_signal(signal.SIGKILL)
                break
            assert proc.poll() is None, f"the run ended before it reached {target} (last seen: {last})"
            assert time.monotonic() < deadline, f"never reached {target} (last seen: {last})"
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        server.clear_faults()
        server.latency = LATENCY
    after = observe(engine, last.run_id)
    with engine.connect() as conn:
        lease_left = conn.execute(select(func.count()).select_from(lease_t).where(lease_t.c.store_id == STORE)).scalar_one()
    hit = {"finalization"} if after.run_id is None and after.finished else after.activities()
    return Kill(target, after.mode or last.mode or "?", hit, server.stats.get("total", 0) - before,
                max(after.profile_records, last.profile_records), bool(lease_left))


def sync(env, *, full: bool = False) -> dict:
    """A run that is left alone (resumes whatever run was interrupted)."""
    args = ["sync", "klaviyo", "--json", "--no-progress"] + (["--full"] if full else [])
    report = json.loads(smartpush(env, *args).stdout)
    assert report["outcome"] == "completed", report
    return report


# ----------------------------------------------------------------------- the end state
def doubled_and_orphans(engine) -> tuple[int, int]:
    """Emails and phones held by more than one contact (equal blind indexes: no decryption
    needed), and contacts no Klaviyo id maps to."""
    with engine.connect() as conn:
        doubled = 0
        for col in (contacts_t.c.email_bidx, contacts_t.c.phone_bidx):
            held = select(col).where(and_(contacts_t.c.store_id == STORE, col.is_not(None)))
            twice = held.group_by(col).having(func.count() > 1).subquery()
            doubled += conn.execute(select(func.count()).select_from(twice)).scalar_one()
        mapped = exists().where(and_(profile_map_t.c.store_id == STORE, profile_map_t.c.contact_uid == contacts_t.c.uid))
        orphans = conn.execute(
            select(func.count()).select_from(contacts_t).where(and_(contacts_t.c.store_id == STORE, ~mapped))
        ).scalar_one()
    return doubled, orphans


def shared_addresses(contacts: list[dict]) -> dict[str, list[str]]:
    """Emails (normalized) and phones held by more than one contact -> their uids."""
    holders: dict[str, list[str]] = {}
    for c in contacts:
        if c["email"]:
            holders.setdefault("email:" + normalize_email_key(c["email"]), []).append(c["uid"])
        if c["phone"]:
            holders.setdefault("phone:" + c["phone"], []).append(c["uid"])
    return {k: v for k, v in holders.items() if len(v) > 1}


def identities(attrs: dict) -> set[str]:
    """What ties a contact to a Klaviyo profile without its id: email, phone, ``created``."""
    out = {f"created:{attrs.get('created')}"}
    email = exp.valid_email(attrs.get("email"))
    if email:
        out.add("email:" + email.lower())
    phone = exp.expected_phone(attrs)
    if phone:
        out.add("phone:" + phone)
    return out


def contact_identities(c: dict) -> set[str]:
    out = {f"created:{c['properties'].get('kla_created')}"}
    if c["email"]:
        out.add("email:" + normalize_email_key(c["email"]))
    if c["phone"]:
        out.add("phone:" + c["phone"])
    return out


def check_end_state(contacts: list[dict], account, gone: dict[str, dict]) -> None:
    """After a completed full run: every importable profile mapped exactly once, no contact
    sharing an address with another, no contact without a Klaviyo id unless its profile left
    Klaviyo (deleted or merged away: its contact is kept by design), tags exact."""
    shared = shared_addresses(contacts)
    assert not shared, f"{len(shared)} addresses held by two contacts: {list(shared.values())[:5]}"
    kids = [k for c in contacts for k in c["klaviyo_ids"]]
    assert len(kids) == len(set(kids)), "a Klaviyo profile mapped to two contacts"
    live = {p["id"]: p["attributes"] for p in account.iter_profiles()}
    importable = {pid for pid, attrs in live.items() if exp.expected_skip_reason(attrs) is None}
    assert not importable - set(kids), f"{len(importable - set(kids))} importable profiles lost"
    assert not set(kids) - importable, "profiles mapped that Klaviyo no longer has (or skips)"
    gone_marks = set().union(*(identities(a) for a in gone.values())) if gone else set()
    orphans = [c for c in contacts if not c["klaviyo_ids"]]
    stray = [c["uid"] for c in orphans if not contact_identities(c) & gone_marks]
    assert not stray, f"{len(stray)} contacts without a Klaviyo id whose profile Klaviyo still has: {stray[:5]}"
    assert len(orphans) <= len(gone)
    expected = exp.expected_profile_tags(account)
    for c in contacts:
        want = set().union(*(expected.get(k, set()) for k in c["klaviyo_ids"])) if c["klaviyo_ids"] else set()
        assert set(c["tags"]) == want, f"tags of contact {c['uid']}"


# ---------------------------------------------------------------------------- the test
def test_kills_in_every_phase_across_full_and_daily_runs_leave_no_duplicate_or_loss(tmp_path, db_url):
    account = generate_account(profiles=3000, seed=29)
    rng = random.Random(29)
    gone: dict[str, dict] = {}

    def churn(**counts) -> None:
        before = {p["id"]: p["attributes"] for p in account.iter_profiles()}
        day = daily_churn(account, rng, **counts)
        for pid in day.deleted + [g for _, g in day.merged]:
            if pid in before:  # (one created and removed the same day was never imported)
                gone[pid] = before[pid]

    def delete_in_next_sweep(engine, n: int) -> None:
        """Profiles the next daily run's sweep portion covers leave Klaviyo, so its
        deleted-profile check (``finishing``) has lookups to make."""
        with engine.connect() as conn:
            position = conn.execute(select(integration_t.c.sweep_position).where(integration_t.c.store_id == STORE)).scalar()
        profiles = sorted(account.iter_profiles(), key=lambda p: (p["attributes"]["created"], p["id"]))
        start = datetime.fromisoformat(position) if position else None
        after = [p for p in profiles if start is None or datetime.fromisoformat(p["attributes"]["created"]) > start]
        after = after[5 : 5 + 20 * n : 20]
        for p in after:
            gone[p["id"]] = p["attributes"]
            account.delete_profile(p["id"])

    def platform_deletes_contacts(engine, n: int) -> None:
        """The platform deletes contacts the sync made (one fed by two Klaviyo profiles):
        the next runs that read their profiles make each again, once, with its ids."""
        with engine.begin() as conn:
            per_uid = conn.execute(
                select(profile_map_t.c.contact_uid, func.count()).where(profile_map_t.c.store_id == STORE)
                .group_by(profile_map_t.c.contact_uid).order_by(func.count().desc(), profile_map_t.c.contact_uid)
            ).all()
            uids = [per_uid[0][0]] + [uid for uid, _ in per_uid[-(n - 1):]]
            assert per_uid[0][1] > 1
            conn.execute(delete(tags_t).where(and_(tags_t.c.store_id == STORE, tags_t.c.contact_uid.in_(uids))))
            conn.execute(delete(contacts_t).where(and_(contacts_t.c.store_id == STORE, contacts_t.c.uid.in_(uids))))

    kills: list[Kill] = []
    with StandInServer(account, api_keys={DEFAULT_API_KEY: ALL_SCOPES}, latency=LATENCY,
                       clock_scale=CLOCK_SCALE) as server:
        env = cli_environment(tmp_path, db_url, server)
        smartpush(env, "install", "klaviyo")
        smartpush({**env, "KLAVIYO_API_KEY": DEFAULT_API_KEY}, "authorize", "klaviyo")
        engine = create_engine(db_url)
        try:
            def step(target: str, *, full: bool) -> None:
                kills.append(sync_and_kill(env, server, engine, target, full=full))
                # nothing doubled or orphaned at any point, not only at the end
                doubled, orphans = doubled_and_orphans(engine)
                assert not doubled, f"after {kills[-1]}: {doubled} addresses on two contacts"
                assert orphans <= len(gone), f"after {kills[-1]}: {orphans} contacts without a Klaviyo id"

            # day 0: the first (full) import, killed while reading profiles, its resume
            # killed while scanning memberships, then resumed to the end
            step("profiles", full=True)
            step("memberships", full=False)
            sync(env)
            churn(updates=150, creates=40, deletes=25, merges=10, quiet_consent=20, joins=60, leaves=40)
            # day 1: a daily run killed while reading lists and segments, resumed and
            # killed while checking large groups (joins, profile_count), resumed
            step("groups", full=False)
            step("group_checks", full=False)
            sync(env)
            churn(updates=150, creates=40, deletes=25, merges=10, quiet_consent=20, joins=60, leaves=40)
            delete_in_next_sweep(engine, 5)
            platform_deletes_contacts(engine, 5)
            # day 2: a daily run killed while reading profiles (window, suppressions,
            # sweep), resumed and killed in its deleted-profile check (the sweep's)
            step("profiles", full=False)
            step("finishing", full=False)
            sync(env)
            churn(updates=150, creates=40, deletes=25, merges=10, quiet_consent=20, joins=60, leaves=40)
            # day 3: a daily run killed as it ends (its end committed, the process still ending it)
            step("finalization", full=False)
            churn(updates=100, creates=20, deletes=15, merges=10, quiet_consent=10, joins=30, leaves=30)
            # day 4: a full run killed in memberships, resumed and killed in the
            # deleted-profile check, resumed and killed as it ends; one more full run
            step("memberships", full=True)
            step("finishing", full=False)
            step("finalization", full=False)
            sync(env, full=True)
            contacts = export(env, tmp_path)
        finally:
            engine.dispose()

    summary = "\n".join(str(k) for k in kills)
    print(summary)
    missed = [k for k in kills if k.target not in k.hit]
    assert not missed, f"kills that missed their phase:\n{summary}"
    covered = {(k.mode, k.target) for k in kills}
    assert covered >= {("full", t) for t in ("profiles", "memberships", "finishing", "finalization")}
    assert covered >= {("incremental", t) for t in ("groups", "group_checks", "profiles", "finishing", "finalization")}
    check_end_state(contacts, account, gone)

