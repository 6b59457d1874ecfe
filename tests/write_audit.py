"""A write audit for split-brain tests: a trigger on every table logs each row written.

Installed in the real database (SQLite or PostgreSQL) under test, it sees every row a
process commits, whatever code wrote it; a rolled-back transaction leaves no audit row.
Comparing the audit's size before and after a worker wakes tells whether it committed
anything, even a rewrite of identical values.
"""

from __future__ import annotations

from sqlalchemy import create_engine, inspect, text

AUDIT_TABLE = "write_audit"


def install(db_url: str) -> None:
    """Create the audit table and a row trigger (insert, update, delete) on every table."""
    engine = create_engine(db_url)
    try:
        tables = [t for t in inspect(engine).get_table_names() if t != AUDIT_TABLE]
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text(f"CREATE TABLE {AUDIT_TABLE} (id bigserial PRIMARY KEY, tbl text, op text)"))
                conn.execute(text(
                    "CREATE FUNCTION write_audit_row() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    f"INSERT INTO {AUDIT_TABLE} (tbl, op) VALUES (TG_TABLE_NAME, TG_OP); RETURN NULL; END $$"
                ))
                for t in tables:
                    conn.execute(text(
                        f'CREATE TRIGGER audit_{t} AFTER INSERT OR UPDATE OR DELETE ON "{t}" '
                        "FOR EACH ROW EXECUTE FUNCTION write_audit_row()"
                    ))
            else:
                conn.execute(text(f"CREATE TABLE {AUDIT_TABLE} (id INTEGER PRIMARY KEY, tbl TEXT, op TEXT)"))
                for t in tables:
                    for op in ("INSERT", "UPDATE", "DELETE"):
                        conn.execute(text(
                            f'CREATE TRIGGER audit_{t}_{op.lower()} AFTER {op} ON "{t}" BEGIN '
                            f"INSERT INTO {AUDIT_TABLE} (tbl, op) VALUES ('{t}', '{op}'); END"
                        ))
    finally:
        engine.dispose()


def rows_after(db_url: str, mark: int) -> dict[tuple[str, str], int]:
    """``(table, operation) -> rows`` written since audit id ``mark``."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            found = conn.execute(
                text(f"SELECT tbl, op, count(*) FROM {AUDIT_TABLE} WHERE id > :mark GROUP BY tbl, op"), {"mark": mark}
            ).all()
    finally:
        engine.dispose()
    return {(t, op): n for t, op, n in found}


def mark(db_url: str) -> int:
    """The audit's newest id (``0``: nothing written yet)."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(f"SELECT coalesce(max(id), 0) FROM {AUDIT_TABLE}")).scalar_one()
    finally:
        engine.dispose()
