"""Recurring sync jobs: the per-store :class:`SqlScheduler` a plugin uses, and the
claim/finish protocol every runner shares (the job engine's task in
:mod:`smartpush_devhost.engine`, and the one-shot :func:`run_due`).

``sp_jobs`` is the schedule: one row per store and integration, with ``next_run_at``
and a ``version`` that every claim and reschedule bumps (a compare-and-set token).

- A claim moves ``next_run_at`` only :data:`CLAIM_TIMEOUT` ahead, not a day: the
  runner keeps pushing it forward while the sync runs (:func:`heartbeat`), so a
  worker that is killed or interrupted (Ctrl-C) leaves a job that is due again
  within minutes, never tomorrow.
- Only a finished run (:func:`finish`) sets the next run to claim time + period.
- Two runners can never claim the same version, so a due run happens once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import and_, delete, select, update

from hookspecs.fastsql import dialect_insert
from smartpush_devhost.models import jobs_t, utcnow
from smartpush_devhost.storage import SqlStorage

if TYPE_CHECKING:  # pragma: no cover
    import pluggy

    from smartpush_devhost.host import DevHost

log = logging.getLogger(__name__)

RETRY_AFTER_ERROR = timedelta(minutes=15)
"""A job whose plugin raised runs again this soon (or at its period, if shorter)."""
CLAIM_TIMEOUT = timedelta(minutes=5)
"""How long a claim holds without a heartbeat: a killed worker's job is retried after this."""
ENV_CLAIM_TIMEOUT = "SMARTPUSH_JOB_CLAIM_SECONDS"


def claim_timeout(settings: dict[str, str] | None = None) -> timedelta:
    """:data:`CLAIM_TIMEOUT`, or ``SMARTPUSH_JOB_CLAIM_SECONDS`` from the settings/environment."""
    value = (settings or {}).get(ENV_CLAIM_TIMEOUT) or os.environ.get(ENV_CLAIM_TIMEOUT)
    return timedelta(seconds=max(1, int(value))) if value else CLAIM_TIMEOUT


class JobQueue(Protocol):
    """Where a job engine takes a job's next occurrence (see :mod:`smartpush_devhost.engine`)."""

    def enqueue(self, store_id: str, integration: str, version: int, eta: datetime) -> None:
        """Have a worker look at this job version at ``eta``."""

    def revoke(self, store_id: str, integration: str, version: int) -> None:
        """Drop the queued message of this job version, if any."""


def _first_version() -> int:
    """A new job's first version: the clock in milliseconds (modulo 10^9, so it fits an
    INTEGER column with room for years of increments), so a job cancelled and scheduled
    again does not reuse the version whose queued message was revoked."""
    return int(time.time() * 1000) % 1_000_000_000


class SqlScheduler:
    """Implements :class:`hookspecs.interfaces.Scheduler` for one ``store_id``."""

    def __init__(self, storage: SqlStorage, store_id: str, queue: JobQueue | None = None):
        self.storage = storage
        self.store_id = store_id
        self.queue = queue

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
                next_run_at=next_run, version=_first_version(),
            )
            changes: dict[str, Any] = {"every_seconds": seconds, "version": jobs_t.c.version + 1}
            if first_run is not None:
                changes["next_run_at"] = first_run
            tx.execute(stmt.on_conflict_do_update(index_elements=[jobs_t.c.store_id, jobs_t.c.integration], set_=changes))
            row = tx.execute(select(jobs_t.c.version, jobs_t.c.next_run_at).where(self._key(integration))).one()
        if self.queue is not None:
            self.queue.enqueue(self.store_id, integration, row.version, row.next_run_at)

    def unschedule(self, integration: str) -> None:
        """Remove the job and its queued message (a running sync stops through the
        plugin's own cancellation; its runner finds no row and writes nothing)."""
        with self.storage.transaction() as tx:
            version = tx.execute(select(jobs_t.c.version).where(self._key(integration))).scalar_one_or_none()
            tx.execute(delete(jobs_t).where(self._key(integration)))
        if self.queue is not None and version is not None:
            self.queue.revoke(self.store_id, integration, version)

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
    next_version: int | None = None
    next_run_at: datetime | None = None


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


def _job_key(store_id: str, integration: str):
    return and_(jobs_t.c.store_id == store_id, jobs_t.c.integration == integration)


@dataclass
class Claim:
    """A claimed job version: only its holder may heartbeat or finish it."""

    store_id: str
    integration: str
    version: int
    """The version the claim set (the row's version while the claim holds)."""
    every: timedelta
    claimed_at: datetime
    timeout: timedelta


def claim(storage: SqlStorage, job, now: datetime, worker_id: str, timeout: timedelta = CLAIM_TIMEOUT) -> Claim | None:
    """Atomically take ``job`` (a row with store_id, integration, version, next_run_at,
    every_seconds) if it is still that version; ``None`` if another worker did."""
    stmt = (
        update(jobs_t)
        .where(
            and_(
                _job_key(job.store_id, job.integration),
                jobs_t.c.next_run_at <= now,
                jobs_t.c.version == job.version,
            )
        )
        .values(next_run_at=now + timeout, last_run_at=now, version=jobs_t.c.version + 1, claimed_by=worker_id[:200])
    )
    with storage.transaction() as tx:
        if tx.execute(stmt).rowcount != 1:
            return None
    return Claim(job.store_id, job.integration, job.version + 1, timedelta(seconds=job.every_seconds), now, timeout)


def heartbeat(storage: SqlStorage, c: Claim) -> bool:
    """Keep the claim alive (its job not due) for another timeout; ``False`` once it is
    no longer ours (unscheduled, or rescheduled by the plugin)."""
    with storage.transaction() as tx:
        return tx.execute(
            update(jobs_t)
            .where(and_(_job_key(c.store_id, c.integration), jobs_t.c.version == c.version))
            .values(next_run_at=utcnow() + c.timeout)
        ).rowcount == 1


def finish(storage: SqlStorage, c: Claim, outcome: str) -> tuple[int, datetime] | None:
    """Record the outcome and set the next run; returns the new ``(version, next_run_at)``,
    or ``None`` when the row changed meanwhile (the plugin rescheduled, or Cancel).

    A finished run comes back one period after its claim; ``already_running`` (another
    worker holds the store's lease) comes back after a claim timeout, an exception
    after :data:`RETRY_AFTER_ERROR`.
    """
    if outcome == "already_running":
        next_run = utcnow() + c.timeout
    elif outcome == "error":
        next_run = utcnow() + min(RETRY_AFTER_ERROR, c.every)
    else:
        next_run = c.claimed_at + c.every
    key = _job_key(c.store_id, c.integration)
    with storage.transaction() as tx:
        done = tx.execute(
            update(jobs_t)
            .where(and_(key, jobs_t.c.version == c.version))
            .values(next_run_at=next_run, version=c.version + 1, last_outcome=outcome[:40])
        ).rowcount == 1
        if not done:
            tx.execute(update(jobs_t).where(key).values(last_outcome=outcome[:40]))
            return None
    return c.version + 1, next_run


def release(storage: SqlStorage, c: Claim) -> None:
    """Give an interrupted claim back: the job is due again at once (Ctrl-C, shutdown)."""
    with storage.transaction() as tx:
        tx.execute(
            update(jobs_t)
            .where(and_(_job_key(c.store_id, c.integration), jobs_t.c.version == c.version))
            .values(next_run_at=utcnow())
        )


class Heartbeat:
    """A daemon thread that calls :func:`heartbeat` every third of the claim timeout."""

    def __init__(self, storage: SqlStorage, c: Claim):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(storage, c), name=f"heartbeat-{c.store_id}", daemon=True)

    def _run(self, storage: SqlStorage, c: Claim) -> None:
        while not self._stop.wait(c.timeout.total_seconds() / 3):
            try:
                if not heartbeat(storage, c):
                    return
            except Exception as exc:  # a database hiccup: try again next beat
                log.warning("heartbeat of %s/%s failed: %s", c.store_id, c.integration, type(exc).__name__)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_claimed(host: "DevHost", pm: "pluggy.PluginManager", c: Claim) -> JobRun:
    """Run a claimed job's incremental sync with a heartbeat, then :func:`finish` it.

    A plugin exception is logged (type only: messages may hold data) and recorded as
    outcome ``error``. An interrupt (Ctrl-C, SystemExit) releases the claim so the job
    is due again at once, and propagates.
    """
    log.info("running %s sync of store %s", c.integration, c.store_id)
    report = None
    try:
        with Heartbeat(host.storage, c):
            report = host.pm_call_sync(pm, c.store_id, c.integration, "incremental")
        outcome = report.outcome if report is not None else "no_plugin"
        if outcome == "stopped":  # the host is shutting down: the job is due again at once
            release(host.storage, c)
            return JobRun(c.store_id, c.integration, outcome, report)
    except Exception as exc:
        log.error("sync %s/%s raised %s", c.store_id, c.integration, type(exc).__name__, exc_info=log.isEnabledFor(logging.DEBUG))
        outcome = "error"
    except BaseException:
        release(host.storage, c)
        raise
    nxt = finish(host.storage, c, outcome)
    return JobRun(c.store_id, c.integration, outcome, report, next_version=nxt[0] if nxt else None,
                  next_run_at=nxt[1] if nxt else None)


def run_due(
    host: "DevHost",
    pm: "pluggy.PluginManager",
    *,
    now: datetime | None = None,
    store: str | None = None,
    worker_id: str | None = None,
) -> list[JobRun]:
    """Claim and run every due job (of ``store``, or of all stores), one after another.

    Each claimed job calls ``pm.hook.smartpush_sync(integration=..., host=ctx,
    mode="incremental")``; see :func:`run_claimed`. The other jobs still run when one fails.
    """
    now = now or utcnow()
    worker_id = worker_id or default_worker_id()
    timeout = claim_timeout(host.settings)
    runs: list[JobRun] = []
    for job in due_jobs(host.storage, now, store):
        if host.stop_requested.is_set():
            break
        c = claim(host.storage, job, now, worker_id, timeout)
        if c is None:
            log.debug("job %s/%s taken by another worker", job.store_id, job.integration)
            continue
        run = run_claimed(host, pm, c)
        if run.next_version is not None:  # keep a job engine's queue in step with this run
            host.queue.enqueue(run.store_id, run.integration, run.next_version, run.next_run_at)
        runs.append(run)
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
    """Poll for due jobs every ``interval`` seconds until ``stop`` (default: the host's
    ``stop_requested``) is set.

    Returns how many jobs ran. ``on_run`` is called after each job (CLI output);
    ``max_rounds`` bounds the loop (tests).
    """
    stop = stop or host.stop_requested
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
