"""The development host's own tables (prefix ``sp_``), as SQLModel models.

Hot paths use the Core :class:`~sqlalchemy.Table` objects exported at the bottom
(``contacts_t`` ...) with ``insert()``/``update()`` executemany, never ORM sessions.

PII never sits in a plain column: a contact's email, phone, name, country and
properties live in one AES-GCM blob (``data``); lookups use keyed blind indexes
(``email_bidx``, ``phone_bidx``). ``key_id`` names the master key that produced both,
so key rotation can find the rows it still has to rewrite.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Optional

from sqlalchemy import (
    Column,
    DateTime,
    ForeignKeyConstraint,
    Index,
    LargeBinary,
    Text,
)
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC datetime on every backend.

    SQLite has no timezone type and returns naive values; storing naive UTC and
    re-attaching ``timezone.utc`` on the way out gives the same aware values on
    SQLite and PostgreSQL, and makes equality comparisons (job claims) exact.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use an aware UTC datetime")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, str):  # defensive: raw SQLite text
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


def _utc_column(nullable: bool = True, index: bool = False) -> Column:
    return Column(UTCDateTime(), nullable=nullable, index=index)


class SpStore(SQLModel, table=True):
    """A merchant store; every other host row belongs to exactly one."""

    __tablename__ = "sp_stores"

    store_id: str = Field(primary_key=True, max_length=200)
    created_at: Optional[datetime] = Field(default=None, sa_column=_utc_column())


class SpContact(SQLModel, table=True):
    """One contact: blind indexes and statuses in clear, everything else encrypted."""

    __tablename__ = "sp_contacts"
    __table_args__ = (
        # A contact is (store_id, uid): uids are unique per store, not across stores, so
        # one store's export imports into another keeping its uids. The primary key is
        # the target of the tag FK: a tag row can only point at a contact of its own
        # store, so isolation holds even against a buggy caller.
        Index("ix_sp_contacts_email", "store_id", "email_bidx"),
        Index("ix_sp_contacts_phone", "store_id", "phone_bidx"),
        ForeignKeyConstraint(["store_id"], ["sp_stores.store_id"], name="fk_sp_contacts_store"),
        # A rowid table on purpose: a contact row (its encrypted blob) is ~1-2 KB, and a
        # WITHOUT ROWID table keeps at most ~1 KB of a row in its 4 KB page, spilling the
        # rest to an overflow page of its own: 4.5 KB on disk per contact, all of it
        # written to the WAL and again at checkpoints (SQLite advises WITHOUT ROWID only
        # for rows under ~1/20 of a page).
    )

    store_id: str = Field(primary_key=True, max_length=200)
    uid: str = Field(primary_key=True, max_length=64)
    key_id: str = Field(max_length=16)
    email_bidx: Optional[str] = Field(default=None, max_length=64)
    phone_bidx: Optional[str] = Field(default=None, max_length=64)
    email_subscription: Optional[str] = Field(default=None, max_length=20)
    sms_subscription: Optional[str] = Field(default=None, max_length=20)
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: Optional[datetime] = Field(default=None, sa_column=_utc_column())
    updated_at: Optional[datetime] = Field(default=None, sa_column=_utc_column())


class SpContactTag(SQLModel, table=True):
    """A tag on a contact; the composite primary key makes pairs unique."""

    __tablename__ = "sp_contact_tags"
    __table_args__ = (
        Index("ix_sp_contact_tags_tag", "store_id", "tag"),
        ForeignKeyConstraint(
            ["store_id", "contact_uid"],
            ["sp_contacts.store_id", "sp_contacts.uid"],
            ondelete="CASCADE",
            name="fk_sp_contact_tags_contact",
        ),
        # Small rows that are all key: on SQLite the primary key is the table itself
        # instead of a rowid table plus an index of the key, one B-tree fewer per insert
        # (a sync writes ~3.4 tags per profile). Other databases ignore the option.
        {"sqlite_with_rowid": False},
    )

    store_id: str = Field(primary_key=True, max_length=200)
    contact_uid: str = Field(primary_key=True, max_length=64)
    # Unbounded: a tag is kla_<kind>_ + a Klaviyo group name, and Klaviyo promises no
    # length for names (a 275-character segment name broke varchar(255) on PostgreSQL).
    tag: str = Field(sa_column=Column(Text, primary_key=True))


class SpSecret(SQLModel, table=True):
    """An encrypted per-store secret (API keys)."""

    __tablename__ = "sp_secrets"
    __table_args__ = (
        ForeignKeyConstraint(["store_id"], ["sp_stores.store_id"], name="fk_sp_secrets_store"),
    )

    store_id: str = Field(primary_key=True, max_length=200)
    name: str = Field(primary_key=True, max_length=200)
    key_id: str = Field(max_length=16)
    value: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    updated_at: Optional[datetime] = Field(default=None, sa_column=_utc_column())


class SpJob(SQLModel, table=True):
    """A recurring sync job of one integration in one store."""

    __tablename__ = "sp_jobs"
    __table_args__ = (
        ForeignKeyConstraint(["store_id"], ["sp_stores.store_id"], name="fk_sp_jobs_store"),
    )

    store_id: str = Field(primary_key=True, max_length=200)
    integration: str = Field(primary_key=True, max_length=100)
    every_seconds: int
    next_run_at: datetime = Field(sa_column=_utc_column(nullable=False, index=True))
    last_run_at: Optional[datetime] = Field(default=None, sa_column=_utc_column())
    version: int = 0
    """Bumped by every claim and reschedule: the compare-and-set token of a claim."""
    claimed_by: Optional[str] = Field(default=None, max_length=200)
    last_outcome: Optional[str] = Field(default=None, max_length=40)


class SpPlan(SQLModel, table=True):
    """The store's plan; absent row means the host's default plan."""

    __tablename__ = "sp_plans"
    __table_args__ = (
        ForeignKeyConstraint(["store_id"], ["sp_stores.store_id"], name="fk_sp_plans_store"),
    )

    store_id: str = Field(primary_key=True, max_length=200)
    plan: str = Field(max_length=40)
    updated_at: Optional[datetime] = Field(default=None, sa_column=_utc_column())


stores_t = SpStore.__table__
contacts_t = SpContact.__table__
tags_t = SpContactTag.__table__
secrets_t = SpSecret.__table__
jobs_t = SpJob.__table__
plans_t = SpPlan.__table__

HOST_TABLES = [stores_t, contacts_t, tags_t, secrets_t, jobs_t, plans_t]


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)
