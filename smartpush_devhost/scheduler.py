"""Recurring sync jobs: the per-store :class:`SqlScheduler` a plugin uses, and the
host-side runner (:func:`run_due`, :func:`run_loop`) that fires due jobs.

A job is claimed with a compare-and-set UPDATE (``WHERE next_run_at = :old AND
version = :old``) that also moves ``next_run_at`` forward, so any number of workers
(threads or processes) can poll the same database and each due run happens once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, delete, select, update

from smartpush_devhost.contacts import dialect_insert
from smartpush_devhost.models import jobs_t, utcnow
from smartpush_devhost.storage import SqlStorage

if TYPE_CHECKING:  # pragma: no cover
    import pluggy

    from smartpush_devhost.host import DevHost

log = logging.getLogger(__name__)

RETRY_AFTER_ERROR = timedelta(minutes=15)
"""A job whose plugin raised runs again this soon (or at its period, if shorter)."""


class SqlScheduler:
    """Implements :class:`hookspecs.interfaces.Scheduler` for one ``store_id``."""

    def __init__(self, storage: SqlStorage, store_id: str):
        self.storage = storage
        self.store_id = store_id

    def __repr__(self) -> str:
        return f"SqlScheduler(store_id={self.store_id!r})"

    def _key(self, integration: str):
        return and_(jobs_t.c.store_id == self.store_id, jobs_t.c.integration == integration)

    def schedule(self, integration: str, *, every: timedelta, first_run: datetime | None = None) -> None:
        """Run the integration's incremental sync every ``every`` (idempotent).

        Scheduling an existing job changes its period; its next run moves only when
        ``first_run`` is given, so re-authorizing does not postpone a due run forever.
        """
        seconds = int(every.total_seconds())
        if seconds <= 0:
            raise ValueError("every must be positive")
        now = utcnow()
        next_run = first_run or now + every
        with self.storage.transaction() as tx:
            stmt = dialect_insert(tx, jobs_t).values(
                store_id=self.store_id, integration=integration, every_seconds=seconds,
                next_run_at=next_run, version=0,
            )
            changes: dict[str, Any] = {"every_seconds": seconds, "version": jobs_t.c.version + 1}
            if first_run is not None:
                changes["next_run_at"] = first_run
            tx.execute(stmt.on_conflict_do_update(index_elements=[jobs_t.c.store_id, jobs_t.c.integration], set_=changes))

    def unschedule(self, integration: str) -> None:
        """Remove the job (a running sync is not killed by this)."""
        with self.storage.transaction() as tx:
            tx.execute(delete(jobs_t).where(self._key(integration)))

    def next_run(self, integration: str) -> datetime | None:
        """When the job runs next, ``None`` when not scheduled."""
        with self.storage.transaction(readonly=True) as tx:
            return tx.execute(select(jobs_t.c.next_run_at).where(self._key(integration))).scalar_one_or_none()


@dataclass
class JobRun:
    """What :func:`run_due` did with one claimed job (no PII: ids and outcome)."""

    store_id: str
    integration: str
    outcome: str
    report: Any = None


def default_worker_id() -> str:
    """``host:pid:thread``: identifies the claimer in ``sp_jobs.claimed_by``."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def due_jobs(storage: SqlStorage, now: datetime, store: str | None = None) -> list[Any]:
    """Jobs whose ``next_run_at`` is at or before ``now``, oldest first."""
    cond = jobs_t.c.next_run_at <= now
    if store is not None:
        cond = and_(cond, jobs_t.c.store_id == store)
    stmt = select(jobs_t).where(cond).order_by(jobs_t.c.next_run_at, jobs_t.c.store_id)
    with storage.transaction(readonly=True) as tx:
        return list(tx.execute(stmt))


def claim(storage: SqlStorage, job, now: datetime, worker_id: str) -> bool:
    """Atomically take ``job`` (a row from :func:`due_jobs`); ``False`` if another worker did."""
    stmt = (
        update(jobs_t)
        .where(
            and_(
                jobs_t.c.store_id == job.store_id,
                jobs_t.c.integration == job.integration,
                jobs_t.c.next_run_at == job.next_run_at,
                jobs_t.c.version == job.version,
            )
        )
        .values(
            next_run_at=now + timedelta(seconds=job.every_seconds),
            last_run_at=now,
            version=jobs_t.c.version + 1,
            claimed_by=worker_id[:200],
        )
    )
    with storage.transaction() as tx:
        return tx.execute(stmt).rowcount == 1


def run_due(
    host: "DevHost",
    pm: "pluggy.PluginManager",
    *,
    now: datetime | None = None,
    store: str | None = None,
    worker_id: str | None = None,
) -> list[JobRun]:
    """Claim and run every due job (of ``store``, or of all stores).

    Each claimed job calls ``pm.hook.smartpush_sync(integration=..., host=ctx,
    mode="incremental")``; its next run is ``now + every``. A plugin exception is
    logged and recorded as outcome ``error``; the other jobs still run.
    """
    now = now or utcnow()
    worker_id = worker_id or default_worker_id()
    runs: list[JobRun] = []
    for job in due_jobs(host.storage, now, store):
        if not claim(host.storage, job, now, worker_id):
            log.debug("job %s/%s taken by another worker", job.store_id, job.integration)
            continue
        log.info("running %s sync of store %s", job.integration, job.store_id)
        report = None
        try:
            report = host.pm_call_sync(pm, job.store_id, job.integration, "incremental")
            outcome = report.outcome if report is not None else "no_plugin"
        except Exception as exc:  # keep the worker alive; type only (messages may hold data)
            log.error("sync %s/%s raised %s", job.store_id, job.integration, type(exc).__name__, exc_info=log.isEnabledFor(logging.DEBUG))
            outcome = "error"
        key = and_(jobs_t.c.store_id == job.store_id, jobs_t.c.integration == job.integration)
        with host.storage.transaction() as tx:
            # only touch the row if it is still the job we claimed (not unscheduled or
            # rescheduled by the plugin meanwhile)
            ours = and_(key, jobs_t.c.version == job.version + 1)
            values: dict[str, Any] = {"last_outcome": outcome[:40]}
            if outcome == "error":
                values["next_run_at"] = now + min(RETRY_AFTER_ERROR, timedelta(seconds=job.every_seconds))
            if tx.execute(update(jobs_t).where(ours).values(**values)).rowcount == 0:
                tx.execute(update(jobs_t).where(key).values(last_outcome=outcome[:40]))
        runs.append(JobRun(job.store_id, job.integration, outcome, report))
    return runs


def run_loop(
    host: "DevHost",
    pm: "pluggy.PluginManager",
    *,
    interval: float = 60.0,
    stop: threading.Event | None = None,
    worker_id: str | None = None,
    max_rounds: int | None = None,
    on_run: Callable[[JobRun], None] | None = None,
) -> int:
    """Poll for due jobs every ``interval`` seconds until ``stop`` is set.

    Returns how many jobs ran. ``on_run`` is called after each job (CLI output);
    ``max_rounds`` bounds the loop (tests).
    """
    stop = stop or threading.Event()
    worker_id = worker_id or default_worker_id()
    total = rounds = 0
    while not stop.is_set():
        for run in run_due(host, pm, worker_id=worker_id):
            total += 1
            if on_run is not None:
                on_run(run)
        rounds += 1
        if max_rounds is not None and rounds >= max_rounds:
            break
        stop.wait(interval)
    return total
