"""``smartpush contacts import``: JSON lines into a store, merged like the sync merges.

- A line whose ``uid`` is a contact of this store updates that contact.
- Any other line is matched on its email (normalized), then its phone (E.164),
  against the store's contacts and the lines before it; a match is merged into
  (given fields replace, properties are merged key by key, tags are added), else a
  contact is created. A second import of the same file therefore changes nothing.
- Uids are unique per store, not across stores (a contact is ``(store_id, uid)``):
  a line matched to no contact is created with its own ``uid`` when it has one, so
  an export of one store imports into another keeping every uid. A uid of another
  store means nothing here: it is never looked up outside this store.
- A bad line (not UTF-8, not JSON, nested deeper than :data:`MAX_DEPTH`, a number
  that is not finite or does not fit 64 bits, an invalid field) is skipped with its
  line number and reason; the rest is imported. Only values that the store's JSON
  codec writes and reads back exactly are stored, so no line can break a later
  export or sync.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
import phonenumbers
from email_validator import EmailNotValidError, validate_email
from sqlalchemy.exc import SQLAlchemyError

from hookspecs.interfaces import Contact, NewContact, Tx, normalize_email_key
from smartpush_devhost.contacts import CHUNK, SqlContactStore
from smartpush_devhost.ids import new_uids
from smartpush_devhost.models import tags_t
from smartpush_devhost.storage import SqlStorage

SUBSCRIPTION_VALUES = {"subscribed", "unsubscribed", "never_subscribed"}
MAX_DEPTH = 32
"""How deep ``properties`` may nest (objects and arrays)."""
MAX_LINE_BYTES = 1 << 20
_INT_RANGE = (-(2**63), 2**64 - 1)  # what orjson reads and writes exactly
_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
_UID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # PostgreSQL text cannot hold NUL; none belongs in a tag
_TAG_LENGTH = getattr(tags_t.c.tag.type, "length", None)
"""The tag column's length limit, if it has one (tags are plain columns, not encrypted)."""


@dataclass
class ImportResult:
    """Counts and per-line problems (line numbers and reasons only: no PII)."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (``--json``)."""
        return {"created": self.created, "updated": self.updated, "unchanged": self.unchanged,
                "skipped": len(self.skipped), "skipped_lines": [{"line": n, "reason": r} for n, r in self.skipped]}


class LineError(ValueError):
    """A line that cannot be imported; the message is a reason without PII."""


def _opt_str(record: dict, key: str) -> str | None:
    value = record.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise LineError(f"{key} must be a string")
    return value.strip() or None


def _decode(raw: bytes | str) -> Any:
    if isinstance(raw, bytes):
        if len(raw) > MAX_LINE_BYTES:
            raise LineError(f"line longer than {MAX_LINE_BYTES} bytes")
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise LineError("not valid UTF-8") from None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        text = str(exc)
        if "depth" in text or "recursion" in text:
            raise LineError(f"nested deeper than {MAX_DEPTH} levels") from None
        if "infinity" in text:
            raise LineError("a number is too large") from None
        if "surrogate" in text:
            raise LineError("a string holds an invalid surrogate escape") from None
        raise LineError("not valid JSON (NaN, Infinity and trailing text are not JSON)") from None


def check_value(value: Any) -> None:
    """Raise :class:`LineError` unless ``value`` nests at most :data:`MAX_DEPTH` deep and
    every number is finite and fits 64 bits (what the store's codec round-trips)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                raise LineError(f"nested deeper than {MAX_DEPTH} levels")
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
        elif isinstance(item, bool) or item is None or isinstance(item, str):
            continue
        elif isinstance(item, int):
            if not _INT_RANGE[0] <= item <= _INT_RANGE[1]:
                raise LineError("a number does not fit 64 bits")
        elif isinstance(item, float):
            if item != item or item in (float("inf"), float("-inf")):
                raise LineError("a number is not finite")


def parse_line(line: bytes | str) -> tuple[str | None, NewContact, list[str]]:
    """Validate one JSON line: ``(uid or None, contact, tags)``; raises :class:`LineError`."""
    record = _decode(line)
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
    check_value(properties)
    tags = record.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise LineError("tags must be a list of non-empty strings")
    for tag in tags:
        if _CONTROL.search(tag):
            raise LineError("a tag holds a control character")
        if _TAG_LENGTH is not None and len(tag) > _TAG_LENGTH:
            raise LineError(f"a tag is longer than {_TAG_LENGTH} characters")
    contact = NewContact(email=email, phone=phone, name=_opt_str(record, "name"), country=_opt_str(record, "country"),
                         properties=properties, **statuses)
    return uid, contact, tags


def merged(existing: Contact, line: NewContact) -> Contact:
    """``existing`` with the line's given fields, its properties merged key by key."""
    fields = {k: v for k, v in vars(line).items() if k != "properties" and v is not None}
    return Contact(uid=existing.uid, **{**{k: v for k, v in vars(existing).items() if k not in ("uid", "properties")},
                                        **fields}, properties={**existing.properties, **line.properties})


def _same(a: Contact, b: Contact) -> bool:
    return vars(a) == vars(b)


@dataclass
class _Line:
    lineno: int
    uid: str | None
    contact: NewContact
    tags: list[str]


class _Batch:
    """One transaction's worth of lines, merged among themselves and into the store."""

    def __init__(self, tx: Tx, contacts: SqlContactStore, result: ImportResult):
        self.tx, self.contacts, self.result = tx, contacts, result

    def run(self, lines: list[_Line]) -> None:
        tx, contacts = self.tx, self.contacts
        given = [ln.uid for ln in lines if ln.uid]
        mine = set(contacts.existing(tx, given)) if given else set()
        by_email = contacts.find_by_emails(tx, {ln.contact.email for ln in lines if ln.contact.email})
        by_phone = contacts.find_by_phones(tx, {ln.contact.phone for ln in lines if ln.contact.phone})
        email_uid = {normalize_email_key(e): uids[0] for e, uids in by_email.items() if uids}
        phone_uid = {p: uids[0] for p, uids in by_phone.items() if uids}
        originals = contacts.get_many(tx, list(mine | set(email_uid.values()) | set(phone_uid.values())))
        current: dict[str, Contact] = dict(originals)  # uid -> merged state (existing and new)
        created: list[str] = []
        tags_of: dict[str, set[str]] = {}
        for ln in lines:
            c = ln.contact
            ekey = normalize_email_key(c.email) if c.email else None
            by_e = email_uid.get(ekey) if ekey else None
            by_p = phone_uid.get(c.phone) if c.phone else None
            # a uid of this store, or one an earlier line of this batch created: as if
            # that line had been committed in an earlier batch
            target = ln.uid if ln.uid in current else (by_e or by_p)
            if (by_e and by_e != target) or (by_p and by_p != target):
                self.result.skipped.append((ln.lineno, "its email or phone belongs to another contact"))
                continue
            if target is None:
                target = ln.uid or new_uids(1)[0]
                current[target] = Contact(uid=target, **{k: v for k, v in vars(c).items()})
                created.append(target)
            else:
                current[target] = merged(current[target], c)
            if ekey:
                email_uid[ekey] = target
            if c.phone:
                phone_uid[c.phone] = target
            tags_of.setdefault(target, set()).update(ln.tags)
        known_tags = contacts.tags_of(tx, [u for u in tags_of if u in originals])
        creates = [current[u] for u in created]
        updates = [c for u, c in current.items() if u in originals and not _same(c, originals[u])]
        changed_tags = {u for u, t in tags_of.items() if u in originals and not t <= known_tags.get(u, set())}
        contacts.create_many(tx, [NewContact(**{k: v for k, v in vars(c).items() if k != "uid"}) for c in creates],
                             uids=[c.uid for c in creates])
        contacts.update_many(tx, updates)
        contacts.add_tags(tx, [(u, t) for u, tags in tags_of.items() for t in sorted(tags)])
        touched = {c.uid for c in updates} | changed_tags
        self.result.created += len(creates)
        self.result.updated += len(touched)
        self.result.unchanged += len([u for u in current if u in originals and u not in touched])


def import_contacts(storage: SqlStorage, contacts: SqlContactStore, lines: Iterable[bytes | str],
                    batch: int = CHUNK) -> ImportResult:
    """Merge JSON lines into the store (see the module docstring). Each batch commits on
    its own; a batch the database refuses is retried line by line, so only the refused
    line is skipped."""
    result = ImportResult()
    pending: list[_Line] = []

    def commit(lines: list[_Line]) -> None:
        part = ImportResult()  # counted only once its transaction committed
        with storage.transaction() as tx:
            _Batch(tx, contacts, part).run(lines)
        result.created += part.created
        result.updated += part.updated
        result.unchanged += part.unchanged
        result.skipped += part.skipped

    def flush() -> None:
        if not pending:
            return
        try:
            commit(pending)
        except SQLAlchemyError:  # one line the database refuses must not cost the others
            for ln in pending:
                try:
                    commit([ln])
                except SQLAlchemyError as exc:
                    cause = type(getattr(exc, "orig", None) or exc).__name__
                    result.skipped.append((ln.lineno, f"the database refused it ({cause})"))
        pending.clear()

    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            uid, contact, tags = parse_line(line)
        except LineError as exc:
            result.skipped.append((lineno, str(exc)))
            continue
        except RecursionError:  # belt and braces: a parser that recursed too deep
            result.skipped.append((lineno, f"nested deeper than {MAX_DEPTH} levels"))
            continue
        pending.append(_Line(lineno, uid, contact, tags))
        if len(pending) >= batch:
            flush()
    flush()
    return result

