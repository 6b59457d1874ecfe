"""hookspecs.fastsql: the driver-level statements behave exactly like ``Connection.execute``.

Runs on SQLite (positional ``?``) and, with ``SMARTPUSH_TEST_DATABASE=postgres``, on
PostgreSQL through psycopg (named ``%(name)s``).
"""

from __future__ import annotations

import pytest
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    TypeDecorator,
    and_,
    bindparam,
    create_engine,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError

from hookspecs import fastsql
from hookspecs.fastsql import FastStatement, InListStatement


class _Upper(TypeDecorator):
    """A type with a bind processor: values are stored upper-cased."""

    impl = String(64)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return value.upper() if value is not None else None


_meta = MetaData()
_items = Table(
    "fastsql_items",
    _meta,
    Column("store", String(64), primary_key=True),
    Column("kid", String(64), primary_key=True),
    Column("code", _Upper(), nullable=True),
    Column("gen", Integer, nullable=False, default=0),
)
_codes = Table("fastsql_codes", _meta, Column("code", _Upper(), primary_key=True), Column("n", Integer))
_plain = Table("fastsql_plain", _meta, Column("code", String(64), primary_key=True), Column("n", Integer))


@pytest.fixture
def engine(db_url):
    eng = create_engine(db_url)
    _meta.create_all(eng)
    with eng.begin() as conn:
        conn.execute(
            insert(_items),
            [{"store": s, "kid": f"k{i}", "code": f"c{i % 7}", "gen": i % 3} for s in ("a", "b") for i in range(600)],
        )
        conn.execute(insert(_codes), [{"code": f"x{i}", "n": i} for i in range(20)])
    yield eng
    eng.dispose()


_SELECT = select(_items.c.kid, _items.c.gen).where(
    and_(_items.c.store == bindparam("store"), _items.c.kid.in_(bindparam("kids", expanding=True)))
)


def _both(conn, stmt, fast, params):
    expected = sorted(tuple(r) for r in conn.execute(stmt, params))
    got = sorted(tuple(r) for r in fast.execute(conn, params))
    return expected, got


@pytest.mark.parametrize("n", [0, 1, 3, 100, 500, 700])
def test_select_matches_core(engine, n):
    fast = InListStatement(_SELECT, "kids")
    kids = [f"k{i}" for i in range(0, 2 * n, 2)]  # half of them beyond k599 when n is large
    with engine.connect() as conn:
        expected, got = _both(conn, _SELECT, fast, {"store": "a", "kids": kids})
        assert got == expected
        assert len(got) == len([k for k in kids if int(k[1:]) < 600])
        # the same length again, from the cache, with other values
        expected, got = _both(conn, _SELECT, fast, {"store": "b", "kids": [f"k{i + 1}" for i in range(n)]})
        assert got == expected


def test_rows_read_by_name_and_scalars(engine):
    fast = InListStatement(_SELECT, "kids")
    with engine.connect() as conn:
        rows = list(fast.execute(conn, {"store": "a", "kids": ["k4", "k5", "nope"]}))
        assert sorted((r.kid, r.gen) for r in rows) == [("k4", 1), ("k5", 2)]
        assert sorted(fast.execute(conn, {"store": "a", "kids": ("k4", "k5")}).scalars()) == ["k4", "k5"]
        # any iterable of values
        assert sorted(fast.execute(conn, {"store": "a", "kids": iter(["k6"])}).scalars()) == ["k6"]


def test_update_with_binds_before_and_after_the_list(engine):
    # SET gen=? comes before the IN values, "code = ?" after them
    stmt = (
        update(_items)
        .where(
            and_(
                _items.c.store == bindparam("store"),
                _items.c.kid.in_(bindparam("kids", expanding=True)),
                _items.c.code == bindparam("code_"),
            )
        )
        .values(gen=bindparam("gen_"))
    )
    fast = InListStatement(stmt, "kids")
    kids = [f"k{i}" for i in range(70)]
    with engine.begin() as conn:
        result = fast.execute(conn, {"store": "a", "kids": kids, "code_": "c3", "gen_": 42})
        assert result.rowcount == 10  # k3, k10, ..., k66
        changed = conn.execute(select(_items.c.kid).where(_items.c.gen == 42)).scalars().all()
        assert sorted(changed) == sorted(f"k{i}" for i in range(3, 70, 7))


def test_delete_and_a_constant_of_the_statement(engine):
    # store == "b" is a value carried by the statement itself, not a caller's parameter
    stmt = delete(_items).where(and_(_items.c.store == "b", _items.c.kid.in_(bindparam("kids", expanding=True))))
    fast = InListStatement(stmt, "kids")
    with engine.begin() as conn:
        assert fast.execute(conn, {"kids": ["k1", "k2", "k999"]}).rowcount == 2
        left = conn.execute(select(_items.c.store, _items.c.kid).where(_items.c.kid.in_(["k1", "k2"]))).all()
        assert sorted(left) == [("a", "k1"), ("a", "k2")]


def test_bind_processors_apply_to_the_list_and_the_other_binds(engine):
    stmt = select(_codes.c.n).where(
        and_(_codes.c.code.in_(bindparam("codes", expanding=True)), _codes.c.code != bindparam("not_"))
    )
    fast = InListStatement(stmt, "codes")
    params = {"codes": ["x1", "x2", "X3", "y"], "not_": "x2"}
    with engine.connect() as conn:
        expected, got = _both(conn, stmt, fast, params)
    assert got == expected == [(1,), (3,)]


def test_bind_names_must_be_plain_identifiers(engine):
    # SQLAlchemy would render such names escaped for named paramstyles: refused up front
    stmt = select(_items.c.kid).where(
        and_(_items.c.store == bindparam("st.ore"), _items.c.kid.in_(bindparam("the kids", expanding=True)))
    )
    with engine.connect() as conn, pytest.raises(ValueError, match="plain identifiers"):
        InListStatement(stmt, "the kids").execute(conn, {"st.ore": "a", "the kids": ["k1", "k2"]})


def test_rendered_sql_is_cached_per_length(engine, monkeypatch):
    monkeypatch.setattr(fastsql, "IN_LIST_CACHED_LENGTHS", 5)
    fast = InListStatement(_SELECT, "kids")
    with engine.connect() as conn:
        for n in (2, 2, 3, 6):
            fast.execute(conn, {"store": "a", "kids": ["k1"] * n}).all()
    assert sorted(key[-1] for key in fast._rendered) == [2, 3]


def test_refuses_a_name_that_is_not_an_expanding_bind(engine):
    with engine.connect() as conn, pytest.raises(ValueError, match="not an expanding bind"):
        InListStatement(_SELECT, "store").execute(conn, {"store": ["a"], "kids": ["k1"]})


def test_fast_statement_rows_with_one_and_several_keys(engine):
    one = FastStatement(insert(_plain), ["code"])  # itemgetter of one key: no tuple
    several = FastStatement(insert(_plain), ["code", "n"])
    with engine.begin() as conn:
        one.executemany(conn, [{"code": "p1"}, {"code": "p2"}])
        several.executemany(conn, [{"n": 5, "code": "q1"}, {"code": "q2", "n": 6}])
        rows = conn.execute(select(_plain.c.code, _plain.c.n))
        assert sorted(rows) == [("p1", None), ("p2", None), ("q1", 5), ("q2", 6)]


def test_fast_statement_tuples_in_any_key_order(engine):
    insert_plain = FastStatement(insert(_plain), ["code", "n"])
    # the UPDATE binds SET n first, then the WHERE code: the tuples come in another order
    update_plain = FastStatement(update(_plain).where(_plain.c.code == bindparam("b_code")).values(n=bindparam("b_n")))
    with engine.begin() as conn:
        insert_plain.executemany_tuples(conn, ("code", "n"), [("t1", 1), ("t2", 2)])  # the statement's own order
        insert_plain.executemany_tuples(conn, ("n", "code"), [(3, "t3")])
        assert update_plain.executemany_tuples(conn, ("b_code", "b_n"), [("t1", 10), ("t3", 30)]).rowcount == 2
        assert sorted(conn.execute(select(_plain.c.code, _plain.c.n))) == [("t1", 10), ("t2", 2), ("t3", 30)]
    with engine.begin() as conn, pytest.raises((ValueError, DBAPIError)):  # a bind the tuples lack
        update_plain.executemany_tuples(conn, ("b_code",), [("t1",)])
