"""The contact store: CRUD, tags, lookups, store isolation, nothing readable at rest."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from smartpush_devhost.host import DevHost
from hookspecs.interfaces import Contact, ContactStore, NewContact


def _people(n: int, domain: str = "shop.example") -> list[NewContact]:
    return [
        NewContact(
            email=f"Person.{i}@{domain}",
            phone=f"+4915112345{i:03d}",
            name=f"Person {i}",
            country="DE",
            email_subscription="subscribed" if i % 2 else "unsubscribed",
            sms_subscription=None,
            properties={"kla_index": i, "kla_backup_email": f"backup{i}@private.example"},
        )
        for i in range(n)
    ]


def test_implements_the_interface(host, store_ids):
    (store,) = store_ids(1)
    assert isinstance(host.context(store).contacts, ContactStore)


def test_create_get_update_count_iter(host, store_ids):
    (store,) = store_ids(1)
    cs = host.contacts(store)
    people = _people(250)
    with host.storage.transaction() as tx:
        uids = cs.create_many(tx, people)
    assert len(set(uids)) == 250 and uids == sorted(uids)
    with host.storage.transaction() as tx:
        got = cs.get_many(tx, uids[:3] + ["sp_missing"])
        assert set(got) == set(uids[:3])
        c = got[uids[1]]
        assert (c.email, c.phone, c.name, c.country) == ("Person.1@shop.example", "+4915112345001", "Person 1", "DE")
        assert c.email_subscription == "subscribed" and c.sms_subscription is None
        assert c.properties["kla_index"] == 1
        assert "Person" not in repr(c)
        c.name, c.email, c.properties = "Renamed", "new@shop.example", {"kla_x": [1, 2]}
        cs.update_many(tx, [c])
    with host.storage.transaction() as tx:
        again = cs.get_many(tx, [uids[1]])[uids[1]]
        assert (again.name, again.email, again.properties) == ("Renamed", "new@shop.example", {"kla_x": [1, 2]})
        assert cs.find_by_emails(tx, ["person.1@shop.example"]) == {"person.1@shop.example": []}
        assert cs.find_by_emails(tx, [" NEW@shop.example "])[" NEW@shop.example "] == [uids[1]]
        assert cs.count(tx) == 250
        streamed = list(cs.iter_all(tx))
        assert [s.uid for s in streamed] == uids
        with pytest.raises(LookupError):
            cs.update_many(tx, [Contact(uid="sp_nope", email="x@y.z")])


def test_lookups(host, store_ids):
    (store,) = store_ids(1)
    cs = host.contacts(store)
    with host.storage.transaction() as tx:
        a, b, c = cs.create_many(
            tx,
            [NewContact(email="Dup@X.io"), NewContact(email="dup@x.io", phone="+14155550100"), NewContact(phone="+14155550101")],
        )
        emails = cs.find_by_emails(tx, ["DUP@x.io", "none@x.io"])
        assert emails == {"DUP@x.io": sorted([a, b]), "none@x.io": []}
        phones = cs.find_by_phones(tx, ["+14155550100", "+14155550101", "+14155550102"])
        assert phones == {"+14155550100": [b], "+14155550101": [c], "+14155550102": []}


def test_tags(host, store_ids):
    (store,) = store_ids(1)
    cs = host.contacts(store)
    with host.storage.transaction() as tx:
        u1, u2, u3 = cs.create_many(tx, _people(3))
        assert cs.add_tags(tx, [(u1, "a"), (u2, "a"), (u1, "b"), (u1, "a")]) == 3
        assert cs.add_tags(tx, [(u1, "a"), (u3, "a")]) == 1
        assert cs.tags_of(tx, [u1, u2, u3, "sp_x"]) == {u1: {"a", "b"}, u2: {"a"}, u3: {"a"}, "sp_x": set()}
        assert cs.remove_tags(tx, [(u3, "a"), (u3, "zzz")]) == 1
        # u1 has both: renaming a -> b must not duplicate the pair
        assert cs.rename_tag(tx, "a", "b") == 2
        assert cs.tags_of(tx, [u1, u2, u3]) == {u1: {"b"}, u2: {"b"}, u3: set()}
        assert cs.rename_tag(tx, "missing", "c") == 0
        assert cs.delete_tag(tx, "b") == 2
        assert cs.tags_of(tx, [u1, u2]) == {u1: set(), u2: set()}


def test_add_tags_selected_runs_a_query_of_pairs_in_the_database(host, store_ids):
    from sqlalchemy import Column, MetaData, String, Table, insert, select

    a, b = store_ids(2)
    ca, cb = host.contacts(a), host.contacts(b)
    pairs_t = Table(f"test_pairs_{a}", MetaData(), Column("uid", String(64)), Column("tag", String(200)))
    with host.storage.transaction() as tx:
        pairs_t.create(tx)
        u1, u2 = ca.create_many(tx, _people(2))
        (other,) = cb.create_many(tx, _people(1))
        ca.add_tags(tx, [(u1, "kept")])
        rows = [(u1, "kept"), (u1, "new"), (u2, "new"), (u2, "new"), (other, "new"), ("sp_nobody", "new")]
        tx.execute(insert(pairs_t), [{"uid": u, "tag": t} for u, t in rows])
        # present pairs, repeated pairs, another store's contact and no contact at all: passed over
        assert ca.add_tags_selected(tx, select(pairs_t.c.uid, pairs_t.c.tag)) == 2
        assert ca.add_tags_selected(tx, select(pairs_t.c.uid, pairs_t.c.tag)) == 0
        assert ca.tags_of(tx, [u1, u2]) == {u1: {"kept", "new"}, u2: {"new"}}
        assert cb.tags_of(tx, [other]) == {other: set()}
        pairs_t.drop(tx)


def test_stores_are_isolated(host, store_ids):
    a, b = store_ids(2)
    ca, cb = host.contacts(a), host.contacts(b)
    with host.storage.transaction() as tx:
        (ua,) = ca.create_many(tx, [NewContact(email="same@x.io", phone="+14155550100")])
        (ub,) = cb.create_many(tx, [NewContact(email="same@x.io", phone="+14155550100")])
        ca.add_tags(tx, [(ua, "t")])
        cb.add_tags(tx, [(ub, "t")])
    with host.storage.transaction() as tx:
        assert cb.get_many(tx, [ua]) == {}
        assert ca.find_by_emails(tx, ["same@x.io"])["same@x.io"] == [ua]
        assert cb.find_by_phones(tx, ["+14155550100"])["+14155550100"] == [ub]
        assert [c.uid for c in cb.iter_all(tx)] == [ub] and cb.count(tx) == 1
        assert cb.remove_tags(tx, [(ua, "t")]) == 0
        assert cb.delete_tag(tx, "t") == 1
        assert ca.tags_of(tx, [ua]) == {ua: {"t"}}
        with pytest.raises(LookupError):
            cb.update_many(tx, [Contact(uid=ua, email="stolen@x.io")])
    # a tag row can only point at a contact of its own store (composite foreign key)
    with pytest.raises(IntegrityError):
        with host.storage.transaction() as tx:
            cb.add_tags(tx, [(ua, "evil")])
    with host.storage.transaction() as tx:
        assert ca.get_many(tx, [ua])[ua].email == "same@x.io"


def test_the_same_uid_lives_in_two_stores_and_each_store_sees_only_its_own(host, store_ids):
    """A contact is (store_id, uid): the same uid in two stores names two contacts."""
    a, b = store_ids(2)
    ca, cb = host.contacts(a), host.contacts(b)
    with host.storage.transaction() as tx:
        assert ca.create_many(tx, [NewContact(email="ann@a.io", name="Ann", properties={"s": "a"})], uids=["u1"]) == ["u1"]
        assert cb.create_many(tx, [NewContact(phone="+14155550199", name="Bob", properties={"s": "b"})], uids=["u1"]) == ["u1"]
        ca.add_tags(tx, [("u1", "only_a")])
        cb.add_tags(tx, [("u1", "only_b")])
    with host.storage.transaction() as tx:
        got_a, got_b = ca.get_many(tx, ["u1"])["u1"], cb.get_many(tx, ["u1"])["u1"]
        assert (got_a.name, got_a.email, got_a.properties) == ("Ann", "ann@a.io", {"s": "a"})
        assert (got_b.name, got_b.phone, got_b.email, got_b.properties) == ("Bob", "+14155550199", None, {"s": "b"})
        assert ca.tags_of(tx, ["u1"]) == {"u1": {"only_a"}} and cb.tags_of(tx, ["u1"]) == {"u1": {"only_b"}}
        assert ca.find_by_phones(tx, ["+14155550199"])["+14155550199"] == []
        assert cb.find_by_emails(tx, ["ann@a.io"])["ann@a.io"] == []
        assert [c.name for c in ca.iter_all(tx)] == ["Ann"] and [c.name for c in cb.iter_all(tx)] == ["Bob"]
        assert ca.existing(tx, ["u1"]) == ["u1"] and cb.existing(tx, ["u2"]) == []
        # writes through one store never reach the other's contact of the same uid
        cb.update_many(tx, [Contact(uid="u1", name="Bob 2", email="bob@b.io")])
        assert cb.remove_tags(tx, [("u1", "only_a")]) == 0
        cb.rename_tag(tx, "only_b", "renamed")
        assert ca.delete_tag(tx, "renamed") == 0
    with host.storage.transaction() as tx:
        assert ca.get_many(tx, ["u1"])["u1"] == got_a and ca.tags_of(tx, ["u1"]) == {"u1": {"only_a"}}
        assert cb.get_many(tx, ["u1"])["u1"].name == "Bob 2" and cb.tags_of(tx, ["u1"]) == {"u1": {"renamed"}}
        assert cb.find_by_emails(tx, ["bob@b.io"])["bob@b.io"] == ["u1"]
        assert ca.find_by_emails(tx, ["bob@b.io"])["bob@b.io"] == []
    # one store cannot hold a uid twice
    with pytest.raises(IntegrityError):
        with host.storage.transaction() as tx:
            ca.create_many(tx, [NewContact(email="again@a.io")], uids=["u1"])
    with host.storage.transaction() as tx:
        assert ca.count(tx) == 1 and cb.count(tx) == 1


def test_rollback_on_error(host, store_ids):
    (store,) = store_ids(1)
    cs = host.contacts(store)
    with pytest.raises(RuntimeError):
        with host.storage.transaction() as tx:
            cs.create_many(tx, _people(5))
            raise RuntimeError("boom")
    with host.storage.transaction() as tx:
        assert cs.count(tx) == 0


def test_nested_transaction_joins_the_outer_one(host, store_ids):
    """host.secrets.put inside a plugin's own transaction must not deadlock on SQLite."""
    (store,) = store_ids(1)
    ctx = host.context(store)
    with host.storage.transaction() as tx:
        ctx.contacts.create_many(tx, _people(1))
        ctx.secrets.put("k", "v")
        ctx.scheduler.unschedule("klaviyo")
    assert ctx.secrets.get("k") == "v"


def test_database_file_holds_no_plain_pii(tmp_path):
    host = DevHost(None, tmp_path / "home", env={})
    ctx = host.context("pii-check")
    people = _people(40, domain="very-unique-domain.example")
    with host.storage.transaction() as tx:
        uids = ctx.contacts.create_many(tx, people)
        ctx.contacts.update_many(tx, [Contact(uid=uids[0], email="updated@very-unique-domain.example", phone="+4915199999999")])
    ctx.secrets.put("api_key", "pk_live_supersecretvalue")
    host.close()
    assert (Path(tmp_path / "home" / "smartpush.db").stat().st_mode & 0o777) == 0o600
    raw = b"".join(p.read_bytes() for p in Path(tmp_path / "home").glob("smartpush.db*"))
    assert len(raw) > 10_000
    for needle in [b"very-unique-domain", b"private.example", b"4915112345", b"4915199999999",
                   b"Person 1", b"pk_live_supersecretvalue", "very-unique-domain".encode("utf-16-le")]:
        assert needle not in raw, needle


WRITER = r"""
import sys
from smartpush_devhost.host import DevHost
from hookspecs.interfaces import NewContact
url, home, store = sys.argv[1:4]
host = DevHost(url, home, env={})
cs = host.contacts(store)
for batch in range(15):
    with host.storage.transaction() as tx:
        # read-then-write in one transaction: the pattern that deadlocks without BEGIN IMMEDIATE
        before = cs.count(tx)
        uids = cs.create_many(tx, [NewContact(email=f"{store}-{batch}-{i}@x.io") for i in range(40)])
        cs.add_tags(tx, [(u, f"batch{before}") for u in uids])
    host.context(store).secrets.put("progress", str(batch))
"""


def test_concurrent_writer_processes(tmp_path, db_url, store_ids):
    import subprocess
    import sys

    stores = store_ids(3)
    DevHost(db_url, tmp_path, env={}).close()  # create key file and tables first
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, db_url, str(tmp_path), s],
                              stderr=subprocess.PIPE, text=True) for s in stores]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()[-2000:]
    host = DevHost(db_url, tmp_path, env={})
    with host.storage.transaction() as tx:
        for s in stores:
            cs = host.contacts(s)
            assert cs.count(tx) == 15 * 40
            assert cs.find_by_emails(tx, [f"{s}-14-39@x.io"])[f"{s}-14-39@x.io"]
    assert host.context(stores[0]).secrets.get("progress") == "14"


def test_a_contact_row_takes_about_its_size_on_disk(tmp_path, store_ids):
    """A Klaviyo profile with its consent evidence and properties makes a 1.5-2 KB
    encrypted row. A WITHOUT ROWID table keeps at most ~1 KB of a row in its page and
    spills the rest to an overflow page of its own (~4.5 KB per contact, all of it written
    twice: WAL and checkpoint); the rowid table packs two such rows in a 4 KB page."""
    host = DevHost(f"sqlite:///{tmp_path / 'size.db'}", tmp_path / "home", env={})
    try:
        (store,) = store_ids(1)
        cs = host.contacts(store)
        people = _people(400)
        for i, p in enumerate(people):
            p.properties = {f"kla_prop_{k}": f"value {i} {k} " + "x" * 20 for k in range(32)}
        with host.storage.transaction() as tx:
            cs.create_many(tx, people)
            blob = tx.exec_driver_sql("SELECT avg(length(data)) FROM sp_contacts").scalar_one()
            try:
                pages = tx.exec_driver_sql("SELECT count(*) FROM dbstat WHERE name = 'sp_contacts'").scalar_one()
            except OperationalError:
                pytest.skip("this SQLite has no dbstat table")
            page_size = tx.exec_driver_sql("PRAGMA page_size").scalar_one()
        assert 1500 < blob < 2000
        assert pages * page_size < 400 * blob * 1.5
    finally:
        host.close()
