"""A per-store lease so two workers never run the same store's sync at once.

The lease is a row with an owner and an expiry. Taking it is one conditional
UPDATE (or INSERT), atomic on SQLite and PostgreSQL alike; the holder renews it
while it works, and a crashed worker's lease simply expires. An owner id names its
host and process, so a worker on the same host can take over at once from a process
that no longer exists (a ``kill -9``) instead of waiting for the expiry.

The duration is the host setting ``KLAVIYO_LEASE_SECONDS`` (default 60,
:attr:`SyncOptions.lease_seconds <smartpush_plugin_klaviyo.sync.SyncOptions.lease_seconds>`);
the holder renews it every third of that (:func:`renew_interval`), so two renewals
may fail before it expires.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import timedelta

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from smartpush_plugin_klaviyo import processes
from smartpush_plugin_klaviyo.dbwait import end_frozen_transactions, mark_session
from smartpush_plugin_klaviyo.errors import LeaseLost
from smartpush_plugin_klaviyo.state import lease_t
from smartpush_plugin_klaviyo.timeutil import to_utc, utcnow

DEFAULT_LEASE_SECONDS = 60
MIN_LEASE_SECONDS = 3
"""Shorter leases leave the holder's renewals (every third, checked every half second)
no slack."""
LEASE_TTL = timedelta(seconds=DEFAULT_LEASE_SECONDS)


def duration(seconds: float | timedelta) -> timedelta:
    """A lease duration as a ``timedelta`` (seconds are accepted as is)."""
    return seconds if isinstance(seconds, timedelta) else timedelta(seconds=seconds)


def renew_interval(seconds: float | timedelta) -> float:
    """Seconds between the holder's renewals of a lease of this duration: a third of it."""
    return duration(seconds).total_seconds() / 3


def new_owner_id() -> str:
    """``host:pid:start:random``: unique per worker, and tells which process holds a lease.

    ``start`` is the process start time (clock ticks since boot, from ``/proc``; ``0`` where
    unknown), so a PID reused by a later process is not taken for the lease holder.
    """
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{processes.start_time(pid) or 0}:{uuid.uuid4().hex[:8]}"


def _parse_owner(owner: str) -> tuple[str, int, int | None] | None:
    """``(host, pid, start)`` of an owner id; ``start`` is ``None`` in the older ``host:pid:random`` form."""
    parts = owner.rsplit(":", 3)
    if len(parts) == 4 and parts[1].isdigit() and parts[2].isdigit():
        return parts[0], int(parts[1]), int(parts[2]) or None
    parts = owner.rsplit(":", 2)
    if len(parts) == 3 and parts[1].isdigit():
        return parts[0], int(parts[1]), None
    return None


def _dead_local_owner(owner: str) -> bool:
    """Whether ``owner`` names a process of this host that has exited (a zombie, or
    another process under its PID, counts as exited: :func:`.processes.is_gone`)."""
    parsed = _parse_owner(owner)
    if parsed is None:
        return False
    host, pid, start = parsed
    if host != socket.gethostname() or pid == os.getpid():
        return False
    return processes.is_gone(pid, start)


def acquire(storage, store_id: str, owner: str, ttl: float | timedelta = LEASE_TTL) -> bool:
    """Take or renew the lease for ``ttl`` (seconds or a timedelta); ``False`` when another
    live owner holds it."""
    now, ttl = utcnow(), duration(ttl)
    with storage.transaction(readonly=True) as tx:
        row = tx.execute(select(lease_t.c.owner, lease_t.c.expires_at).where(lease_t.c.store_id == store_id)).first()
    if row is not None and row.owner != owner and to_utc(row.expires_at) < now:
        # Its holder let it expire: if it froze inside a write transaction, end that first
        # (PostgreSQL), or the update below waits on its row lock.
        end_frozen_transactions(storage, store_id)
    with storage.transaction() as tx:
        held = tx.execute(select(lease_t.c.owner).where(lease_t.c.store_id == store_id)).scalar_one_or_none()
        takeover = held is not None and held != owner and _dead_local_owner(held)
        condition = [lease_t.c.store_id == store_id]
        if takeover:
            condition.append(lease_t.c.owner == held)
        else:
            condition.append(or_(lease_t.c.owner == owner, lease_t.c.expires_at < now))
        result = tx.execute(update(lease_t).where(and_(*condition)).values(owner=owner, expires_at=now + ttl))
        if result.rowcount:
            return True
        if held is not None:
            return False
    try:
        with storage.transaction() as tx:
            tx.execute(insert(lease_t).values(store_id=store_id, owner=owner, expires_at=now + ttl))
        return True
    except IntegrityError:  # another worker inserted first
        return False


def renew(storage, store_id: str, owner: str, ttl: float | timedelta = LEASE_TTL) -> bool:
    """Extend the lease by ``ttl``; ``False`` when it was lost (expired and taken by another)."""
    now, ttl = utcnow(), duration(ttl)
    with storage.transaction() as tx:
        mark_session(tx, store_id)  # frozen mid-renewal, it is ended like a frozen write
        result = tx.execute(
            update(lease_t)
            .where(and_(lease_t.c.store_id == store_id, lease_t.c.owner == owner))
            .values(expires_at=now + ttl)
        )
        return bool(result.rowcount)


def release(storage, store_id: str, owner: str) -> None:
    with storage.transaction() as tx:
        tx.execute(delete(lease_t).where(and_(lease_t.c.store_id == store_id, lease_t.c.owner == owner)))


def fence(tx, store_id: str, owner: str) -> None:
    """Raise :class:`LeaseLost` unless ``owner`` still holds the lease, checked inside ``tx``.

    Call it in every write transaction of a run: the fencing check and the writes commit
    together or not at all. The lease row is read ``FOR SHARE`` (PostgreSQL) so a takeover
    cannot commit between this check and the commit; SQLite write transactions are already
    serialized (``BEGIN IMMEDIATE``).

    On PostgreSQL the transaction's session is named after the store
    (:func:`~smartpush_plugin_klaviyo.dbwait.mark_session`): should this worker freeze inside
    it, the worker that takes the lease over ends it (:func:`acquire`) instead of waiting
    on its row locks.
    """
    mark_session(tx, store_id)
    held = tx.execute(
        select(lease_t.c.owner).where(lease_t.c.store_id == store_id).with_for_update(read=True)
    ).first()
    if held is None or held.owner != owner:
        raise LeaseLost("this worker lost the sync lease to another worker; it writes nothing more")
