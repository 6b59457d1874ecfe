"""Executemany for hot paths: a Core statement compiled once per dialect (host and plugins).

``Connection.execute(insert(table), rows)`` spends ~15 µs per row in SQLAlchemy's
per-row parameter processing, three times what SQLite needs to insert the row. For
the contact batches (the bulk of a sync) we compile the same Core statement once
and hand the driver its native parameters through ``exec_driver_sql``, still on the
caller's connection and transaction. Values must already be driver-ready: ``str``,
``bytes``, ``None`` and the output of :func:`bind_value` for typed columns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.engine import Connection, CursorResult
from sqlalchemy.sql import ClauseElement


class FastStatement:
    """A Core statement plus the column/bind names its rows provide."""

    def __init__(self, stmt: ClauseElement, column_keys: Sequence[str] | None = None):
        self.stmt = stmt
        self.column_keys = list(column_keys) if column_keys is not None else None
        self._compiled: dict[str, tuple[str, tuple[str, ...] | None]] = {}

    def _for(self, conn: Connection) -> tuple[str, tuple[str, ...] | None]:
        dialect = conn.dialect
        entry = self._compiled.get(dialect.name)
        if entry is None:
            compiled = self.stmt.compile(dialect=dialect, column_keys=self.column_keys)
            order = tuple(compiled.positiontup) if compiled.positional else None
            entry = (str(compiled), order)
            self._compiled[dialect.name] = entry
        return entry

    def executemany(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> CursorResult:
        """Run the statement once per row (one driver executemany)."""
        sql, order = self._for(conn)
        if order is not None:
            params: list = [tuple(row[name] for name in order) for row in rows]
        else:
            params = [dict(row) for row in rows]
        return conn.exec_driver_sql(sql, params)


def bind_value(conn: Connection, column, value: Any) -> Any:
    """``value`` converted by ``column``'s type for the connection's driver (once, not per row)."""
    # dialect_impl: the dialect's own type (SQLite formats datetimes as text itself)
    processor = column.type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
    return processor(value) if processor else value
