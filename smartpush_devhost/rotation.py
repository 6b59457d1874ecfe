"""Master key rotation: new active key, re-encrypt everything, retire the old key.

Each batch (decrypt under the old key, encrypt under the new one, recompute the
blind indexes) commits in its own transaction, so a crash loses nothing: the old
key stays ``previous`` (still decrypting and searchable) until every row has moved,
and running the rotation again finishes the job. Lookups search under active and
previous keys meanwhile, so they stay exact during the rotation.

Run it while no sync is running: another process keeps its in-memory keyring and
would find rows indexed under the new key only after restarting.
"""

from __future__ import annotations

import fcntl
import os
import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import and_, bindparam, func, select, tuple_, update

from smartpush_devhost.contacts import contact_aad, email_index_value, phone_index_value
from smartpush_devhost.crypto import (
    ACTIVE,
    PREVIOUS,
    RETIRED,
    CryptoError,
    KeyFile,
    Keyring,
    MasterKey,
    generate_key_material,
    key_file_path,
    _now,
)
from smartpush_devhost.models import contacts_t, secrets_t
from smartpush_devhost.secrets import secret_aad
from smartpush_devhost.storage import SqlStorage

if TYPE_CHECKING:  # pragma: no cover
    from smartpush_devhost.host import DevHost

log = logging.getLogger(__name__)


@dataclass
class RotationReport:
    """Key ids and counts only."""

    new_key_id: str
    retired_key_ids: list[str] = field(default_factory=list)
    contacts_reencrypted: int = 0
    secrets_reencrypted: int = 0


@contextmanager
def _file_lock(path: Path):
    """An exclusive advisory lock: two rotations never interleave."""
    with open(os.open(path, os.O_RDWR | os.O_CREAT, 0o600), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def reencrypt_contacts(storage: SqlStorage, keyring: Keyring, batch_size: int = 500) -> int:
    """Move every contact not under the active key to it (blob and blind indexes)."""
    active = keyring.active_id
    done = 0
    stmt = (
        update(contacts_t)
        .where(
            and_(
                contacts_t.c.store_id == bindparam("b_store"),
                contacts_t.c.uid == bindparam("b_uid"),
                contacts_t.c.key_id == bindparam("b_old"),
            )
        )
        .values(
            key_id=active,
            data=bindparam("b_data"),
            email_bidx=bindparam("b_email"),
            phone_bidx=bindparam("b_phone"),
        )
    )
    after = ("", "")  # (store_id, uid): a contact's identity; the same uid may live in two stores
    while True:
        with storage.transaction() as tx:
            rows = tx.execute(
                select(contacts_t.c.uid, contacts_t.c.store_id, contacts_t.c.key_id, contacts_t.c.data)
                .where(and_(contacts_t.c.key_id != active, tuple_(contacts_t.c.store_id, contacts_t.c.uid) > after))
                .order_by(contacts_t.c.store_id, contacts_t.c.uid)
                .limit(batch_size)
            ).all()
            if not rows:
                return done
            params = []
            for row in rows:
                aad = contact_aad(row.store_id, row.uid)
                plaintext = keyring.decrypt(row.data, aad)
                payload = json.loads(plaintext)
                ev, pv = email_index_value(payload.get("e")), phone_index_value(payload.get("p"))
                params.append(
                    {
                        "b_store": row.store_id,
                        "b_uid": row.uid,
                        "b_old": row.key_id,
                        "b_data": keyring.encrypt(plaintext, aad),
                        "b_email": keyring.blind_index("email", ev) if ev else None,
                        "b_phone": keyring.blind_index("phone", pv) if pv else None,
                    }
                )
            tx.execute(stmt, params)
            done += len(rows)
            after = (rows[-1].store_id, rows[-1].uid)  # keyset pagination: a row failing to move can't loop forever
        log.info("re-encrypted %d contacts", done)


def reencrypt_secrets(storage: SqlStorage, keyring: Keyring) -> int:
    """Move every secret to the active key (secrets are few: one transaction)."""
    active = keyring.active_id
    with storage.transaction() as tx:
        rows = tx.execute(
            select(secrets_t.c.store_id, secrets_t.c.name, secrets_t.c.key_id, secrets_t.c.value).where(
                secrets_t.c.key_id != active
            )
        ).all()
        for row in rows:
            aad = secret_aad(row.store_id, row.name)
            blob = keyring.encrypt(keyring.decrypt(row.value, aad), aad)
            tx.execute(
                update(secrets_t)
                .where(and_(secrets_t.c.store_id == row.store_id, secrets_t.c.name == row.name))
                .values(key_id=active, value=blob)
            )
    return len(rows)


def remaining(storage: SqlStorage, keyring: Keyring) -> int:
    """Rows (contacts and secrets) not yet under the active key."""
    active = keyring.active_id
    with storage.transaction(readonly=True) as tx:
        return sum(
            tx.execute(select(func.count()).select_from(t).where(t.c.key_id != active)).scalar_one()
            for t in (contacts_t, secrets_t)
        )


def reencrypt_all(storage: SqlStorage, keyring: Keyring, batch_size: int = 500) -> tuple[int, int]:
    """Re-encrypt contacts and secrets under the active key; returns both counts.

    Repeats (up to three passes) while rows written concurrently by a process still
    using the old key remain, and raises :class:`CryptoError` if some still do.
    """
    contacts = secrets = 0
    for _ in range(3):
        contacts += reencrypt_contacts(storage, keyring, batch_size)
        secrets += reencrypt_secrets(storage, keyring)
        left = remaining(storage, keyring)
        if not left:
            return contacts, secrets
    raise CryptoError(f"{left} rows are still written under an old key; stop other writers and run again")


def rotate_keys(host: "DevHost", *, batch_size: int = 500) -> RotationReport:
    """Add a new active key to the key file, re-encrypt everything, retire old keys.

    Keys from ``SMARTPUSH_MASTER_KEY`` cannot be rewritten by the host: put the new
    key first in that variable (old keys after it) and call
    :func:`reencrypt_all` (``smartpush keys reencrypt``) instead.
    """
    keyring = host.keyring
    if keyring.source != "file":
        raise CryptoError(
            "master keys come from SMARTPUSH_MASTER_KEY: prepend a new key to it "
            "(keep the old one after a comma) and run `smartpush keys reencrypt`"
        )
    keyfile = KeyFile(key_file_path(host.data_dir))
    with _file_lock(keyfile.path.with_name(keyfile.path.name + ".lock")):
        keys = keyfile.load()
        new = MasterKey(generate_key_material(), status=ACTIVE, created=_now())
        for k in keys:
            if k.status == ACTIVE:
                k.status = PREVIOUS
        keyfile.write([new, *keys])
        keyring.reload()
        log.info("new active master key %s", new.key_id)
        contacts, secrets = reencrypt_all(host.storage, keyring, batch_size)
        retired = []
        keys = keyfile.load()
        for k in keys:
            if k.status == PREVIOUS:
                k.status = RETIRED
                retired.append(k.key_id)
        # Retired keys stay in the file (decrypt only) so a backup taken before the
        # rotation can still be read; they are no longer used or searched.
        keyfile.write(keys)
        keyring.reload()
    return RotationReport(new.key_id, retired, contacts, secrets)
