"""The plugin's own tables, in the host's database.

Everything the plugin needs to resume, diff and report lives here, keyed by
``store_id`` so stores stay isolated. Rows are written in the same transaction as
the contacts they describe (see :mod:`smartpush_plugin_klaviyo.writer`), so a
crash leaves both or neither.

No table holds PII: Klaviyo ids, group names, cursors (``links.next`` URLs carry
only filters on timestamps and opaque cursors), counts and reasons.
"""

from __future__ import annotations

from datetime import datetime
from typing import Optional

from sqlalchemy import Index
from sqlmodel import Field, SQLModel


class KlaviyoIntegration(SQLModel, table=True):
    """One row per store: installation, status, watermarks."""

    __tablename__ = "klaviyo_integration"

    store_id: str = Field(primary_key=True, max_length=200)
    installed: bool = False
    state: str = "pending_integration"
    pause_reason: Optional[str] = None
    pause_detail: Optional[str] = None
    epoch: int = 0
    """Bumped by uninstall: a running sync that sees another epoch stops at once."""
    phase: Optional[str] = None
    current_run_id: Optional[str] = None
    run_seq: int = 0
    last_sync_started_at: Optional[datetime] = None
    last_success_at: Optional[datetime] = None
    profiles_watermark: Optional[datetime] = None
    """Every profile updated before this (Klaviyo's clock) has been imported."""
    consecutive_errors: int = 0
    counts_json: str = "{}"
    installed_at: Optional[datetime] = None
    progress_json: Optional[str] = None
    """The running sync's progress (:class:`hookspecs.types.SyncProgress` as JSON)."""
    sweep_cycle: Optional[int] = None
    """The rolling profile sweep (daily runs): which pass over the account this is."""
    sweep_position: Optional[str] = None
    """Where the sweep's next portion starts (a ``created`` value; ``None``: at the start)."""


class KlaviyoRun(SQLModel, table=True):
    """One sync run; an unfinished run is resumed by the next sync call."""

    __tablename__ = "klaviyo_run"

    store_id: str = Field(primary_key=True, max_length=200)
    run_id: str = Field(primary_key=True, max_length=64)
    seq: int = 0
    mode: str = "full"
    started_at: Optional[datetime] = None
    klaviyo_start: Optional[datetime] = None
    """Klaviyo's clock (``Date`` header) when the run started: the next watermark."""
    profiles_since: Optional[datetime] = None
    """Incremental runs: profiles updated after this are fetched."""
    finished_at: Optional[datetime] = None
    outcome: Optional[str] = None
    phase: Optional[str] = None
    report_json: str = "{}"


class KlaviyoStream(SQLModel, table=True):
    """A resumable cursor: one slice of profiles or of one group's members."""

    __tablename__ = "klaviyo_stream"

    store_id: str = Field(primary_key=True, max_length=200)
    run_id: str = Field(primary_key=True, max_length=64)
    key: str = Field(primary_key=True, max_length=200)
    kind: str = "profiles"
    group_id: Optional[str] = None
    lo: Optional[str] = None
    hi: Optional[str] = None
    next_url: Optional[str] = None
    last_value: Optional[str] = None
    started: bool = False
    done: bool = False
    pages: int = 0
    records: int = 0


class KlaviyoProfileMap(SQLModel, table=True):
    """Klaviyo profile id -> SmartPush contact uid (the ID mapping)."""

    __tablename__ = "klaviyo_profile_map"
    __table_args__ = (
        Index("ix_klaviyo_profile_map_uid", "store_id", "contact_uid"),
        # On SQLite the table is its primary key's B-tree: a row (~150 bytes) is small
        # enough, and each profile mapped updates one B-tree fewer. Others ignore it.
        {"sqlite_with_rowid": False},
    )

    store_id: str = Field(primary_key=True, max_length=200)
    klaviyo_id: str = Field(primary_key=True, max_length=64)
    contact_uid: str = Field(max_length=64)
    is_primary: bool = True
    owned_fields: str = ""
    """Comma-separated standard fields this plugin filled and may therefore update."""
    profile_updated: Optional[str] = None
    last_seen_run: Optional[str] = None
    created: Optional[str] = None
    """The profile's ``created`` (fixed-width :func:`timeutil.format_iso`, so string order is time order): the rolling sweep covers ranges of it."""


class KlaviyoGroup(SQLModel, table=True):
    """A Klaviyo list or segment and the tag it became."""

    __tablename__ = "klaviyo_group"

    store_id: str = Field(primary_key=True, max_length=200)
    group_id: str = Field(primary_key=True, max_length=64)
    kind: str = "list"
    name: Optional[str] = None
    tag: str = ""
    created: Optional[str] = None
    updated: Optional[str] = None
    is_active: bool = True
    last_seen_run: Optional[str] = None
    scanned_gen: int = 0
    """The run sequence of the last complete membership scan (0: never)."""
    checked_run: Optional[str] = None
    """The run that last verified this group's membership (scan or count check)."""
    member_count: int = 0
    tags_deferred: Optional[bool] = None
    """Members of this group may still lack its tag: the group held no members when the
    run began, so its member pages were stored without tagging anyone and the run tags
    them all with one statement when its reading ends (the next run does, if this one
    stopped first). ``None``/``False``: every mapped member carries the tag."""


class KlaviyoMembership(SQLModel, table=True):
    """Which profiles are members of which group, as last seen."""

    __tablename__ = "klaviyo_membership"
    __table_args__ = (
        Index("ix_klaviyo_membership_profile", "store_id", "klaviyo_id", "group_id"),
        # All key: on SQLite the table is its primary key's B-tree (no rowid table beside
        # it), one B-tree fewer per membership written. Other databases ignore the option.
        {"sqlite_with_rowid": False},
    )

    store_id: str = Field(primary_key=True, max_length=200)
    group_id: str = Field(primary_key=True, max_length=64)
    klaviyo_id: str = Field(primary_key=True, max_length=64)
    seen_gen: int = 0


class KlaviyoSkipped(SQLModel, table=True):
    """A profile that could not be imported, with a reason (no PII)."""

    __tablename__ = "klaviyo_skipped"

    store_id: str = Field(primary_key=True, max_length=200)
    klaviyo_id: str = Field(primary_key=True, max_length=64)
    reason: str = ""
    run_id: Optional[str] = None
    seen_at: Optional[datetime] = None


class KlaviyoEvent(SQLModel, table=True):
    """Things a merchant should know that are not skips: duplicate emails, tag collisions."""

    __tablename__ = "klaviyo_event"

    id: Optional[int] = Field(default=None, primary_key=True)
    store_id: str = Field(max_length=200, index=True)
    run_id: Optional[str] = None
    kind: str = ""
    detail: str = ""
    at: Optional[datetime] = None


class KlaviyoLease(SQLModel, table=True):
    """Who runs the store's sync right now; expires so a crashed worker frees it."""

    __tablename__ = "klaviyo_lease"

    store_id: str = Field(primary_key=True, max_length=200)
    owner: str = Field(max_length=200)
    expires_at: datetime


ALL_TABLES = [
    KlaviyoIntegration.__table__,
    KlaviyoRun.__table__,
    KlaviyoStream.__table__,
    KlaviyoProfileMap.__table__,
    KlaviyoGroup.__table__,
    KlaviyoMembership.__table__,
    KlaviyoSkipped.__table__,
    KlaviyoEvent.__table__,
    KlaviyoLease.__table__,
]

integration_t = KlaviyoIntegration.__table__
run_t = KlaviyoRun.__table__
stream_t = KlaviyoStream.__table__
profile_map_t = KlaviyoProfileMap.__table__
group_t = KlaviyoGroup.__table__
membership_t = KlaviyoMembership.__table__
skipped_t = KlaviyoSkipped.__table__
event_t = KlaviyoEvent.__table__
lease_t = KlaviyoLease.__table__


def create_tables(engine) -> None:
    """Create the plugin's tables if they do not exist, and add the nullable columns a
    newer version introduced to tables an older one created (idempotent)."""
    SQLModel.metadata.create_all(engine, tables=ALL_TABLES)
    _add_missing_columns(engine)


def _add_missing_columns(engine) -> None:
    from sqlalchemy import inspect, text

    inspector = inspect(engine)
    statements = []
    for table in ALL_TABLES:
        have = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in have and column.nullable:
                kind = column.type.compile(dialect=engine.dialect)
                statements.append(f'ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}')
    if statements:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(text(statement))
