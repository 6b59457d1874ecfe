"""Contacts export / import as JSON lines (host side of ``smartpush contacts``).

Export decrypts; its output is PII, so a file is created with mode 0600.

``klaviyo_ids`` come from the Klaviyo plugin's id map: the host does not import
plugin code, it reflects a table named ``klaviyo_profile_map`` with columns
``store_id``, ``klaviyo_id``, ``contact_uid`` when it exists (else empty lists).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, Any

from sqlalchemy import MetaData, Table, and_, inspect, select

from smartpush_devhost.contacts import CHUNK, SqlContactStore
from smartpush_devhost.storage import SqlStorage
from hookspecs.interfaces import Contact, Tx
from smartpush_devhost.importing import ImportResult, LineError, import_contacts, parse_line  # noqa: F401 (re-exported)

PROFILE_MAP_TABLE = "klaviyo_profile_map"


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


def tag_counts_by_group(tags: dict[str, int]) -> dict[str, dict[str, int]]:
    """Split tag counts into Klaviyo lists, segments and others (for the demo)."""
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for tag, n in tags.items():
        kind = "lists" if tag.startswith("kla_list_") else "segments" if tag.startswith("kla_segment_") else "other"
        out[kind][tag] = n
    return dict(out)
