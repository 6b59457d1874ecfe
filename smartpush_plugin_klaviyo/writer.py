"""Writes fetched pages into the host's contacts and the plugin's tables.

Each method runs inside a transaction the caller opened, together with the
checkpoint of the stream the page came from: a crash leaves the page either fully
applied (contacts, id map, memberships, tags, checkpoint) or not at all, and
re-applying a page is harmless because every write is keyed by Klaviyo id.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import String, and_, bindparam, delete, exists, func, insert, select, update

from hookspecs.fastsql import FastStatement, InListStatement, InsertIgnoringDuplicates, bind_value
from hookspecs.interfaces import Contact, HostContext, normalize_email_key
from smartpush_plugin_klaviyo import mapping
from smartpush_plugin_klaviyo.state import (
    event_t,
    group_t,
    membership_t,
    profile_map_t,
    skipped_t,
)
from smartpush_plugin_klaviyo.timeutil import format_iso, utcnow

TAG_PREFIXES = ("kla_list_", "kla_segment_")
PHONE_TAKEN = "-phone"
"""Marker in ``owned_fields``: this profile's phone belongs to another contact, never fill it."""
MAX_REPORTED_SKIPS = 50
BATCH = 500


def _chunks(items: Sequence, size: int = BATCH):
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class RunCounters:
    """Counts of one run, shared by the writer and the engine (writer thread only)."""

    counts: Counter = field(default_factory=Counter)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def skip(self, klaviyo_id: str, reason: str) -> None:
        self.counts["skipped"] += 1
        if len(self.skipped) < MAX_REPORTED_SKIPS:
            self.skipped.append((klaviyo_id, reason))


class PageWriter:
    """Applies pages of one store's sync run. Not thread-safe: one writer per run."""

    def __init__(self, ctx: HostContext, run_id: str, gen: int, counters: RunCounters):
        self.ctx = ctx
        self.store_id = ctx.store_id
        self.run_id = run_id
        self.gen = gen
        self.counters = counters
        self._group_tags: dict[str, str] | None = None
        self._deferred: set[str] = set()
        self._fresh_scans: dict[str, bool] = {}

    def group_tags(self, tx) -> dict[str, str]:
        """group id -> tag, read once per run (groups only change in the groups phase)."""
        if self._group_tags is None:
            rows = tx.execute(
                select(group_t.c.group_id, group_t.c.tag, group_t.c.tags_deferred).where(group_t.c.store_id == self.store_id)
            ).all()
            self._group_tags = {gid: tag for gid, tag, _deferred in rows}
            self._deferred = {gid for gid, _tag, deferred in rows if deferred}
        return self._group_tags

    def deferred_groups(self, tx) -> set[str]:
        """Groups whose members are tagged when the run's reading ends (``tags_deferred``)."""
        self.group_tags(tx)
        return self._deferred

    def forget_groups(self) -> None:
        """Call after groups changed (renames, deletions) so the next page reads them again."""
        self._group_tags = None

    def defer_tags_of_empty_groups(self, tx) -> None:
        """Groups that hold no members yet (every group of a first sync, a new group) get
        their tags in one statement per group when the run's reading ends, instead of
        page by page: no uid lookup and no tag insert from Python for each member page,
        and none for each profile page read after its memberships.

        The flag is stored with the groups, so a run that stops first leaves it for the
        next run to act on (:meth:`apply_deferred_tags` at its start).
        """
        m = membership_t
        holds_members = exists().where(and_(m.c.store_id == group_t.c.store_id, m.c.group_id == group_t.c.group_id))
        tx.execute(
            update(group_t)
            .where(and_(group_t.c.store_id == self.store_id, ~holds_members))
            .values(tags_deferred=True)
        )
        self.forget_groups()

    def apply_deferred_tags(self, tx, group_ids: Iterable[str] | None = None) -> int:
        """Tag every mapped member of these deferred groups (``None``: all of them), one
        ``INSERT ... SELECT`` per group run by the database, and clear their flag.
        Returns how many tags were new."""
        deferred = self.deferred_groups(tx)
        chosen = sorted(deferred if group_ids is None else deferred.intersection(group_ids))
        m, pm = membership_t, profile_map_t
        added = 0
        for gid in chosen:
            pairs = (
                select(pm.c.contact_uid, group_t.c.tag)
                .select_from(
                    m.join(pm, and_(pm.c.store_id == m.c.store_id, pm.c.klaviyo_id == m.c.klaviyo_id)).join(
                        group_t, and_(group_t.c.store_id == m.c.store_id, group_t.c.group_id == m.c.group_id)
                    )
                )
                .where(and_(m.c.store_id == self.store_id, m.c.group_id == gid, group_t.c.tag != ""))
            )
            added += self.ctx.contacts.add_tags_selected(tx, pairs)
            tx.execute(
                update(group_t)
                .where(and_(group_t.c.store_id == self.store_id, group_t.c.group_id == gid))
                .values(tags_deferred=None)
            )
            # If this transaction fails the run ends; a flag cleared only here errs the
            # safe way (this run's later pages of the group tag as they go).
            deferred.discard(gid)
        return added

    def add_membership_tags(self, tx, kid_uid: dict[str, str]) -> None:
        """Add the tags of the groups these (newly mapped) profiles belong to; add-only."""
        if not kid_uid:
            return
        tags = self.group_tags(tx)
        deferred = self._deferred
        if deferred and deferred.issuperset(tags):
            return  # every group tags its members when the run's reading ends
        pairs = []
        for chunk in _chunks(list(kid_uid)):
            for kid, gid in _MEMBERS_OF_KIDS.execute(tx, {"store": self.store_id, "kids": chunk}):
                tag = tags.get(gid)
                if tag is not None and gid not in deferred:
                    pairs.append((kid_uid[kid], tag))
        if pairs:
            self.ctx.contacts.add_tags(tx, pairs)

    # ------------------------------------------------------------------ profiles
    def write_profiles(self, tx, resources: Iterable[dict]) -> None:
        """Import one page of profile resources (JSON:API dicts)."""
        self.write_mapped(tx, [mapping.map_profile(resource) for resource in resources])

    def write_mapped(self, tx, results: Iterable[mapping.MappedProfile | mapping.Skip]) -> None:
        """Import one page of profiles already mapped by :func:`mapping.map_profile`."""
        store = self.store_id
        contacts = self.ctx.contacts
        counts = self.counters.counts
        by_id: dict[str, mapping.MappedProfile] = {}
        skips: dict[str, str] = {}
        for result in results:
            counts["profiles_seen"] += 1
            if isinstance(result, mapping.Skip):
                if result.klaviyo_id:
                    skips[result.klaviyo_id] = result.reason
                    by_id.pop(result.klaviyo_id, None)
                self.counters.skip(result.klaviyo_id or "(no id)", result.reason)
                continue
            by_id[result.klaviyo_id] = result  # last one wins within a page
            skips.pop(result.klaviyo_id, None)
        if skips:
            self._record_skips(tx, skips)
        if not by_id:
            return
        kids = list(by_id)
        known = {row.klaviyo_id: row for row in _KNOWN.execute(tx, {"store": store, "kids": kids})}
        loaded = contacts.get_many(tx, list({row.contact_uid for row in known.values()})) if known else {}
        # A mapped contact the host no longer has (deleted on the platform): its profiles are
        # matched again like new ones (by email, then phone, else a new contact) and their
        # id mapping re-pointed. Recreating it under the stale mapping instead left the new
        # contact without a Klaviyo id and made another one every run, all sharing an email.
        stale = [kid for kid, row in known.items() if row.contact_uid not in loaded]
        if stale:
            _FORGET_MAP.execute(tx, {"store": store, "kids": stale})
            for kid in stale:
                del known[kid]
            counts["contacts_recreated"] += len(stale)
        unmapped = [m for m in by_id.values() if m.klaviyo_id not in known]
        by_email = contacts.find_by_emails(tx, {m.email_key for m in unmapped if m.email_key}) if unmapped else {}
        by_phone = contacts.find_by_phones(tx, {m.phone for m in unmapped if m.phone}) if unmapped else {}
        candidate_uids: set[str] = {row.contact_uid for row in known.values()}
        for uids in list(by_email.values()) + list(by_phone.values()):
            candidate_uids.update(uids)
        # Which existing contacts already carry a Klaviyo profile (so a new match is a duplicate)?
        mapped_owner: dict[str, str] = {}
        if unmapped and candidate_uids:
            for uid, kid in _PRIMARY_OF_UIDS.execute(tx, {"store": store, "uids": list(candidate_uids)}):
                mapped_owner.setdefault(uid, kid)
        more = candidate_uids - loaded.keys()
        if more:
            loaded.update(contacts.get_many(tx, list(more)))
        originals = {uid: Contact(**vars(c)) for uid, c in loaded.items()}
        for c in originals.values():
            c.properties = dict(c.properties)
        held_email, held_phone = self._held_elsewhere(tx, known, by_id, loaded)
        pending: dict[str, Contact] = {}  # temporary uid -> draft of a contact to create
        page_email: dict[str, str] = {}
        page_phone: dict[str, str] = {}
        map_updates: list[dict] = []
        map_inserts: list[dict] = []
        events: list[tuple[str, str]] = []
        for m in by_id.values():
            row = known.get(m.klaviyo_id)
            created = False
            phone_taken = False
            if row is not None:
                uid, primary = row.contact_uid, bool(row.is_primary)
                owned = set(filter(None, (row.owned_fields or "").split(",")))
                phone_taken = PHONE_TAKEN in owned
                owned.discard(PHONE_TAKEN)
                if m.email_key and held_email.get(m.email_key, {uid}) - {uid}:
                    # The profile took an email another contact holds (a Klaviyo merge gave it the
                    # merged-away profile's): that contact keeps it, this one never copies it.
                    m = dataclasses.replace(m, email=None, email_key=None, email_status=None)
                    counts["email_held_elsewhere"] += 1
                if not phone_taken and m.phone and held_phone.get(m.phone, {uid}) - {uid}:
                    phone_taken = True  # same reason; kept as kla_phone_number, like a shared phone
                if phone_taken:
                    m = dataclasses.replace(m, phone=None, sms_status=None)
            else:
                uid, via, owned = None, None, set()
                if m.email_key:
                    uid = _first(by_email.get(m.email_key)) or page_email.get(m.email_key)
                    via = "email" if uid else None
                if uid is None and m.phone:
                    uid = _first(by_phone.get(m.phone)) or page_phone.get(m.phone)
                    via = "phone" if uid else None
                    holder = (pending.get(uid) or loaded.get(uid)) if uid else None
                    if holder is not None and m.email_key and holder.email and normalize_email_key(holder.email) != m.email_key:
                        # Same phone, different email: merging would lose this email. A
                        # separate contact keeps it; the phone stays with the first contact
                        # (this one keeps it as kla_phone_number), so no number is messaged twice.
                        uid, via, phone_taken = None, None, True
                        counts["shared_phone_profiles"] += 1
                        events.append(
                            ("shared_phone", f"Klaviyo profile {m.klaviyo_id} shares its phone with contact "
                             f"{holder.uid} but has another email; imported as its own contact")
                        )
                if uid is None:
                    created = True
                elif uid.startswith("pending:") or uid in mapped_owner:
                    # Same email/phone as another Klaviyo profile: one contact, both ids mapped, reported.
                    primary = False
                    other = mapped_owner.get(uid) or next(
                        (r["klaviyo_id"] for r in map_inserts if r["contact_uid"] == uid), "?"
                    )
                    counts["duplicate_profiles"] += 1
                    events.append(
                        (
                            "duplicate_profile",
                            f"Klaviyo profile {m.klaviyo_id} has the same {via} as profile {other}; "
                            f"both are mapped to contact {uid}",
                        )
                    )
                else:
                    primary = True  # an existing SmartPush contact: merged, never clobbered
                    counts["contacts_merged"] += 1
            target = None if created else (pending.get(uid) or loaded.get(uid))
            if target is None:
                # A new contact (a mapped contact the host no longer has was unmapped above).
                if not created:
                    counts["contacts_recreated"] += 1
                uid = f"pending:{len(pending)}"
                draft = mapping.new_contact(m)
                if phone_taken:
                    draft.phone = None
                    draft.sms_subscription = None
                pending[uid] = mapping.as_contact(uid, draft)
                owned = {f for f in _STANDARD if getattr(draft, f)}
                primary = True
                counts["contacts_created"] += 1
            else:
                merged, owned, _notes = mapping.merge_into(target, m, owned_fields=owned, primary=primary)
                if uid in pending:
                    pending[uid] = merged
                else:
                    loaded[uid] = merged
            if row is None and primary:
                mapped_owner.setdefault(uid, m.klaviyo_id)
            if m.email_key:
                page_email.setdefault(m.email_key, uid)
            if m.phone:
                page_phone.setdefault(m.phone, uid)
            if phone_taken:
                owned = owned | {PHONE_TAKEN}
            values = {
                "store_id": store,
                "klaviyo_id": m.klaviyo_id,
                "contact_uid": uid,
                "is_primary": primary,
                "owned_fields": ",".join(sorted(owned)),
                "profile_updated": m.updated.isoformat() if m.updated else None,
                "last_seen_run": self.run_id,
                "created": format_iso(m.created) if m.created else None,
            }
            (map_updates if row is not None else map_inserts).append(values)
        # Create new contacts, then resolve their temporary uids.
        if pending:
            temp_ids = list(pending)
            new_uids = contacts.create_many(tx, [mapping.as_new_contact(pending[t]) for t in temp_ids])
            real = dict(zip(temp_ids, new_uids, strict=True))
            for values in map_inserts + map_updates:
                values["contact_uid"] = real.get(values["contact_uid"], values["contact_uid"])
            events = [(k, _replace_pending(d, real)) for k, d in events]
        changed = [c for uid, c in loaded.items() if c != originals.get(uid)]
        if changed:
            contacts.update_many(tx, changed)
            counts["contacts_updated"] += len(changed)
        if map_inserts:
            true = bind_value(tx, profile_map_t.c.is_primary, True)
            false = bind_value(tx, profile_map_t.c.is_primary, False)
            for values in map_inserts:
                values["is_primary"] = true if values["is_primary"] else false
            _INSERT_MAP.executemany(tx, map_inserts)
        if map_updates:
            _UPDATE_MAP.executemany_tuples(
                tx,
                _UPDATE_MAP_KEYS,
                [
                    (v["store_id"], v["klaviyo_id"], v["owned_fields"], v["profile_updated"], v["last_seen_run"], v["created"])
                    for v in map_updates
                ],
            )
        _UNSKIP.execute(tx, {"store": store, "kids": kids})
        if events:
            self._record_events(tx, events)
        counts["profiles_imported"] += len(kids)
        if map_inserts:
            # Newly mapped profiles may already be members of groups scanned earlier. A
            # contact created just now can only gain tags; a pre-existing one is reconciled.
            created = set(real.values()) if pending else set()
            self.add_membership_tags(
                tx, {v["klaviyo_id"]: v["contact_uid"] for v in map_inserts if v["contact_uid"] in created}
            )
            self.recompute_tags(tx, {v["contact_uid"] for v in map_inserts if v["contact_uid"] not in created})

    def _held_elsewhere(self, tx, known, by_id, loaded) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
        """Contacts holding an email/phone that a mapped profile brings to its contact anew.

        Klaviyo merges move the merged-away profile's email or phone to the profile kept;
        the contact of the merged-away profile still holds it. Only addresses the mapped
        contact does not already hold are looked up, so a steady sync queries nothing.
        """
        emails: set[str] = set()
        phones: set[str] = set()
        for kid, row in known.items():
            m, c = by_id[kid], loaded.get(row.contact_uid)
            if c is None:
                continue
            if m.email_key and (not c.email or normalize_email_key(c.email) != m.email_key):
                emails.add(m.email_key)
            if m.phone and c.phone != m.phone:
                phones.add(m.phone)
        contacts = self.ctx.contacts
        by_email = contacts.find_by_emails(tx, emails) if emails else {}
        by_phone = contacts.find_by_phones(tx, phones) if phones else {}
        return (
            {k: set(v) for k, v in by_email.items() if v},
            {k: set(v) for k, v in by_phone.items() if v},
        )

    def _record_skips(self, tx, skips: dict[str, str]) -> None:
        ids = list(skips)
        # A mapped profile that is skipped now still exists in Klaviyo: not a deletion.
        _STILL_SEEN.execute(tx, {"store": self.store_id, "kids": ids, "run": self.run_id})
        _UNSKIP.execute(tx, {"store": self.store_id, "kids": ids})
        now = utcnow()
        tx.execute(
            _INSERT_SKIP,
            [
                {"store_id": self.store_id, "klaviyo_id": kid, "reason": reason[:500], "run_id": self.run_id, "seen_at": now}
                for kid, reason in skips.items()
            ],
        )

    def _record_events(self, tx, events: list[tuple[str, str]]) -> None:
        now = utcnow()
        tx.execute(
            insert(event_t),
            [{"store_id": self.store_id, "run_id": self.run_id, "kind": k, "detail": d[:1000], "at": now} for k, d in events],
        )

    def record_event(self, tx, kind: str, detail: str) -> None:
        self._record_events(tx, [(kind, detail)])

    # --------------------------------------------------------------- memberships
    def write_members(self, tx, group_id: str, klaviyo_ids: Sequence[str], *, scan: bool = True) -> None:
        """Record one page of a group's member ids.

        ``scan=True``: the page is part of a complete scan, so the ids are marked seen in
        this run (members not seen by the end of the scan have left). ``scan=False``:
        recent joins only; new rows are added but nothing is marked seen.
        """
        store = self.store_id
        kids = list(dict.fromkeys(k for k in klaviyo_ids if isinstance(k, str) and k))
        if not kids:
            return
        self.counters.counts["memberships_seen"] += len(kids)
        if scan and self._scan_is_fresh(tx, group_id):
            # Every row of the group is this scan's own (seen_gen == gen): nothing to mark
            # seen, and a page read twice (a restarted cursor) only repeats rows.
            rows = [(store, group_id, k, self.gen) for k in kids]
            added = max(_INSERT_MEMBER_ONCE.executemany_tuples(tx, rows).rowcount, 0)
            new = kids if added else []
        else:
            if not scan:
                self._fresh_scans[group_id] = False  # its rows are no longer all this scan's
            existing = set(_EXISTING_MEMBERS.execute(tx, {"store": store, "gid": group_id, "kids": kids}).scalars())
            if existing and scan:
                _SEEN.execute(tx, {"store": store, "gid": group_id, "kids": list(existing), "gen": self.gen})
            new = [k for k in kids if k not in existing]
            added = len(new)
            if new:
                gen = self.gen if scan else 0
                _INSERT_MEMBER.executemany_tuples(tx, _MEMBER_KEYS, [(store, group_id, k, gen) for k in new])
        if new:
            self.counters.counts["memberships_added"] += added
            # A new membership can only add this group's tag: no full reconciliation needed
            # (add_tags ignores pairs already present).
            tag = self.group_tags(tx).get(group_id)
            if tag and group_id not in self._deferred:
                uids = self._uids_of(tx, new)
                if uids:
                    self.ctx.contacts.add_tags(tx, [(u, tag) for u in sorted(uids)])

    def _scan_is_fresh(self, tx, group_id: str) -> bool:
        """Whether every stored membership of the group is this run's scan's own.

        True for a group no earlier run has members of (a first sync, a new group):
        its pages then need no existence check (one 100-value select per page; the
        memberships stage of ``benchmarks/pipeline_stages.py`` went 68-70 -> 61-65 µs
        per profile). Asked once per group and run; only writes of this
        run change the answer, and only ``scan=False`` writes make it false.
        """
        fresh = self._fresh_scans.get(group_id)
        if fresh is None:
            older = tx.execute(
                select(membership_t.c.klaviyo_id)
                .where(
                    and_(
                        membership_t.c.store_id == self.store_id,
                        membership_t.c.group_id == group_id,
                        membership_t.c.seen_gen != self.gen,
                    )
                )
                .limit(1)
            ).first()
            fresh = self._fresh_scans[group_id] = older is None
        return fresh

    def finalize_group_scan(self, tx, group_id: str) -> int:
        """After a complete scan: members not seen in this run left the group."""
        store = self.store_id
        stale = list(
            tx.execute(
                select(membership_t.c.klaviyo_id).where(
                    and_(
                        membership_t.c.store_id == store,
                        membership_t.c.group_id == group_id,
                        membership_t.c.seen_gen < self.gen,
                    )
                )
            ).scalars()
        )
        for chunk in _chunks(stale):
            tx.execute(
                delete(membership_t).where(
                    and_(
                        membership_t.c.store_id == store,
                        membership_t.c.group_id == group_id,
                        membership_t.c.klaviyo_id.in_(chunk),
                    )
                )
            )
            self.recompute_tags(tx, self._uids_of(tx, chunk))
        self.counters.counts["memberships_removed"] += len(stale)
        count = self.member_count(tx, group_id)
        tx.execute(
            update(group_t)
            .where(and_(group_t.c.store_id == store, group_t.c.group_id == group_id))
            .values(scanned_gen=self.gen, member_count=count)
        )
        return len(stale)

    def member_count(self, tx, group_id: str, *, seen_in_run: bool = False) -> int:
        """The members we hold for a group (``seen_in_run``: only those this run's scan saw)."""
        where = [membership_t.c.store_id == self.store_id, membership_t.c.group_id == group_id]
        if seen_in_run:
            where.append(membership_t.c.seen_gen == self.gen)
        return tx.execute(select(func.count()).select_from(membership_t).where(and_(*where))).scalar_one()

    # ------------------------------------------------------------ the id map
    def mapped_count(self, tx) -> int:
        """Klaviyo profiles mapped to a contact in this store."""
        return tx.execute(
            select(func.count()).select_from(profile_map_t).where(profile_map_t.c.store_id == self.store_id)
        ).scalar_one()

    def not_seen_in_run(self, tx, run_id: str, *, created_from: str | None = None,
                        created_before: str | None = None, ranged: bool = False) -> list[str]:
        """Mapped Klaviyo ids that no stream of run ``run_id`` returned; ``ranged``: only
        those whose ``created`` lies in ``[created_from, created_before)`` (an open end is
        unbounded; with no ``created_before``, those whose ``created`` is unknown too)."""
        where = [
            profile_map_t.c.store_id == self.store_id,
            (profile_map_t.c.last_seen_run != run_id) | profile_map_t.c.last_seen_run.is_(None),
        ]
        if ranged:
            created = profile_map_t.c.created
            in_range = and_(
                created >= created_from if created_from else created.is_not(None),
                created < created_before if created_before else created.is_not(None),
            )
            if created_before is None:
                in_range = in_range | created.is_(None)
            where.append(in_range)
        return list(tx.execute(select(profile_map_t.c.klaviyo_id).where(and_(*where))).scalars())

    def unmap(self, tx, klaviyo_ids: Sequence[str]) -> None:
        """Profiles Klaviyo no longer has (deleted, merged away): their memberships and id
        mappings go, their contacts' Klaviyo tags are recomputed; the contacts stay."""
        uids = self._uids_of(tx, klaviyo_ids)
        for chunk in _chunks(list(klaviyo_ids)):
            tx.execute(delete(membership_t).where(and_(membership_t.c.store_id == self.store_id, membership_t.c.klaviyo_id.in_(chunk))))
            tx.execute(delete(profile_map_t).where(and_(profile_map_t.c.store_id == self.store_id, profile_map_t.c.klaviyo_id.in_(chunk))))
        self.recompute_tags(tx, uids)

    def _uids_of(self, tx, klaviyo_ids: Sequence[str]) -> set[str]:
        uids: set[str] = set()
        for chunk in _chunks(list(klaviyo_ids)):
            uids.update(uid for _kid, uid in _UIDS_OF_KIDS.execute(tx, {"store": self.store_id, "kids": chunk}))
        return uids

    # ---------------------------------------------------------------------- tags
    def recompute_tags(self, tx, uids: Iterable[str]) -> None:
        """Make the Klaviyo tags of these contacts exactly what their memberships say.

        Idempotent reconciliation instead of incremental add/remove, so a contact fed by
        two Klaviyo profiles keeps a tag while either is still a member.
        """
        uid_list = sorted(set(uids))
        if not uid_list:
            return
        # Two indexed lookups instead of one 3-way join: without ANALYZE statistics SQLite
        # drives that join from klaviyo_membership (store_id=?) and scans every membership
        # of the store for each chunk, which makes a full sync quadratic.
        tag_of_group = self.group_tags(tx)
        for chunk in _chunks(uid_list):
            desired: dict[str, set[str]] = defaultdict(set)
            kid_uid = dict(_KIDS_OF_UIDS.execute(tx, {"store": self.store_id, "uids": chunk}).all())
            for kid_chunk in _chunks(list(kid_uid)):
                for kid, gid in _MEMBERS_OF_KIDS.execute(tx, {"store": self.store_id, "kids": kid_chunk}):
                    tag = tag_of_group.get(gid)
                    if tag is not None:
                        desired[kid_uid[kid]].add(tag)
            current = self.ctx.contacts.tags_of(tx, chunk)
            add, remove = [], []
            for uid in chunk:
                have = {t for t in current.get(uid, ()) if t.startswith(TAG_PREFIXES)}
                want = desired.get(uid, set())
                add.extend((uid, t) for t in want - have)
                remove.extend((uid, t) for t in have - want)
            if add:
                self.ctx.contacts.add_tags(tx, add)
            if remove:
                self.ctx.contacts.remove_tags(tx, remove)


# Statements built once (building one costs more than running it on a 100-row page) and
# rendered once per IN-list length. Rows come from the driver: is_primary may be 0/1.
_IN_KIDS = bindparam("kids", expanding=True)
_IN_UIDS = bindparam("uids", expanding=True)


def _of_kids(table, *more):
    """``store_id = :store [AND more] AND klaviyo_id IN (:kids)``: a page's rows of ``table``."""
    return and_(table.c.store_id == bindparam("store"), *more, table.c.klaviyo_id.in_(_IN_KIDS))


def _of_group_kids():
    """A page's memberships of one group (``:gid``)."""
    return _of_kids(membership_t, membership_t.c.group_id == bindparam("gid"))


def _of_uids(*more):
    """``profile_map`` rows of the contacts ``:uids``."""
    return and_(profile_map_t.c.store_id == bindparam("store"), profile_map_t.c.contact_uid.in_(_IN_UIDS), *more)


_MEMBERS_OF_KIDS = InListStatement(
    select(membership_t.c.klaviyo_id, membership_t.c.group_id).where(_of_kids(membership_t)), "kids"
)
_UIDS_OF_KIDS = InListStatement(
    select(profile_map_t.c.klaviyo_id, profile_map_t.c.contact_uid).where(_of_kids(profile_map_t)), "kids"
)
_KIDS_OF_UIDS = InListStatement(select(profile_map_t.c.klaviyo_id, profile_map_t.c.contact_uid).where(_of_uids()), "uids")
_PRIMARY_OF_UIDS = InListStatement(
    # which contacts already carry a primary Klaviyo profile, and which one
    select(profile_map_t.c.contact_uid, profile_map_t.c.klaviyo_id).where(
        _of_uids(profile_map_t.c.is_primary == True)  # noqa: E712
    ),
    "uids",
)
_EXISTING_MEMBERS = InListStatement(select(membership_t.c.klaviyo_id).where(_of_group_kids()), "kids")
_KNOWN = InListStatement(
    select(
        profile_map_t.c.klaviyo_id,
        profile_map_t.c.contact_uid,
        profile_map_t.c.is_primary,
        profile_map_t.c.owned_fields,
    ).where(_of_kids(profile_map_t)),
    "kids",
)
_UNSKIP = InListStatement(delete(skipped_t).where(_of_kids(skipped_t)), "kids")
_FORGET_MAP = InListStatement(delete(profile_map_t).where(_of_kids(profile_map_t)), "kids")
_STILL_SEEN = InListStatement(
    update(profile_map_t).where(_of_kids(profile_map_t)).values(last_seen_run=bindparam("run")), "kids"
)
_SEEN = InListStatement(update(membership_t).where(_of_group_kids()).values(seen_gen=bindparam("gen")), "kids")
_INSERT_SKIP = insert(skipped_t)
_INSERT_MAP = FastStatement(
    insert(profile_map_t),
    ["store_id", "klaviyo_id", "contact_uid", "is_primary", "owned_fields", "profile_updated", "last_seen_run", "created"],
)
_UPDATE_MAP_KEYS = ("b_store", "b_kid", "owned_fields", "profile_updated", "last_seen_run", "created")
_UPDATE_MAP = FastStatement(
    # bind names must differ from column names in UPDATE ... SET
    update(profile_map_t)
    .where(and_(profile_map_t.c.store_id == bindparam("b_store"), profile_map_t.c.klaviyo_id == bindparam("b_kid")))
    .values(
        owned_fields=bindparam("owned_fields"),
        profile_updated=bindparam("profile_updated"),
        last_seen_run=bindparam("last_seen_run"),
        # the rolling sweep covers ranges of ``created``: kept once known
        created=func.coalesce(bindparam("created", type_=String), profile_map_t.c.created),
    )
)
_MEMBER_KEYS = ("store_id", "group_id", "klaviyo_id", "seen_gen")
_INSERT_MEMBER = FastStatement(insert(membership_t), _MEMBER_KEYS)
_INSERT_MEMBER_ONCE = InsertIgnoringDuplicates(membership_t, _MEMBER_KEYS)


_STANDARD = ("email", "phone", "name", "country")


# Explicit fields rather than a dict of getattr()s: one of each per new contact.
def _first(uids: list[str] | None) -> str | None:
    return sorted(uids)[0] if uids else None


def _replace_pending(text: str, real: dict[str, str]) -> str:
    for temp, uid in sorted(real.items(), key=lambda item: -len(item[0])):
        text = text.replace(temp, uid)
    return text

