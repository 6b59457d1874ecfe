"""Contacts export / import as JSON lines (host side of ``smartpush contacts``).

Export decrypts; its output is PII, so a file is created with mode 0600.

``klaviyo_ids`` come from the Klaviyo plugin's id map: the host does not import
plugin code, it reflects a table named ``klaviyo_profile_map`` with columns
``store_id``, ``klaviyo_id``, ``contact_uid`` when it exists (else empty lists).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import MetaData, Table, and_, inspect, select

from smartpush_devhost.contacts import CHUNK, SqlContactStore
from smartpush_devhost.storage import SqlStorage
from hookspecs.interfaces import Contact, NewContact, Tx

PROFILE_MAP_TABLE = "klaviyo_profile_map"
SUBSCRIPTION_VALUES = {"subscribed", "unsubscribed", "never_subscribed"}
_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
_UID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")


def reflect_table(storage: SqlStorage, name: str, columns: Sequence[str]) -> Table | None:
    """The table ``name`` if it exists and has ``columns``, else ``None``."""
    if not inspect(storage.engine).has_table(name):
        return None
    table = Table(name, MetaData(), autoload_with=storage.engine)
    if not set(columns) <= set(table.c.keys()):
        return None
    return table


def klaviyo_ids_of(tx: Tx, table: Table | None, store_id: str, uids: Sequence[str]) -> dict[str, list[str]]:
    """Klaviyo profile ids per contact uid (sorted), from the plugin's id map."""
    out: dict[str, list[str]] = {u: [] for u in uids}
    if table is None:
        return out
    for start in range(0, len(uids), CHUNK):
        chunk = list(uids[start : start + CHUNK])
        stmt = select(table.c.contact_uid, table.c.klaviyo_id).where(
            and_(table.c.store_id == store_id, table.c.contact_uid.in_(chunk))
        )
        for uid, kid in tx.execute(stmt):
            out[uid].append(kid)
    for ids in out.values():
        ids.sort()
    return out


def contact_record(c: Contact, tags: Iterable[str], klaviyo_ids: list[str]) -> dict[str, Any]:
    """The export form of one contact."""
    return {
        "uid": c.uid,
        "email": c.email,
        "phone": c.phone,
        "name": c.name,
        "country": c.country,
        "email_subscription": c.email_subscription,
        "sms_subscription": c.sms_subscription,
        "properties": c.properties,
        "tags": sorted(tags),
        "klaviyo_ids": klaviyo_ids,
    }


def iter_export(storage: SqlStorage, contacts: SqlContactStore, batch: int = CHUNK) -> Iterator[dict[str, Any]]:
    """Every contact of the store as an export record, in uid order."""
    id_map = reflect_table(storage, PROFILE_MAP_TABLE, ("store_id", "klaviyo_id", "contact_uid"))
    with storage.transaction(readonly=True) as tx:
        pending: list[Contact] = []

        def flush():
            uids = [c.uid for c in pending]
            tags = contacts.tags_of(tx, uids)
            kids = klaviyo_ids_of(tx, id_map, contacts.store_id, uids)
            for c in pending:
                yield contact_record(c, tags[c.uid], kids[c.uid])
            pending.clear()

        for contact in contacts.iter_all(tx):
            pending.append(contact)
            if len(pending) >= batch:
                yield from flush()
        yield from flush()


def export_contacts(storage: SqlStorage, contacts: SqlContactStore, out: IO[str]) -> int:
    """Write JSON lines to ``out``; returns how many contacts were written."""
    n = 0
    for record in iter_export(storage, contacts):
        out.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
        n += 1
    return n


# ------------------------------------------------------------------ import
@dataclass
class ImportResult:
    """Counts and per-line problems (line numbers and reasons only: no PII)."""

    created: int = 0
    updated: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)


class LineError(ValueError):
    """A line that cannot be imported; the message is a reason without PII."""


def _opt_str(record: dict, key: str) -> str | None:
    value = record.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise LineError(f"{key} must be a string")
    return value.strip() or None


def parse_line(line: str) -> tuple[str | None, NewContact, list[str]]:
    """Validate one JSON line: ``(uid or None, contact, tags)``; raises :class:`LineError`."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        raise LineError("not valid JSON") from None
    if not isinstance(record, dict):
        raise LineError("not a JSON object")
    uid = _opt_str(record, "uid")
    if uid is not None and not _UID.match(uid):
        raise LineError("invalid uid")
    email = _opt_str(record, "email")
    if email is not None:
        try:
            validate_email(email, check_deliverability=False)
        except EmailNotValidError:
            raise LineError("invalid email") from None
    phone = _opt_str(record, "phone")
    if phone is not None:
        if not _E164.match(phone):
            raise LineError("phone is not E.164")
        try:
            parsed = phonenumbers.parse(phone, None)
        except phonenumbers.NumberParseException:
            raise LineError("phone is not E.164") from None
        if not phonenumbers.is_valid_number(parsed) or phonenumbers.format_number(
            parsed, phonenumbers.PhoneNumberFormat.E164
        ) != phone:
            raise LineError("phone is not a valid E.164 number")
    if email is None and phone is None:
        raise LineError("no email or phone")
    statuses = {}
    for key in ("email_subscription", "sms_subscription"):
        value = record.get(key)
        if value is not None and value not in SUBSCRIPTION_VALUES:
            raise LineError(f"invalid {key}")
        statuses[key] = value
    properties = record.get("properties") or {}
    if not isinstance(properties, dict):
        raise LineError("properties must be an object")
    tags = record.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise LineError("tags must be a list of non-empty strings")
    contact = NewContact(
        email=email,
        phone=phone,
        name=_opt_str(record, "name"),
        country=_opt_str(record, "country"),
        properties=properties,
        **statuses,
    )
    return uid, contact, tags


def import_contacts(storage: SqlStorage, contacts: SqlContactStore, lines: Iterable[str], batch: int = CHUNK) -> ImportResult:
    """Create (or, for a uid already in this store, update) contacts from JSON lines.

    Each batch commits on its own; a bad line is skipped and reported by number.
    """
    result = ImportResult()
    pending: list[tuple[int, str | None, NewContact, list[str]]] = []

    def flush():
        if not pending:
            return
        with storage.transaction() as tx:
            given = [uid for _, uid, _, _ in pending if uid]
            mine = set(contacts.existing(tx, given)) if given else set()
            taken = _uids_elsewhere(tx, contacts, [u for u in given if u not in mine])
            seen: set[str] = set()
            creates, create_uids, updates, tag_pairs = [], [], [], []
            for lineno, uid, contact, tags in pending:
                if uid and (uid in taken or uid in seen):
                    result.skipped.append((lineno, "uid already in use"))
                    continue
                if uid:
                    seen.add(uid)
                if uid in mine:
                    updates.append(Contact(uid=uid, **vars(contact)))
                    target = uid
                else:
                    creates.append(contact)
                    create_uids.append(uid)
                    target = None
                tag_pairs.append((target, len(creates) - 1, tags))
            new_uids = contacts.create_many(tx, creates, uids=create_uids)
            contacts.update_many(tx, updates)
            pairs = []
            for target, index, tags in tag_pairs:
                uid = target or new_uids[index]
                pairs += [(uid, tag) for tag in tags]
            contacts.add_tags(tx, pairs)
            result.created += len(creates)
            result.updated += len(updates)
        pending.clear()

    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            uid, contact, tags = parse_line(line)
        except LineError as exc:
            result.skipped.append((lineno, str(exc)))
            continue
        pending.append((lineno, uid, contact, tags))
        if len(pending) >= batch:
            flush()
    flush()
    return result


def _uids_elsewhere(tx: Tx, contacts: SqlContactStore, uids: list[str]) -> set[str]:
    """Which of ``uids`` exist in any store (uids are globally unique)."""
    from smartpush_devhost.models import contacts_t

    found: set[str] = set()
    for start in range(0, len(uids), CHUNK):
        chunk = uids[start : start + CHUNK]
        found.update(tx.execute(select(contacts_t.c.uid).where(contacts_t.c.uid.in_(chunk))).scalars())
    return found


def tag_counts_by_group(tags: dict[str, int]) -> dict[str, dict[str, int]]:
    """Split tag counts into Klaviyo lists, segments and others (for the demo)."""
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for tag, n in tags.items():
        kind = "lists" if tag.startswith("kla_list_") else "segments" if tag.startswith("kla_segment_") else "other"
        out[kind][tag] = n
    return dict(out)
