"""Hot-path statements: a Core statement compiled once per dialect (host and plugins).

Part of the storage interface of the contract (:class:`hookspecs.interfaces.Storage`):
a host's contact store and a plugin's writers run their bulk statements through it on
the connection the host hands out, so both sides share one tested way to do it.

``Connection.execute(insert(table), rows)`` spends ~15 µs per row in SQLAlchemy's
per-row parameter processing, three times what SQLite needs to insert the row. For
the contact batches (the bulk of a sync) we compile the same Core statement once
and hand the driver its native parameters through ``exec_driver_sql``, still on the
caller's connection and transaction. Values must already be driver-ready: ``str``,
``bytes``, ``None`` and the output of :func:`bind_value` for typed columns.

:class:`InListStatement` does the same for a statement with one expanding
``IN (...)`` parameter, which SQLAlchemy otherwise re-renders on every execution.

Only SQLAlchemy's public API is used: ``ClauseElement.compile``, ``Compiled.params``,
``SQLCompiler.construct_expanded_state`` and the ``ExpandedState`` it returns (SQL,
parameter order, IN expansion), ``Dialect.positional``, the statement's bind parameters
found with ``sqlalchemy.sql.visitors.iterate``, ``TypeEngine.bind_processor`` and
``Connection.exec_driver_sql``. Measured by ``benchmarks/fastsql_vs_core.py`` on SQLite
(this 2-core machine, busy): insert 3.8 against 6.7 µs per row, a 100-value ``IN``
select 303 against 451 µs per query; on PostgreSQL the server's time dominates and the
two are within 10 %.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import Any

from sqlalchemy.engine import Connection, CursorResult
from sqlalchemy.sql import ClauseElement, visitors
from sqlalchemy.sql.expression import BindParameter

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

IN_LIST_CACHED_LENGTHS = 1000
""":class:`InListStatement` caches the SQL of lists up to this long (pages and chunks
are at most 500); a longer list is rendered for its execution only."""


def _dialect_key(dialect) -> tuple[str, str, str]:
    """What the rendered SQL depends on: the database, the driver and its paramstyle."""
    return (dialect.name, dialect.driver, dialect.paramstyle)


def _row_getter(order: Sequence[Any]) -> Callable[[Any], tuple]:
    """A function taking a row (dict or tuple) to the tuple of its values at ``order``."""
    if len(order) == 1:
        # itemgetter of one key returns the bare value, not a 1-tuple
        key = order[0]
        return lambda row: (row[key],)
    return itemgetter(*order)


class FastStatement:
    """A Core statement plus the column/bind names its rows provide."""

    def __init__(self, stmt: ClauseElement, column_keys: Sequence[str] | None = None):
        self.stmt = stmt
        self.column_keys = list(column_keys) if column_keys is not None else None
        # dialect key -> (SQL, positional parameter names or None for named paramstyles)
        self._compiled: dict[tuple, tuple[str, tuple[str, ...] | None]] = {}
        self._getters: dict[tuple, Callable[[Any], tuple] | None] = {}

    def _for(self, conn: Connection) -> tuple[str, tuple[str, ...] | None]:
        dialect = conn.dialect
        key = _dialect_key(dialect)
        entry = self._compiled.get(key)
        if entry is None:
            compiled = self.stmt.compile(dialect=dialect, column_keys=self.column_keys)
            # the parameters' order, from SQLAlchemy's public ExpandedState
            state = compiled.construct_expanded_state(dict(compiled.params))
            entry = (state.statement, tuple(state.positiontup) if dialect.positional else None)
            self._compiled[key] = entry
        return entry

    def _getter(self, conn: Connection, order: tuple[str, ...], keys: tuple[str, ...] | None):
        """Row -> positional parameters: from a dict (``keys`` None) or a tuple of ``keys``."""
        cache_key = (_dialect_key(conn.dialect), keys)
        try:
            return self._getters[cache_key]
        except KeyError:
            pass
        if keys is None:
            getter = _row_getter(order)
        elif order == keys:
            getter = None  # the tuples already are the parameters
        else:
            getter = _row_getter([keys.index(name) for name in order])
        self._getters[cache_key] = getter
        return getter

    def executemany(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> CursorResult:
        """Run the statement once per row (one driver executemany)."""
        sql, order = self._for(conn)
        if order is not None:
            params: list = list(map(self._getter(conn, order, None), rows))
        else:
            params = [dict(row) for row in rows]
        return conn.exec_driver_sql(sql, params)

    def executemany_tuples(self, conn: Connection, keys: Sequence[str], rows: Sequence[tuple]) -> CursorResult:
        """Like :meth:`executemany`, each row a tuple of the values of ``keys``, in that order.

        For the largest batches: no dict per row, and no conversion at all when ``keys``
        is the order the statement binds in.
        """
        sql, order = self._for(conn)
        keys = tuple(keys)
        if order is None:
            params: list = [dict(zip(keys, row)) for row in rows]
        else:
            getter = self._getter(conn, order, keys)
            params = list(rows) if getter is None else list(map(getter, rows))
        return conn.exec_driver_sql(sql, params)


class _Rendered:
    """The SQL of an InListStatement for one dialect and list length, and how to bind it.

    ``head`` and ``tail``: the parameters placed before and after the IN values, each
    ``(name, required, constant, processor)`` (the placeholder is the name: bind names
    are plain identifiers, never escaped); a bind that is not
    ``required`` carries its own value (``constant``), which the params may override,
    as with ``Connection.execute``. ``names``: the placeholders of the IN values for
    named paramstyles (``None`` for positional ones).
    """

    __slots__ = ("head", "names", "sql", "tail", "value_processor")

    def __init__(self, sql, head, tail, value_processor, names):
        self.sql = sql
        self.head = head
        self.tail = tail
        self.value_processor = value_processor
        self.names = names


def _bound(slot: tuple, params: Mapping[str, Any]) -> Any:
    key, required, const, proc = slot
    value = params[key] if required else params.get(key, const)
    return value if proc is None else proc(value)


class InListStatement:
    """A Core statement with one expanding ``IN`` bind, rendered once per dialect and list length.

    SQLAlchemy renders an ``expanding`` bind (``col.in_(bindparam(name, expanding=True))``)
    into one placeholder per value on every execution, ~30 µs for a 100-value list. This
    renders the SQL once per (dialect, number of values) with SQLAlchemy's own
    :meth:`~sqlalchemy.sql.compiler.SQLCompiler.construct_expanded_state`, so the SQL is
    exactly what ``Connection.execute`` would send, and runs it with ``exec_driver_sql``
    on the caller's connection and transaction, with the parameters the driver expects
    (a tuple for positional paramstyles such as SQLite's, a dict for psycopg's).

    The statement's bind processors are applied (the common types have none). Result
    rows are the driver's: columns are read by name or position, but result processors
    do not run (a SQLite boolean comes back as ``0``/``1``, not ``True``/``False``).
    """

    def __init__(self, stmt: ClauseElement, expanding: str):
        self.stmt = stmt
        self.expanding = expanding
        self._compiled: dict[tuple, Any] = {}
        self._rendered: dict[tuple, _Rendered] = {}

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> CursorResult:
        """Run the statement once; ``params[expanding]`` holds the IN values, in order."""
        values = params[self.expanding]
        if not isinstance(values, (list, tuple)):
            values = list(values)
        r = self._for(conn, len(values))
        if r.value_processor is not None:
            values = list(map(r.value_processor, values))
        if r.names is None:
            bound = [_bound(slot, params) for slot in r.head]
            bound.extend(values)
            bound.extend(_bound(slot, params) for slot in r.tail)
            return conn.exec_driver_sql(r.sql, tuple(bound))
        named = {slot[0]: _bound(slot, params) for slot in r.head}
        named.update(zip(r.names, values))
        return conn.exec_driver_sql(r.sql, named)

    def _for(self, conn: Connection, n: int) -> _Rendered:
        dialect = conn.dialect
        key = (*_dialect_key(dialect), n)
        rendered = self._rendered.get(key)
        if rendered is None:
            rendered = self._render(dialect, n)
            if n <= IN_LIST_CACHED_LENGTHS:
                self._rendered[key] = rendered
        return rendered

    def _compile(self, dialect):
        key = _dialect_key(dialect)
        entry = self._compiled.get(key)
        if entry is None:
            # The statement's bind parameters, found with the public traversal API.
            binds = {b.key: b for b in visitors.iterate(self.stmt) if isinstance(b, BindParameter)}
            bind = binds.get(self.expanding)
            if bind is None or not bind.expanding:
                raise ValueError(f"{self.expanding!r} is not an expanding bind of the statement")
            if any(b.required and not _IDENTIFIER.fullmatch(b.key) for b in binds.values()):
                # SQLAlchemy renders other names escaped: keep placeholders and names one
                raise ValueError("bind names must be plain identifiers")
            others = [b for b in binds.values() if b is not bind]
            # Other late-rendered binds would be frozen with their first values.
            if any(b.expanding or b.literal_execute for b in others):
                raise ValueError("only one late-rendered bind (the expanding one) is supported")
            if any(b.callable is not None for b in binds.values()):
                raise ValueError("binds with a callable value are not supported")
            entry = (self.stmt.compile(dialect=dialect), binds)
            self._compiled[key] = entry
        return entry

    def _render(self, dialect, n: int) -> _Rendered:
        compiled, binds = self._compile(dialect)
        # The SQL depends on the number of values only: render it with placeholder values,
        # through SQLAlchemy's own (public) expansion, exactly as Connection.execute would.
        dummy = dict(compiled.params)
        dummy[self.expanding] = [None] * n
        state = compiled.construct_expanded_state(dummy, escape_names=False)
        expanded = list(state.parameter_expansion.get(self.expanding, []))

        def processor(name: str):
            # what the execution context applies: the bind's type for this dialect
            bind = binds.get(name)
            return bind.type.dialect_impl(dialect).bind_processor(dialect) if bind is not None else None

        def slot(name: str) -> tuple:
            bind = binds.get(name)
            required = bind is not None and bind.required
            return (name, required, None if required else state.parameters[name], processor(name))

        value_processor = processor(self.expanding)
        if dialect.positional:
            order = list(state.positiontup)
            if expanded:
                first = order.index(expanded[0])
                if order[first : first + n] != expanded:  # pragma: no cover - one IN list
                    raise ValueError("the IN values are not contiguous")
                head, tail = order[:first], order[first + n :]
            else:  # an empty list renders as an always-false expression
                head, tail = order, []
            return _Rendered(state.statement, [slot(x) for x in head], [slot(x) for x in tail], value_processor, None)
        expanded_set = set(expanded)
        others = [name for name in state.parameters if name not in expanded_set]
        return _Rendered(state.statement, [slot(x) for x in others], [], value_processor, expanded)


def bind_value(conn: Connection, column, value: Any) -> Any:
    """``value`` converted by ``column``'s type for the connection's driver (once, not per row)."""
    # dialect_impl: the dialect's own type (SQLite formats datetimes as text itself)
    processor = column.type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
    return processor(value) if processor else value


def dialect_insert(conn: Connection, table):
    """An ``INSERT`` into ``table`` for the connection's dialect, so it offers
    ``on_conflict_do_nothing`` / ``on_conflict_do_update`` (SQLite and PostgreSQL)."""
    name = conn.dialect.name
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    raise NotImplementedError(f"unsupported database dialect {name}")


class InsertIgnoringDuplicates:
    """``INSERT ... ON CONFLICT DO NOTHING`` into ``table``, a :class:`FastStatement` per
    dialect (built on first use): rows whose key is already present are skipped.

    Run through the driver's executemany, so ``rowcount`` counts the rows that were new
    (SQLAlchemy batches PostgreSQL inserts into one multi-VALUES statement and then
    reports no rowcount).
    """

    def __init__(self, table, column_keys: Sequence[str]):
        self.table = table
        self.column_keys = tuple(column_keys)
        self._by_dialect: dict[str, FastStatement] = {}

    def executemany_tuples(self, conn: Connection, rows: Sequence[tuple]) -> CursorResult:
        """Insert ``rows`` (tuples in :attr:`column_keys` order); see the class doc."""
        stmt = self._by_dialect.get(conn.dialect.name)
        if stmt is None:
            stmt = self._by_dialect[conn.dialect.name] = FastStatement(
                dialect_insert(conn, self.table).on_conflict_do_nothing(), self.column_keys
            )
        return stmt.executemany_tuples(conn, self.column_keys, rows)
