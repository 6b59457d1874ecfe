"""The contact store of one merchant store, on SQLAlchemy Core.

Every statement filters on ``store_id``: a :class:`SqlContactStore` can neither read
nor change another store's contacts. Writes are executemany over lists of dicts
(one round trip per batch), which is what makes a page of 100 profiles cost a few
queries instead of hundreds.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, insert, select, update
from sqlalchemy.sql import Select

from hookspecs.fastsql import FastStatement, InListStatement, InsertIgnoringDuplicates, bind_value, dialect_insert
from hookspecs.interfaces import Contact, NewContact, Tx, normalize_email_key
from smartpush_devhost.crypto import Keyring
from smartpush_devhost.ids import new_uids
from smartpush_devhost.models import contacts_t, tags_t, utcnow

CHUNK = 500
"""Max values in one ``IN (...)`` list: far below every backend's parameter limit."""

_SUBSCRIPTION_VALUES = {"subscribed", "unsubscribed", "never_subscribed", None}

_LONG_INT = re.compile(rb"\d{19,}")

# json.dumps() with options builds a new encoder per call; one shared encoder is ~2x faster
_encode_json_std = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

try:  # orjson is ~5x faster on the hot path of every contact write
    import orjson

    def _encode_json_bytes(payload) -> bytes:
        try:
            return orjson.dumps(payload)
        except TypeError:  # e.g. an integer beyond 64 bits: the standard encoder takes it
            return _encode_json_std(payload).encode()

    def _loads(payload: bytes):
        # orjson reads an integer beyond 64 bits as a float: such a payload (the encoder
        # above wrote it with the standard library) is read back by it too, exactly.
        return json.loads(payload) if _LONG_INT.search(payload) else orjson.loads(payload)
except ImportError:  # pragma: no cover
    def _encode_json_bytes(payload) -> bytes:
        return _encode_json_std(payload).encode()

    _loads = json.loads


def _chunks(items: Sequence, size: int = CHUNK):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def contact_aad(store_id: str, uid: str) -> bytes:
    """Associated data binding a contact blob to its row and store."""
    return f"contact:{store_id}:{uid}".encode()


def email_index_value(email: str | None) -> str | None:
    """The normalized email a blind index is computed on."""
    if email is None:
        return None
    key = normalize_email_key(email)
    return key or None


def phone_index_value(phone: str | None) -> str | None:
    """The exact (stripped) E.164 number a blind index is computed on."""
    if phone is None:
        return None
    return phone.strip() or None


class SqlContactStore:
    """Implements :class:`hookspecs.interfaces.ContactStore` for one ``store_id``."""

    def __init__(self, store_id: str, keyring: Keyring):
        self.store_id = store_id
        self.keyring = keyring

    def __repr__(self) -> str:
        return f"SqlContactStore(store_id={self.store_id!r})"

    # ------------------------------------------------------------- encoding
    def _row(self, uid: str, c: NewContact | Contact, now: Any) -> tuple:
        """The column values of a contact (:data:`_ROW_KEYS`): blob + blind indexes + statuses."""
        _check_status(c.email_subscription)
        _check_status(c.sms_subscription)
        payload = {"e": c.email, "p": c.phone, "n": c.name, "c": c.country, "pr": c.properties or {}}
        plaintext = _encode_json_bytes(payload)
        kr = self.keyring
        ev, pv = email_index_value(c.email), phone_index_value(c.phone)
        # a tuple, not a dict: these rows are the bulk of a sync's writes
        return (
            uid,
            kr.active_id,
            kr.blind_index("email", ev) if ev else None,
            kr.blind_index("phone", pv) if pv else None,
            c.email_subscription,
            c.sms_subscription,
            kr.encrypt(plaintext, contact_aad(self.store_id, uid)),
            now,
        )

    def _decode(self, row) -> Contact:
        payload = _loads(self.keyring.decrypt(row.data, contact_aad(self.store_id, row.uid)))
        return Contact(
            uid=row.uid,
            email=payload.get("e"),
            phone=payload.get("p"),
            name=payload.get("n"),
            country=payload.get("c"),
            email_subscription=row.email_subscription,
            sms_subscription=row.sms_subscription,
            properties=payload.get("pr") or {},
        )

    _COLUMNS = (
        contacts_t.c.uid,
        contacts_t.c.data,
        contacts_t.c.email_subscription,
        contacts_t.c.sms_subscription,
    )

    # --------------------------------------------------------------- reads
    def get_many(self, tx: Tx, uids: Sequence[str]) -> dict[str, Contact]:
        """The contacts with these uids (missing uids are absent from the result)."""
        out: dict[str, Contact] = {}
        for chunk in _chunks(list(dict.fromkeys(uids))):
            for row in _GET_MANY.execute(tx, {"store": self.store_id, "uids": chunk}):
                out[row.uid] = self._decode(row)
        return out

    def _find(self, tx: Tx, column, kind: str, values: dict[str, str]) -> dict[str, list[str]]:
        """Uids per given key, where ``values`` maps given key -> normalized value."""
        result: dict[str, list[str]] = {given: [] for given in values}
        by_index: dict[str, list[str]] = defaultdict(list)
        for given, norm in values.items():
            if norm:
                for idx in self.keyring.lookup_indexes(kind, norm):
                    by_index[idx].append(given)
        stmt = _FIND[column.name]
        for chunk in _chunks(list(by_index)):
            for uid, idx in stmt.execute(tx, {"store": self.store_id, "values": chunk}):
                for given in by_index[idx]:
                    if uid not in result[given]:
                        result[given].append(uid)
        for uids in result.values():
            uids.sort()  # uid order is creation order: oldest contact first
        return result

    def find_by_emails(self, tx: Tx, emails: Iterable[str]) -> dict[str, list[str]]:
        """Uids per email (matched on ``normalize_email_key``); every given email is a key."""
        return self._find(tx, contacts_t.c.email_bidx, "email", {e: email_index_value(e) for e in emails})

    def find_by_phones(self, tx: Tx, phones: Iterable[str]) -> dict[str, list[str]]:
        """Uids per exact E.164 phone number; every given number is a key."""
        return self._find(tx, contacts_t.c.phone_bidx, "phone", {p: phone_index_value(p) for p in phones})

    def count(self, tx: Tx) -> int:
        """How many contacts the store holds."""
        stmt = select(func.count()).select_from(contacts_t).where(contacts_t.c.store_id == self.store_id)
        return int(tx.execute(stmt).scalar_one())

    def iter_all(self, tx: Tx, *, batch: int = 1000) -> Iterator[Contact]:
        """Every contact of the store, decrypted, in uid order, streamed in batches."""
        stmt = (
            select(*self._COLUMNS)
            .where(contacts_t.c.store_id == self.store_id)
            .order_by(contacts_t.c.uid)
            .execution_options(yield_per=batch)  # server-side cursor on PostgreSQL
        )
        for row in tx.execute(stmt):
            yield self._decode(row)

    # -------------------------------------------------------------- writes
    def create_many(self, tx: Tx, contacts: Sequence[NewContact], *, uids: Sequence[str | None] | None = None) -> list[str]:
        """Create contacts; returns their new uids, in order.

        ``uids`` (host extension, used by ``contacts import``) gives explicit uids;
        ``None`` entries get a generated one.
        """
        if not contacts:
            return []
        generated = iter(new_uids(len(contacts)))
        if uids is None:
            out = list(generated)
        else:
            if len(uids) != len(contacts):
                raise ValueError("uids and contacts differ in length")
            out = [u if u else next(generated) for u in uids]
        now = bind_value(tx, contacts_t.c.created_at, utcnow())
        extra = (self.store_id, now)  # _INSERT_KEYS after _ROW_KEYS
        rows = [self._row(uid, c, now) + extra for uid, c in zip(out, contacts)]
        for chunk in _chunks(rows):
            _INSERT_CONTACT.executemany_tuples(tx, _INSERT_KEYS, chunk)
        return out

    def update_many(self, tx: Tx, contacts: Sequence[Contact]) -> None:
        """Replace the stored fields and properties of existing contacts.

        Raises :class:`LookupError` (naming no PII) if a uid is not a contact of this store.
        """
        if not contacts:
            return
        now = bind_value(tx, contacts_t.c.updated_at, utcnow())
        extra = (self.store_id,)  # _UPDATE_KEYS after _ROW_KEYS
        rows = [self._row(c.uid, c, now) + extra for c in contacts]
        matched = 0
        for chunk in _chunks(rows):
            matched += _UPDATE_CONTACT.executemany_tuples(tx, _UPDATE_KEYS, chunk).rowcount
        expected = len({c.uid for c in contacts})
        if matched < expected:
            found = set(self.existing(tx, [c.uid for c in contacts]))
            missing = sorted({c.uid for c in contacts} - found)
            if missing:
                raise LookupError(f"{len(missing)} contact(s) not in store {self.store_id}: {missing[:5]}")

    def existing(self, tx: Tx, uids: Sequence[str]) -> list[str]:
        """Which of ``uids`` are contacts of this store (host extension)."""
        out = []
        for chunk in _chunks(list(dict.fromkeys(uids))):
            out.extend(
                tx.execute(
                    select(contacts_t.c.uid).where(
                        and_(contacts_t.c.store_id == self.store_id, contacts_t.c.uid.in_(chunk))
                    )
                ).scalars()
            )
        return out

    # ---------------------------------------------------------------- tags
    def add_tags(self, tx: Tx, pairs: Iterable[tuple[str, str]]) -> int:
        """Add ``(uid, tag)`` pairs; present pairs are ignored. Returns how many were new."""
        store = self.store_id
        rows = [(store, u, t) for u, t in dict.fromkeys(pairs)]
        if not rows:
            return 0
        added = 0
        for chunk in _chunks(rows):
            added += max(_ADD_TAG.executemany_tuples(tx, chunk).rowcount, 0)
        return added

    def add_tags_selected(self, tx: Tx, pairs: Select) -> int:
        """Add the ``(uid, tag)`` pairs the two-column query ``pairs`` selects, in one
        ``INSERT ... SELECT`` (uids of other stores or of no contact are passed over,
        present pairs ignored). Returns how many pairs were new."""
        q = pairs.subquery()
        uid, tag = list(q.c)
        source = (
            select(contacts_t.c.store_id, contacts_t.c.uid, tag)
            .select_from(q.join(contacts_t, and_(contacts_t.c.store_id == self.store_id, contacts_t.c.uid == uid)))
            # a WHERE also keeps SQLite from reading the upsert's ON as the join's
            .where(contacts_t.c.store_id == self.store_id)
        )
        stmt = dialect_insert(tx, tags_t).from_select(["store_id", "contact_uid", "tag"], source).on_conflict_do_nothing()
        # SQLAlchemy keeps the count of an INSERT only when asked (psycopg's is -1 otherwise)
        return max(tx.execute(stmt.execution_options(preserve_rowcount=True)).rowcount, 0)

    def remove_tags(self, tx: Tx, pairs: Iterable[tuple[str, str]]) -> int:
        """Remove ``(uid, tag)`` pairs; absent pairs are ignored. Returns how many were removed."""
        rows = [{"b_uid": u, "b_tag": t} for u, t in dict.fromkeys(pairs)]
        if not rows:
            return 0
        stmt = delete(tags_t).where(
            and_(
                tags_t.c.store_id == self.store_id,
                tags_t.c.contact_uid == bindparam("b_uid"),
                tags_t.c.tag == bindparam("b_tag"),
            )
        )
        removed = 0
        for chunk in _chunks(rows):
            removed += max(tx.execute(stmt, chunk).rowcount, 0)
        return removed

    def rename_tag(self, tx: Tx, old: str, new: str) -> int:
        """Rename a tag on every contact of the store. Returns how many contacts changed."""
        if old == new:
            return 0
        mine = tags_t.c.store_id == self.store_id
        changed = tx.execute(select(func.count()).select_from(tags_t).where(and_(mine, tags_t.c.tag == old))).scalar_one()
        if not changed:
            return 0
        # contacts that already carry ``new`` just lose ``old`` (the pair must stay unique)
        has_new = select(tags_t.c.contact_uid).where(and_(mine, tags_t.c.tag == new)).scalar_subquery()
        tx.execute(delete(tags_t).where(and_(mine, tags_t.c.tag == old, tags_t.c.contact_uid.in_(has_new))))
        tx.execute(update(tags_t).where(and_(mine, tags_t.c.tag == old)).values(tag=new))
        return int(changed)

    def delete_tag(self, tx: Tx, tag: str) -> int:
        """Remove a tag from every contact of the store; returns how many contacts lost it."""
        result = tx.execute(delete(tags_t).where(and_(tags_t.c.store_id == self.store_id, tags_t.c.tag == tag)))
        return max(result.rowcount, 0)

    def tags_of(self, tx: Tx, uids: Sequence[str]) -> dict[str, set[str]]:
        """Tags per uid (every uid given is a key)."""
        out: dict[str, set[str]] = {u: set() for u in uids}
        for chunk in _chunks(list(out)):
            for uid, tag in _TAGS_OF.execute(tx, {"store": self.store_id, "uids": chunk}):
                out[uid].add(tag)
        return out

    # --------------------------------------------------------- host extras
    def tag_counts(self, tx: Tx) -> dict[str, int]:
        """Contacts per tag (host reporting, not part of the plugin interface)."""
        stmt = (
            select(tags_t.c.tag, func.count())
            .where(tags_t.c.store_id == self.store_id)
            .group_by(tags_t.c.tag)
            .order_by(tags_t.c.tag)
        )
        return {tag: int(n) for tag, n in tx.execute(stmt)}

    def subscription_counts(self, tx: Tx) -> dict[str, dict[str, int]]:
        """Contacts per email / sms subscription status (``unknown`` for NULL)."""
        out: dict[str, dict[str, int]] = {}
        for channel, col in (("email", contacts_t.c.email_subscription), ("sms", contacts_t.c.sms_subscription)):
            stmt = select(col, func.count()).where(contacts_t.c.store_id == self.store_id).group_by(col)
            out[channel] = {(status or "unknown"): int(n) for status, n in tx.execute(stmt)}
        return out


# Read statements built once (building one costs more than running it on a 100-row page)
# and rendered once per IN-list length.
_GET_MANY = InListStatement(
    select(*SqlContactStore._COLUMNS).where(
        and_(contacts_t.c.store_id == bindparam("store"), contacts_t.c.uid.in_(bindparam("uids", expanding=True)))
    ),
    "uids",
)
# No ORDER BY: it would tempt SQLite into walking the (store_id, uid) index instead of
# the blind index one; _find sorts the results itself.
_FIND = {
    column.name: InListStatement(
        select(contacts_t.c.uid, column).where(
            and_(contacts_t.c.store_id == bindparam("store"), column.in_(bindparam("values", expanding=True)))
        ),
        "values",
    )
    for column in (contacts_t.c.email_bidx, contacts_t.c.phone_bidx)
}
_TAGS_OF = InListStatement(
    select(tags_t.c.contact_uid, tags_t.c.tag).where(
        and_(tags_t.c.store_id == bindparam("store"), tags_t.c.contact_uid.in_(bindparam("uids", expanding=True)))
    ),
    "uids",
)

_CONTACT_COLUMNS = [
    "uid", "store_id", "key_id", "email_bidx", "phone_bidx",
    "email_subscription", "sms_subscription", "data", "created_at", "updated_at",
]
_ROW_KEYS = ("uid", "key_id", "email_bidx", "phone_bidx", "email_subscription", "sms_subscription", "data", "updated_at")
"""The values :meth:`SqlContactStore._row` returns, in order."""
_INSERT_KEYS = (*_ROW_KEYS, "store_id", "created_at")
_UPDATE_KEYS = tuple(name + "_" for name in (*_ROW_KEYS, "store_id"))
_INSERT_CONTACT = FastStatement(insert(contacts_t), _CONTACT_COLUMNS)
_UPDATE_CONTACT = FastStatement(
    # bind names must differ from column names in UPDATE ... SET; rows carry column keys
    update(contacts_t)
    .where(and_(contacts_t.c.store_id == bindparam("store_id_"), contacts_t.c.uid == bindparam("uid_")))
    .values({name: bindparam(name + "_") for name in _CONTACT_COLUMNS[2:] if name != "created_at"})
)


_TAG_KEYS = ("store_id", "contact_uid", "tag")
_ADD_TAG = InsertIgnoringDuplicates(tags_t, _TAG_KEYS)


def _check_status(value) -> None:
    if value not in _SUBSCRIPTION_VALUES:
        raise ValueError("invalid subscription status")
