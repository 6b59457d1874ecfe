"""A per-store lease so two workers never run the same store's sync at once.

The lease is a row with an owner and an expiry. Taking it is one conditional
UPDATE (or INSERT), atomic on SQLite and PostgreSQL alike; the holder renews it
while it works, and a crashed worker's lease simply expires. An owner id names its
host and process, so a worker on the same host can take over at once from a process
that no longer exists (a ``kill -9``) instead of waiting for the expiry.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import timedelta

import psutil
from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from smartpush_plugin_klaviyo.state import lease_t
from smartpush_plugin_klaviyo.timeutil import utcnow

LEASE_TTL = timedelta(seconds=60)


def new_owner_id() -> str:
    """``host:pid:start:random``: unique per worker; tells which process holds a lease, and
    (with the process's start time) whether that very process still runs."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}:{uuid.uuid4().hex[:8]}"


def _start_time(pid: int) -> str:
    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except (psutil.Error, OSError):
        return "0"


def _dead_local_owner(owner: str) -> bool:
    """Whether ``owner`` names a process of this host that is gone: exited, a zombie
    (``kill -9``'d but not yet reaped: ``os.kill(pid, 0)`` still succeeds on it), or
    exited with its PID since reused by another process (the start time differs)."""
    parts = owner.split(":")
    if len(parts) == 4:
        host, pid_text, started, _ = parts
    elif len(parts) == 3:  # an owner id written before start times were recorded
        host, pid_text, _ = parts
        started = None
    else:
        return False
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if host != socket.gethostname() or pid == os.getpid():
        return False
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return True
        return started not in (None, "0") and f"{process.create_time():.2f}" != started
    except psutil.NoSuchProcess:
        return True
    except (psutil.AccessDenied, OSError):  # exists, owned by someone else
        return False


def acquire(storage, store_id: str, owner: str, ttl: timedelta = LEASE_TTL) -> bool:
    """Take or renew the lease; ``False`` when another live owner holds it."""
    now = utcnow()
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


def renew(storage, store_id: str, owner: str, ttl: timedelta = LEASE_TTL) -> bool:
    """Extend the lease; ``False`` when it was lost (expired and taken by another)."""
    now = utcnow()
    with storage.transaction() as tx:
        result = tx.execute(
            update(lease_t)
            .where(and_(lease_t.c.store_id == store_id, lease_t.c.owner == owner))
            .values(expires_at=now + ttl)
        )
        return bool(result.rowcount)


def release(storage, store_id: str, owner: str) -> None:
    with storage.transaction() as tx:
        tx.execute(delete(lease_t).where(and_(lease_t.c.store_id == store_id, lease_t.c.owner == owner)))
