"""A database made by the previous version (contacts keyed by a host-wide ``uid``) is
upgraded in place at the first start: contacts become ``(store_id, uid)``, nothing lost."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import pytest
from sqlalchemy import Column, ForeignKeyConstraint, Index, MetaData, Table, UniqueConstraint, create_engine, inspect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.schema import CreateTable

from hookspecs.interfaces import NewContact
from smartpush_devhost import schema_upgrade
from smartpush_devhost.contacts import _ROW_KEYS, SqlContactStore
from smartpush_devhost.crypto import Keyring, MasterKey, load_keyring
from smartpush_devhost.host import DevHost
from smartpush_devhost.models import contacts_t, stores_t, tags_t, utcnow


def _previous_schema() -> MetaData:
    """The host's contact tables as the previous version created them."""
    old = MetaData()
    stores_t.to_metadata(old)
    columns = sorted(contacts_t.columns, key=lambda c: c.name != "uid")  # uid came first
    Table(
        contacts_t.name, old,
        *(Column(c.name, c.type, nullable=c.nullable, primary_key=c.name == "uid") for c in columns),
        UniqueConstraint("store_id", "uid", name="uq_sp_contacts_store_uid"),
        Index("ix_sp_contacts_email", "store_id", "email_bidx"),
        Index("ix_sp_contacts_phone", "store_id", "phone_bidx"),
        ForeignKeyConstraint(["store_id"], ["sp_stores.store_id"], name="fk_sp_contacts_store"),
    )
    tags_t.to_metadata(old)
    return old


def _fill_previous(db_url: str, keyring: Keyring, stores: dict[str, list[tuple[str, NewContact, list[str]]]]) -> None:
    old = _previous_schema()
    engine = create_engine(db_url)
    old.create_all(engine)
    with engine.begin() as conn:
        for store, people in stores.items():
            conn.execute(old.tables["sp_stores"].insert(), [{"store_id": store, "created_at": utcnow()}])
            writer = SqlContactStore(store, keyring)
            rows = [dict(zip(_ROW_KEYS, writer._row(uid, c, None)), store_id=store) for uid, c, _ in people]
            conn.execute(old.tables["sp_contacts"].insert(), rows)
            tags = [{"store_id": store, "contact_uid": uid, "tag": t} for uid, _, ts in people for t in ts]
            conn.execute(old.tables["sp_contact_tags"].insert(), tags)
    assert inspect(engine).get_pk_constraint("sp_contacts")["constrained_columns"] == ["uid"]
    engine.dispose()


def test_a_previous_database_is_upgraded_at_start_keeping_every_contact_and_tag(tmp_path, db_url, store_ids):
    a, b = store_ids(2)
    keyring = Keyring([MasterKey(os.urandom(32))])
    _fill_previous(db_url, keyring, {
        a: [("sp_a1", NewContact(email="ann@a.io", name="Ann", properties={"k": 1}), ["vip", "x"]),
            ("sp_a2", NewContact(phone="+14155550123"), [])],
        b: [("sp_b1", NewContact(email="ann@a.io", name="Ann in B"), ["b"])],
    })

    host = DevHost(db_url, tmp_path / "home", env={}, keyring=keyring)

    engine_view = inspect(host.storage.engine)
    assert engine_view.get_pk_constraint("sp_contacts")["constrained_columns"] == ["store_id", "uid"]
    assert {ix["name"] for ix in engine_view.get_indexes("sp_contacts")} >= {"ix_sp_contacts_email", "ix_sp_contacts_phone"}
    assert not [u for u in engine_view.get_unique_constraints("sp_contacts") if u["name"] == "uq_sp_contacts_store_uid"]
    ca, cb = host.contacts(a), host.contacts(b)
    with host.storage.transaction() as tx:
        got = ca.get_many(tx, ["sp_a1", "sp_a2"])
        assert (got["sp_a1"].name, got["sp_a1"].properties, got["sp_a2"].phone) == ("Ann", {"k": 1}, "+14155550123")
        assert ca.tags_of(tx, ["sp_a1", "sp_a2"]) == {"sp_a1": {"vip", "x"}, "sp_a2": set()}
        assert ca.find_by_emails(tx, ["ANN@a.io"])["ANN@a.io"] == ["sp_a1"]
        assert cb.find_by_emails(tx, ["ann@a.io"])["ann@a.io"] == ["sp_b1"]
        assert cb.tags_of(tx, ["sp_b1"]) == {"sp_b1": {"b"}}
        # the new key at work: store B takes a uid of store A
        cb.create_many(tx, [NewContact(email="other@b.io")], uids=["sp_a1"])
        cb.add_tags(tx, [("sp_a1", "b_tag")])
    with host.storage.transaction() as tx:
        assert cb.get_many(tx, ["sp_a1"])["sp_a1"].email == "other@b.io"
        assert ca.get_many(tx, ["sp_a1"])["sp_a1"].email == "ann@a.io"
        assert ca.tags_of(tx, ["sp_a1"]) == {"sp_a1": {"vip", "x"}}
    # the tags still point at contacts of their own store (foreign key kept)
    with pytest.raises(IntegrityError):
        with host.storage.transaction() as tx:
            ca.add_tags(tx, [("sp_b1", "not_in_a")])
    # deleting a contact still removes its tags (ON DELETE CASCADE kept)
    with host.storage.transaction() as tx:
        tx.execute(contacts_t.delete().where((contacts_t.c.store_id == a) & (contacts_t.c.uid == "sp_a1")))
        assert ca.tags_of(tx, ["sp_a1"]) == {"sp_a1": set()} and cb.tags_of(tx, ["sp_a1"]) == {"sp_a1": {"b_tag"}}
    host.close()
    # the upgrade built its DDL from copies: new databases still get the tags' foreign key
    assert "fk_sp_contact_tags_contact" in str(CreateTable(tags_t).compile(dialect=host.storage.engine.dialect))
    # once upgraded, a start changes nothing
    again = DevHost(db_url, tmp_path / "home", env={}, keyring=keyring)
    assert schema_upgrade.upgrade(again.storage.engine) is False
    with again.storage.transaction() as tx:
        assert again.contacts(a).count(tx) == 1 and again.contacts(b).count(tx) == 2
    again.close()


def test_processes_starting_together_on_a_previous_database_upgrade_it_once(tmp_path, db_url, store_ids):
    (store,) = store_ids(1)
    env = {"SMARTPUSH_MASTER_KEY": base64.b64encode(os.urandom(32)).decode()}
    keyring = load_keyring(tmp_path, env)
    people = [(f"sp_{i:04d}", NewContact(email=f"p{i}@x.io", properties={"i": i}), [f"t{i % 3}"]) for i in range(300)]
    _fill_previous(db_url, keyring, {store: people})
    start = ("import sys; from smartpush_devhost.host import DevHost; "
             "DevHost(sys.argv[1], sys.argv[2], env={'SMARTPUSH_MASTER_KEY': sys.argv[3]}).close()")
    procs = [subprocess.Popen([sys.executable, "-c", start, db_url, str(tmp_path / f"home{i}"), env["SMARTPUSH_MASTER_KEY"]],
                              stderr=subprocess.PIPE, text=True) for i in range(3)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    host = DevHost(db_url, tmp_path / "home", env=env)
    assert inspect(host.storage.engine).get_pk_constraint("sp_contacts")["constrained_columns"] == ["store_id", "uid"]
    contacts = host.contacts(store)
    with host.storage.transaction() as tx:
        got = contacts.get_many(tx, [uid for uid, _, _ in people])
        assert [got[uid].properties["i"] for uid, _, _ in people] == list(range(300))
        assert contacts.tag_counts(tx) == {"t0": 100, "t1": 100, "t2": 100}
    host.close()
