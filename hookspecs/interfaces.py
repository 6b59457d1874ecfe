"""Host-side interfaces a plugin may use.

The host passes a :class:`HostContext` to every hook call. It is bound to one
merchant store: every object reachable from it reads and writes that store only,
so a plugin cannot touch another store's contacts, secrets or jobs by mistake.

Everything that writes takes a transaction (``tx``) obtained from
:meth:`Storage.transaction`, so a plugin can commit contacts together with its own
bookkeeping (checkpoints, id mappings) atomically: a crash leaves either both or
neither.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from hookspecs.types import SubscriptionStatus

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.sql import Select

    Tx = Connection
    """A SQLAlchemy connection inside an open transaction, from :meth:`Storage.transaction`."""


def __getattr__(name: str):
    # ``Tx`` is imported lazily: a process that only maps profiles (the sync's helper
    # processes) never loads SQLAlchemy, which is a third of its memory.
    if name == "Tx":
        from sqlalchemy.engine import Connection

        return Connection
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class Contact:
    """A SmartPush contact as the host stores it (values decrypted).

    ``email``, ``phone`` and ``country`` are standard fields; ``properties`` holds
    custom properties (plugins prefix theirs, e.g. ``kla_``). Values are JSON types.
    """

    uid: str
    email: str | None = None
    phone: str | None = None
    """E.164 phone number used for identity matching."""
    name: str | None = None
    country: str | None = None
    email_subscription: SubscriptionStatus | None = None
    sms_subscription: SubscriptionStatus | None = None
    properties: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # never leak PII through logs or tracebacks
        return f"Contact(uid={self.uid!r}, properties={len(self.properties)} keys)"


@dataclass
class NewContact:
    """A contact to create; the host assigns its :attr:`Contact.uid`."""

    email: str | None = None
    phone: str | None = None
    name: str | None = None
    country: str | None = None
    email_subscription: SubscriptionStatus | None = None
    sms_subscription: SubscriptionStatus | None = None
    properties: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"NewContact(properties={len(self.properties)} keys)"


def normalize_email_key(email: str) -> str:
    """The form of an email address used for matching: trimmed and lowercased."""
    return email.strip().lower()


@runtime_checkable
class Storage(Protocol):
    """The host's database. Plugins may create their own tables in it."""

    engine: Engine

    def transaction(self, *, readonly: bool = False) -> AbstractContextManager[Tx]:
        """Open a transaction; it commits when the block exits normally, else rolls back.

        ``readonly=True`` promises not to write, so the host need not take a write lock
        (SQLite) and readers never wait for a writer.
        """


@runtime_checkable
class ContactStore(Protocol):
    """The store's contacts. Batch methods, so a page of 100 profiles is a few queries.

    Lookups by email or phone work on keyed blind indexes: the host never needs to
    decrypt the table to find a contact.

    A uid names a contact within its store only: another store may hold the same uid
    (a store's export imports into another keeping its uids), so a plugin keys what
    it keeps about contacts by ``(store_id, uid)``. Every method sees this store's
    contacts only; a uid of another store is simply not found here.
    """

    def get_many(self, tx: Tx, uids: Sequence[str]) -> dict[str, Contact]:
        """The contacts with these uids (missing uids are absent from the result)."""

    def find_by_emails(self, tx: Tx, emails: Iterable[str]) -> dict[str, list[str]]:
        """Uids per email, matched on :func:`normalize_email_key`; keys are the keys given."""

    def find_by_phones(self, tx: Tx, phones: Iterable[str]) -> dict[str, list[str]]:
        """Uids per E.164 phone number; keys are the numbers given."""

    def create_many(self, tx: Tx, contacts: Sequence[NewContact]) -> list[str]:
        """Create contacts; returns their new uids, in order."""

    def update_many(self, tx: Tx, contacts: Sequence[Contact]) -> None:
        """Replace the stored fields and properties of existing contacts."""

    def add_tags(self, tx: Tx, pairs: Iterable[tuple[str, str]]) -> int:
        """Add ``(uid, tag)`` pairs; already present pairs are ignored. Returns how many were new."""

    def add_tags_selected(self, tx: Tx, pairs: Select) -> int:
        """Add the ``(uid, tag)`` pairs a query selects, in one statement run by the database.

        ``pairs`` is a ``SELECT`` of two columns, a uid and a tag, over tables of the same
        database (a plugin's own), run in ``tx``. Uids that are not contacts of this store
        are passed over and present pairs are ignored. Returns how many pairs were new.
        For bulk tagging: no row travels through Python.
        """

    def remove_tags(self, tx: Tx, pairs: Iterable[tuple[str, str]]) -> int:
        """Remove ``(uid, tag)`` pairs; absent pairs are ignored. Returns how many were removed."""

    def rename_tag(self, tx: Tx, old: str, new: str) -> int:
        """Rename a tag on every contact of the store. Returns how many contacts changed."""

    def delete_tag(self, tx: Tx, tag: str) -> int:
        """Remove a tag from every contact of the store."""

    def tags_of(self, tx: Tx, uids: Sequence[str]) -> dict[str, set[str]]:
        """Tags per uid (every uid given is a key)."""

    def count(self, tx: Tx) -> int:
        """How many contacts the store holds."""

    def iter_all(self, tx: Tx) -> Iterator[Contact]:
        """Every contact of the store, decrypted, in uid order (streamed)."""


@runtime_checkable
class Scheduler(Protocol):
    """Recurring jobs. The host calls ``smartpush_sync`` when a job is due."""

    def schedule(self, integration: str, *, every: timedelta, first_run: datetime | None = None) -> None:
        """Run the integration's incremental sync every ``every`` for this store (idempotent)."""

    def unschedule(self, integration: str) -> None:
        """Remove the integration's job for this store (a running sync is not killed by this)."""

    def next_run(self, integration: str) -> datetime | None:
        """When the job runs next, ``None`` when not scheduled."""


@runtime_checkable
class Plan(Protocol):
    """The merchant's plan."""

    def allows(self, feature: str) -> bool:
        """Whether the store's current plan includes ``feature`` (e.g. ``"klaviyo_sync"``)."""


@runtime_checkable
class SecretStore(Protocol):
    """Secrets (API keys) encrypted at rest under a host-managed key that can rotate."""

    def put(self, name: str, value: str) -> None:
        """Store or replace a secret for this store."""

    def get(self, name: str) -> str | None:
        """The secret's plain value, ``None`` when absent."""

    def delete(self, name: str) -> None:
        """Delete the secret (no error if absent)."""


@dataclass
class HostContext:
    """What the host hands a plugin for one store.

    ``settings`` carries host configuration a plugin may read (the development host
    puts ``KLAVIYO_BASE_URL`` there); a plugin must treat absent keys as defaults.

    ``stop_requested`` is set by the host when it is shutting down (Ctrl-C, SIGTERM,
    a worker told to stop). A running sync notices it within a second, keeps its
    checkpoints and returns ``outcome="stopped"``; the next call resumes. ``None``:
    this host never asks (the run goes on until it completes, pauses or is cancelled).
    """

    store_id: str
    storage: Storage
    contacts: ContactStore
    scheduler: Scheduler
    plan: Plan
    secrets: SecretStore
    settings: Mapping[str, str] = field(default_factory=dict)
    stop_requested: threading.Event | None = field(default=None, compare=False)

    def __repr__(self) -> str:
        return f"HostContext(store_id={self.store_id!r})"


@runtime_checkable
class HostProvider(Protocol):
    """What a host puts in ``click.Context.obj`` for plugin commands.

    A command added through ``smartpush_register_commands`` calls
    ``click.get_current_context().obj.host_context()`` to get the store selected on the
    command line (``--store``).
    """

    def host_context(self, store_id: str | None = None) -> HostContext:
        """The host context of ``store_id`` (default: the store chosen on the command line)."""
