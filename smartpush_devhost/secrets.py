"""Per-store secrets (API keys), AES-GCM encrypted under the host keyring."""

from __future__ import annotations

from sqlalchemy import and_, delete, select

from hookspecs.fastsql import dialect_insert
from smartpush_devhost.crypto import Keyring
from smartpush_devhost.models import secrets_t, utcnow
from smartpush_devhost.storage import SqlStorage


def secret_aad(store_id: str, name: str) -> bytes:
    """Associated data binding a secret to its store and name."""
    return f"secret:{store_id}:{name}".encode()


class SqlSecretStore:
    """Implements :class:`hookspecs.interfaces.SecretStore` for one ``store_id``.

    Values never appear in reprs, logs or exception messages.
    """

    def __init__(self, storage: SqlStorage, keyring: Keyring, store_id: str):
        self.storage = storage
        self.keyring = keyring
        self.store_id = store_id

    def __repr__(self) -> str:
        return f"SqlSecretStore(store_id={self.store_id!r})"

    def put(self, name: str, value: str) -> None:
        """Store or replace a secret for this store."""
        blob = self.keyring.encrypt(value.encode(), secret_aad(self.store_id, name))
        row = {
            "store_id": self.store_id,
            "name": name,
            "key_id": self.keyring.active_id,
            "value": blob,
            "updated_at": utcnow(),
        }
        with self.storage.transaction() as tx:
            stmt = dialect_insert(tx, secrets_t).values(**row)
            stmt = stmt.on_conflict_do_update(
                index_elements=[secrets_t.c.store_id, secrets_t.c.name],
                set_={"key_id": row["key_id"], "value": blob, "updated_at": row["updated_at"]},
            )
            tx.execute(stmt)

    def get(self, name: str) -> str | None:
        """The secret's plain value, ``None`` when absent."""
        with self.storage.transaction(readonly=True) as tx:
            blob = tx.execute(
                select(secrets_t.c.value).where(
                    and_(secrets_t.c.store_id == self.store_id, secrets_t.c.name == name)
                )
            ).scalar_one_or_none()
        if blob is None:
            return None
        return self.keyring.decrypt(blob, secret_aad(self.store_id, name)).decode()

    def delete(self, name: str) -> None:
        """Delete the secret (no error if absent)."""
        with self.storage.transaction() as tx:
            tx.execute(
                delete(secrets_t).where(and_(secrets_t.c.store_id == self.store_id, secrets_t.c.name == name))
            )
