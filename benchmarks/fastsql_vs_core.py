"""Benchmark: hookspecs.fastsql against plain SQLAlchemy Core on SQLite (or ``--db URL``).

Not a test: it prints figures, the reason ``fastsql`` exists (README, "Storage")::

    python benchmarks/fastsql_vs_core.py
    python benchmarks/fastsql_vs_core.py --db postgresql+psycopg://postgres@127.0.0.1:5432/postgres

1. inserting 20,000 rows: ``FastStatement.executemany_tuples`` against
   ``Connection.execute(insert(table), rows)`` (µs per row);
2. a 100-value ``IN`` select: ``InListStatement.execute`` against
   ``Connection.execute(stmt, params)`` (µs per query).
"""

from __future__ import annotations

import argparse
import time

from sqlalchemy import Column, MetaData, String, Table, and_, bindparam, create_engine, insert, select

from hookspecs.fastsql import FastStatement, InListStatement


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--db", default="sqlite://")
    p.add_argument("--rows", type=int, default=20_000)
    args = p.parse_args()
    md = MetaData()
    t = Table("fastsql_bench", md, Column("store", String(40), primary_key=True), Column("kid", String(40), primary_key=True),
              Column("uid", String(40)))
    engine = create_engine(args.db)
    md.drop_all(engine)
    md.create_all(engine)
    keys = ("store", "kid", "uid")
    fast_insert = FastStatement(insert(t), list(keys))
    for name in ("core", "fastsql"):
        rows = [(name, f"k{i}", f"u{i}") for i in range(args.rows)]
        with engine.begin() as conn:
            t0 = time.perf_counter()
            if name == "core":
                conn.execute(insert(t), [dict(zip(keys, r)) for r in rows])
            else:
                fast_insert.executemany_tuples(conn, keys, rows)
            took = time.perf_counter() - t0
        print(f"insert {args.rows:,} rows  {name:8s} {took / args.rows * 1e6:6.1f} µs per row")
    stmt = select(t.c.kid, t.c.uid).where(and_(t.c.store == bindparam("store"), t.c.kid.in_(bindparam("kids", expanding=True))))
    fast = InListStatement(stmt, "kids")
    kids = [f"k{i}" for i in range(0, args.rows, max(1, args.rows // 100))][:100]
    with engine.connect() as conn:
        for name, run in (("core", lambda: conn.execute(stmt, {"store": "core", "kids": kids}).all()),
                          ("fastsql", lambda: fast.execute(conn, {"store": "core", "kids": kids}).all())):
            for _ in range(200):
                run()
            n = 2000
            t0 = time.perf_counter()
            for _ in range(n):
                run()
            print(f"select IN (100 values)  {name:8s} {(time.perf_counter() - t0) / n * 1e6:6.1f} µs per query")
    md.drop_all(engine)


if __name__ == "__main__":
    main()
