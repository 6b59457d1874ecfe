"""The daily sync jobs on huey, an existing task queue.

- Embedded default: ``SqliteHuey`` in the data directory (``queue.db``), no server.
- Scale-out: ``SMARTPUSH_QUEUE_URL=redis://host:port/db`` (``RedisHuey``); run
  ``smartpush worker`` on as many machines as you like against the same database
  and Redis.

A queued message names one job *version* (``sp_jobs.version``). The worker that takes
it claims that version with a compare-and-set (:func:`smartpush_devhost.scheduler.claim`),
so duplicates, stale messages and messages of a cancelled job do nothing, and no
store runs twice at once. Before a claimed run starts, the worker queues the
claim's own follow-up message at the claim timeout: if the worker is killed mid-run
(the queue has already handed the message out), that follow-up finds the claim
without heartbeat and runs the job again within minutes. While the run is alive the
follow-up only re-queues itself for when the heartbeat would expire.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huey import Huey, RedisHuey, SqliteHuey
from sqlalchemy import select

from smartpush_devhost.models import jobs_t, utcnow
from smartpush_devhost.scheduler import JobRun, claim, claim_timeout, default_worker_id, run_claimed

if TYPE_CHECKING:  # pragma: no cover
    from smartpush_devhost.host import DevHost

log = logging.getLogger(__name__)

ENV_QUEUE_URL = "SMARTPUSH_QUEUE_URL"
QUEUE_NAME = "smartpush-jobs"


def default_queue_url(data_dir: Path) -> str:
    """``sqlite:///<data dir>/queue.db``: the embedded queue."""
    return f"sqlite:///{data_dir / 'queue.db'}"


def make_huey(url: str) -> Huey:
    """A huey instance for ``sqlite:///path`` or ``redis://...``."""
    if url.startswith("sqlite:///"):
        huey: Huey = SqliteHuey(QUEUE_NAME, filename=url[len("sqlite:///"):], results=False, timeout=30)
    elif url.startswith(("redis://", "rediss://", "unix://")):
        huey = RedisHuey(QUEUE_NAME, url=url, results=False)
    else:
        raise ValueError("the queue URL must start with sqlite:/// or redis://")
    return huey


def task_id(store_id: str, integration: str, version: int) -> str:
    """The queue message id of one job version (stable, so it can be revoked)."""
    return f"job:{store_id}:{integration}:{version}"


class HueyJobQueue:
    """:class:`smartpush_devhost.scheduler.JobQueue` on a huey instance."""

    def __init__(self, url: str):
        self.url = url
        self.huey = make_huey(url)
        self._task = self.huey.task(name="smartpush.run_job", retries=0)(_run_job_task)

    def __repr__(self) -> str:
        return f"HueyJobQueue({self.url.split('://', 1)[0]})"

    def enqueue(self, store_id: str, integration: str, version: int, eta: datetime) -> None:
        """Queue a look at this job version at ``eta`` (huey keeps it until then)."""
        self.huey.enqueue(self._task.s(store_id, integration, version, id=task_id(store_id, integration, version),
                                       eta=_naive_utc(eta)))

    def revoke(self, store_id: str, integration: str, version: int) -> None:
        """Mark the version's message revoked: the consumer drops it unexecuted."""
        self.huey.revoke_by_id(task_id(store_id, integration, version), revoke_once=True)

    def counts(self) -> dict[str, int]:
        """Messages waiting now and scheduled for later (for ``smartpush worker --status``)."""
        return {"pending": self.huey.pending_count(), "scheduled": self.huey.scheduled_count()}


def _naive_utc(when: datetime) -> datetime:
    # huey compares etas with naive UTC datetimes (utc=True, its default)
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc).replace(tzinfo=None)
    return when


# ----------------------------------------------------------------- the task
_WORKER: dict[str, Any] = {}
"""The worker process's ``host``, ``pm`` and ``on_run`` callback (set by :func:`run_worker`)."""


def _run_job_task(store_id: str, integration: str, version: int) -> str:
    if "host" not in _WORKER:  # a consumer started some other way: build from the environment
        import hookspecs
        from smartpush_devhost.host import DevHost

        _WORKER.update(host=DevHost(), pm=hookspecs.get_plugin_manager())
    run = handle_message(_WORKER["host"], _WORKER["pm"], store_id, integration, version)
    return run.outcome if run is not None else "skipped"


def handle_message(host: "DevHost", pm, store_id: str, integration: str, version: int) -> JobRun | None:
    """What a worker does with one message; see the module docstring."""
    queue = host.queue
    with host.storage.transaction(readonly=True) as tx:
        job = tx.execute(
            select(jobs_t).where(jobs_t.c.store_id == store_id, jobs_t.c.integration == integration)
        ).one_or_none()
    if job is None or job.version != version:
        log.debug("job %s/%s v%s is stale", store_id, integration, version)
        return None
    now = utcnow()
    if job.next_run_at > now:  # not due (a live claim's follow-up, or an early message)
        queue.enqueue(store_id, integration, version, job.next_run_at)
        return None
    c = claim(host.storage, job, now, default_worker_id(), claim_timeout(host.settings))
    if c is None:
        return None
    queue.enqueue(store_id, integration, c.version, c.claimed_at + c.timeout)  # the follow-up
    run = run_claimed(host, pm, c)
    if run.outcome == "stopped":  # this worker is stopping: the job was given back, due now for any worker
        queue.enqueue(store_id, integration, c.version, utcnow())
    elif run.next_version is not None:
        queue.revoke(store_id, integration, c.version)  # the follow-up is no longer needed
        queue.enqueue(store_id, integration, run.next_version, run.next_run_at)
    hook = _WORKER.get("on_run")
    if hook is not None:
        hook(run)
    return run


def reconcile(host: "DevHost") -> int:
    """Queue one message per scheduled job (at its next run): jobs scheduled before the
    queue existed, or whose messages were lost with a wiped queue. Extra messages are
    harmless. Returns how many were queued."""
    with host.storage.transaction(readonly=True) as tx:
        rows = list(tx.execute(select(jobs_t.c.store_id, jobs_t.c.integration, jobs_t.c.version, jobs_t.c.next_run_at)))
    for row in rows:
        host.queue.enqueue(row.store_id, row.integration, row.version, row.next_run_at)
    return len(rows)


def run_worker(host: "DevHost", pm, *, workers: int = 1, on_run=None) -> int:
    """Run a huey consumer (``workers`` threads) until SIGINT or SIGTERM: the running
    syncs stop at their next checkpoint (within seconds), their jobs are given back due
    at once (another worker resumes them), then the worker exits; a second signal stops
    at once (an interrupted job's claim expires without heartbeat and another worker
    runs it). Returns the exit code: 130 after SIGINT, 143 after SIGTERM, 0 otherwise.
    Helper processes of interrupted syncs are ended."""
    import signal

    from huey.consumer import Consumer

    from smartpush_devhost import exit_codes
    from smartpush_devhost.signals import end_helpers

    reconcile(host)
    _WORKER.update(host=host, pm=pm, on_run=on_run)
    class StoppingConsumer(Consumer):
        """Both signals ask the running syncs to stop at their next checkpoint (their jobs
        are given back, due at once) and then stop the worker; a second signal stops at once."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._signal_actions[signal.SIGTERM] = (False, True)  # (restart, graceful)

        def _handle_signal(self, signum, frame):
            host.stop_requested.set()
            super()._handle_signal(signum, frame)

    consumer = StoppingConsumer(host.queue.huey, workers=max(1, workers), worker_type="thread", periodic=False,
                                check_worker_health=True)
    try:
        consumer.run()
    finally:
        end_helpers()
    signum = getattr(consumer, "_signum", None)  # which signal stopped it (huey keeps it here)
    return {signal.SIGINT: exit_codes.INTERRUPTED, signal.SIGTERM: exit_codes.TERMINATED}.get(signum, exit_codes.OK)


def queue_url_from(env: dict[str, str] | os._Environ, data_dir: Path) -> str:
    """The queue URL: ``SMARTPUSH_QUEUE_URL`` or the embedded SQLite queue."""
    return env.get(ENV_QUEUE_URL) or default_queue_url(data_dir)
