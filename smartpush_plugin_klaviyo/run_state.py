"""A run's state in the database: its record, its streams' checkpoints, its phase and
progress, the groups it checked, and the watermark it leaves behind.

:class:`RunState` owns every statement on ``klaviyo_run`` and ``klaviyo_stream`` and on
the run columns of ``klaviyo_integration`` (current run, phase, progress, watermark,
sweep position) and ``klaviyo_group.checked_run``; the sync engine says what happened
(a page applied, a stream ended, a group checked, the run finished) and never writes SQL
on these tables itself. Every write of a run goes through :meth:`RunState.verify` in its
own transaction: the integration must still be installed in the same epoch (not
cancelled) and this worker must still hold the store's lease (the fence), or the
transaction commits nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import (
    Integer,
    String,
    and_,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)

from smartpush_plugin_klaviyo import lease
from smartpush_plugin_klaviyo.errors import LeaseLost, SyncCancelled
from smartpush_plugin_klaviyo.state import group_t, integration_t, run_t, stream_t
from smartpush_plugin_klaviyo.timeutil import utcnow

__all__ = ["RunState", "cancel_unfinished"]

_ADVANCE_STREAM = (
    # Built once: constructing this UPDATE for every page cost more than running it.
    update(stream_t)
    .where(
        and_(
            stream_t.c.store_id == bindparam("b_store"),
            stream_t.c.run_id == bindparam("b_run"),
            stream_t.c.key == bindparam("b_key"),
        )
    )
    .values(
        next_url=bindparam("b_next", type_=String),
        started=True,
        pages=stream_t.c.pages + 1,
        records=stream_t.c.records + bindparam("b_n", type_=Integer),
        last_value=func.coalesce(bindparam("b_last", type_=String), stream_t.c.last_value),
    )
)
"""A stream's checkpoint after one page: cursor, counters and the last sort value seen."""


class RunState:
    """The database state of one store's runs, seen from the worker holding its lease.

    :param storage: the host's storage.
    :param store_id: the store.
    :param lease_owner: this worker's lease owner id (the fencing token).
    :param on_lost: called with the exception before :meth:`verify` raises it (the
        engine stops its fetchers at once).
    """

    def __init__(self, storage, store_id: str, lease_owner: str,
                 on_lost: Callable[[BaseException], None] | None = None):
        self.storage = storage
        self.store_id = store_id
        self.lease_owner = lease_owner
        self.on_lost = on_lost
        self.epoch: int | None = None
        self.run_id: str | None = None

    # ------------------------------------------------------------ integration
    def integration(self):
        """The integration row; remembers its epoch (a Cancel Integration moves it)."""
        with self.storage.transaction(readonly=True) as tx:
            row = tx.execute(select(integration_t).where(integration_t.c.store_id == self.store_id)).first()
        self.epoch = row.epoch
        return row

    def verify(self, tx) -> None:
        """Inside a write transaction: raise :class:`SyncCancelled` if the integration was
        cancelled since the run started, :class:`LeaseLost` if another worker took the
        store's lease (after calling ``on_lost``)."""
        try:
            # The lease first: on PostgreSQL it names the session before this transaction
            # takes a row lock, so a successor can end it should this worker freeze.
            lease.fence(tx, self.store_id, self.lease_owner)
            # FOR UPDATE (PostgreSQL): an uninstall either commits before this write or waits for it.
            row = tx.execute(
                select(integration_t.c.epoch, integration_t.c.installed)
                .where(integration_t.c.store_id == self.store_id)
                .with_for_update()
            ).first()
            if row is None or not row.installed or row.epoch != self.epoch:
                raise SyncCancelled("the integration was cancelled")
        except (SyncCancelled, LeaseLost) as exc:
            if self.on_lost is not None:
                self.on_lost(exc)
            raise

    def cancelled(self) -> bool:
        """Whether the integration was cancelled (or reinstalled) since the run started (read only)."""
        with self.storage.transaction(readonly=True) as tx:
            row = tx.execute(
                select(integration_t.c.epoch, integration_t.c.installed).where(integration_t.c.store_id == self.store_id)
            ).first()
        return row is None or not row.installed or row.epoch != self.epoch

    # ------------------------------------------------------------ run records
    def unfinished_run(self, run_id: str) -> dict | None:
        """The run ``run_id`` if it has not finished (a crash or a stop left it to resume)."""
        with self.storage.transaction(readonly=True) as tx:
            row = tx.execute(select(run_t).where(and_(run_t.c.store_id == self.store_id, run_t.c.run_id == run_id))).first()
        return dict(row._mapping) if row is not None and row.finished_at is None else None

    def create_run(self, run: dict, streams: list[dict]) -> None:
        """Record a new run and its first streams, and make it the integration's current run."""
        with self.storage.transaction() as tx:
            self.verify(tx)
            tx.execute(insert(run_t).values(**run))
            tx.execute(insert(stream_t), [{"store_id": self.store_id, "run_id": run["run_id"], **s} for s in streams])
            tx.execute(
                update(integration_t)
                .where(integration_t.c.store_id == self.store_id)
                .values(current_run_id=run["run_id"], run_seq=run["seq"], last_sync_started_at=run["started_at"])
            )

    def begin(self, run_id: str) -> None:
        """The run this state's stream and phase methods are about."""
        self.run_id = run_id

    def set_phase(self, phase: str) -> None:
        with self.storage.transaction() as tx:
            self.verify(tx)
            tx.execute(update(integration_t).where(integration_t.c.store_id == self.store_id).values(phase=phase))
            tx.execute(update(run_t).where(self._this_run(run_t)).values(phase=phase))

    def save_progress(self, record: dict) -> None:
        """Where the run is (:class:`hookspecs.types.SyncProgress` fields), for the status."""
        with self.storage.transaction() as tx:
            self.verify(tx)  # fenced like every write: a worker that lost its lease reports nothing
            tx.execute(
                update(integration_t)
                .where(and_(integration_t.c.store_id == self.store_id, integration_t.c.current_run_id == self.run_id))
                .values(progress_json=json.dumps(record))
            )

    def finish(self, mode: str, klaviyo_start: datetime | None, report_json: str, counts: dict) -> None:
        """Complete the run: its record, the watermark (Klaviyo's clock at the run's start),
        the sweep's next position, and the streams (deleted)."""
        now = utcnow()
        with self.storage.transaction() as tx:
            self.verify(tx)
            tx.execute(
                update(run_t)
                .where(self._this_run(run_t))
                .values(finished_at=now, outcome="completed", phase="done", report_json=report_json)
            )
            sweep = tx.execute(select(stream_t.c.done, stream_t.c.hi).where(self._this_run(stream_t), stream_t.c.key == "sweep")).first()
            integ = tx.execute(select(integration_t.c.sweep_cycle).where(integration_t.c.store_id == self.store_id)).first()
            tx.execute(delete(stream_t).where(self._this_run(stream_t)))
            values = dict(current_run_id=None, phase=None, progress_json=None, last_success_at=now, consecutive_errors=0,
                          counts_json=json.dumps(counts))
            # A full run read (and confirmed) the whole account: the sweep starts over.
            # An incremental run's sweep moves on to where its portion ended.
            if mode == "full" or (sweep is not None and sweep.done and sweep.hi is None):
                values.update(sweep_position=None, sweep_cycle=(integ.sweep_cycle or 0) + 1)
            elif sweep is not None and sweep.done:
                values["sweep_position"] = sweep.hi
            if klaviyo_start is not None:
                values["profiles_watermark"] = klaviyo_start
            tx.execute(update(integration_t).where(integration_t.c.store_id == self.store_id).values(**values))

    # --------------------------------------------------------------- streams
    def streams(self) -> list[dict]:
        """This run's streams (their checkpoints)."""
        with self.storage.transaction(readonly=True) as tx:
            return [dict(r._mapping) for r in tx.execute(select(stream_t).where(self._this_run(stream_t)))]

    def stream(self, key: str) -> dict | None:
        with self.storage.transaction(readonly=True) as tx:
            row = tx.execute(select(stream_t).where(self._this_run(stream_t), stream_t.c.key == key)).first()
        return dict(row._mapping) if row is not None else None

    def add_streams(self, tx, rows: list[dict]) -> None:
        tx.execute(insert(stream_t), [dict(r) for r in rows])

    def advance(self, tx, key: str, next_url: str | None, records: int, last: str | None) -> None:
        """A page of stream ``key`` was applied: its cursor, counters and last sort value."""
        tx.execute(
            _ADVANCE_STREAM,
            {"b_store": self.store_id, "b_run": self.run_id, "b_key": key, "b_next": next_url, "b_n": records,
             "b_last": last},
        )

    def end_stream(self, tx, key: str, *, hi: str | None = None, sweep: bool = False) -> None:
        """Stream ``key`` was read to its end (``sweep``: to ``hi``, where its portion ended)."""
        values = {"done": True, "next_url": None}
        if sweep:
            values["hi"] = hi
        tx.execute(update(stream_t).where(self._this_run(stream_t), stream_t.c.key == key).values(**values))

    def group_streams(self, tx, group_id: str) -> dict[str, bool]:
        """This run's streams of one group: key -> done."""
        return dict(tx.execute(
            select(stream_t.c.key, stream_t.c.done).where(self._this_run(stream_t), stream_t.c.group_id == group_id)
        ).all())

    # ---------------------------------------------------------------- groups
    def groups(self) -> list[dict]:
        """The store's groups (lists and segments) with their scan bookkeeping."""
        with self.storage.transaction(readonly=True) as tx:
            return [dict(r._mapping) for r in tx.execute(select(group_t).where(group_t.c.store_id == self.store_id))]

    def mark_checked(self, tx, group_id: str) -> None:
        """The group's membership was verified in this run (a resumed run skips it)."""
        tx.execute(
            update(group_t)
            .where(and_(group_t.c.store_id == self.store_id, group_t.c.group_id == group_id))
            .values(checked_run=self.run_id)
        )

    # ---------------------------------------------------------------- private
    def _this_run(self, table):
        return and_(table.c.store_id == self.store_id, table.c.run_id == self.run_id)


def cancel_unfinished(tx, store_id: str) -> None:
    """Cancel Integration: the store's unfinished runs end as ``cancelled``, their streams go."""
    tx.execute(delete(stream_t).where(stream_t.c.store_id == store_id))
    tx.execute(
        update(run_t)
        .where(and_(run_t.c.store_id == store_id, run_t.c.finished_at.is_(None)))
        .values(finished_at=utcnow(), outcome="cancelled")
    )
