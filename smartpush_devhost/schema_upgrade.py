"""Upgrades of a host database created by an older version (run by ``create_all``).

Tables are created with ``create_all``, which never changes an existing table. The one
change so far that needs more: a contact's identity became ``(store_id, uid)`` (uids
are unique per store, not across stores). A database whose ``sp_contacts`` still has
the host-wide primary key ``uid`` is upgraded in place, automatically, once, at the
first start of the new version; every contact, tag, secret and plugin row is kept
(uids were unique across the host, so they are unique per store too):

- SQLite cannot change a primary key: the table is rebuilt the way SQLite documents
  (new table, copy, drop, rename, indexes) with foreign keys off for that one
  transaction, then ``PRAGMA foreign_key_check``;
- PostgreSQL swaps the constraints in place (``ADD PRIMARY KEY (store_id, uid)``;
  the tags' foreign key now points at it and the old ``(store_id, uid)`` unique
  constraint goes).

Both run in one transaction behind the write lock (``BEGIN IMMEDIATE`` / ``LOCK
TABLE``) and check again inside it, so processes starting together upgrade once; a
failure rolls back and leaves the old schema as it was.
"""

from __future__ import annotations

import logging

from sqlalchemy import MetaData, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.schema import AddConstraint, CreateIndex, CreateTable

from smartpush_devhost.models import contacts_t, stores_t, tags_t

log = logging.getLogger(__name__)

CONTACT_KEY = ["store_id", "uid"]
_OLD_UNIQUE = "uq_sp_contacts_store_uid"
_TAG_FK = "fk_sp_contact_tags_contact"


class SchemaUpgradeError(RuntimeError):
    """The database could not be upgraded; it is left as it was."""


def _contact_key(bind: Engine | Connection) -> list[str]:
    return inspect(bind).get_pk_constraint(contacts_t.name)["constrained_columns"]


def upgrade(engine: Engine) -> bool:
    """Bring an older host schema up to date; returns whether anything changed."""
    if _contact_key(engine) == CONTACT_KEY:
        return False
    log.warning("upgrading the database: contacts become unique per store (store_id, uid)")
    try:
        if engine.dialect.name == "sqlite":
            changed = _rebuild_contacts_sqlite(engine)
        else:
            changed = _swap_contact_key_postgres(engine)
    except Exception as exc:
        raise SchemaUpgradeError(
            f"could not upgrade table {contacts_t.name} to the per-store key (store_id, uid): "
            f"{type(exc).__name__}; the database is unchanged. Back it up, then either retry, or "
            "export each store's contacts with the previous version (`smartpush --store S contacts "
            "export -o S.jsonl`) and import them into a new database (`contacts import S.jsonl`)"
        ) from exc
    if changed:
        log.warning("database upgraded: contacts are keyed by (store_id, uid)")
    return changed


def _scratch() -> MetaData:
    """Copies of the host tables to build DDL from: ``AddConstraint`` marks the constraint
    it is given as not to be created inline, which must never happen to the real ones
    (every later ``create_all`` in this process would leave it out)."""
    scratch = MetaData()
    for table in (stores_t, contacts_t, tags_t):
        table.to_metadata(scratch)
    return scratch


def _rebuild_contacts_sqlite(engine: Engine) -> bool:
    dialect = engine.dialect
    new = contacts_t.to_metadata(_scratch(), name=f"{contacts_t.name}_new")
    columns = ", ".join(c.name for c in contacts_t.columns)
    raw = engine.raw_connection()
    try:
        db = raw.driver_connection  # autocommit mode (see storage): we issue BEGIN ourselves
        # foreign_keys must be off to drop the old table (else its implicit DELETE would
        # cascade to every tag) and can only change outside a transaction
        db.execute("PRAGMA foreign_keys=OFF")
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                pk = sorted((row[5], row[1]) for row in db.execute(f"PRAGMA table_info({contacts_t.name})") if row[5])
                if [name for _, name in pk] == CONTACT_KEY:  # another process did it meanwhile
                    db.execute("COMMIT")
                    return False
                db.execute(str(CreateTable(new).compile(dialect=dialect)))
                db.execute(f"INSERT INTO {new.name} ({columns}) SELECT {columns} FROM {contacts_t.name}")
                db.execute(f"DROP TABLE {contacts_t.name}")
                db.execute(f"ALTER TABLE {new.name} RENAME TO {contacts_t.name}")
                for index in contacts_t.indexes:
                    db.execute(str(CreateIndex(index).compile(dialect=dialect)))
                problems = db.execute("PRAGMA foreign_key_check").fetchall()
                if problems:
                    raise SchemaUpgradeError(f"{len(problems)} rows break a foreign key after the rebuild")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        finally:
            db.execute("PRAGMA foreign_keys=ON")
    finally:
        raw.close()
    return True


def _swap_contact_key_postgres(engine: Engine) -> bool:
    with engine.begin() as conn:
        conn.execute(text(f"LOCK TABLE {contacts_t.name}, {tags_t.name} IN ACCESS EXCLUSIVE MODE"))
        pk = inspect(conn).get_pk_constraint(contacts_t.name)
        if pk["constrained_columns"] == CONTACT_KEY:  # another process did it meanwhile
            return False
        fk = next(c for c in _scratch().tables[tags_t.name].foreign_key_constraints if c.name == _TAG_FK)
        conn.execute(text(f"ALTER TABLE {tags_t.name} DROP CONSTRAINT IF EXISTS {_TAG_FK}"))
        conn.execute(text(f'ALTER TABLE {contacts_t.name} DROP CONSTRAINT "{pk["name"]}"'))
        conn.execute(text(f"ALTER TABLE {contacts_t.name} DROP CONSTRAINT IF EXISTS {_OLD_UNIQUE}"))
        conn.execute(text(f"ALTER TABLE {contacts_t.name} ADD PRIMARY KEY ({', '.join(CONTACT_KEY)})"))
        conn.execute(AddConstraint(fk))
    return True
