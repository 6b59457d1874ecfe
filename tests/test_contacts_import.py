"""``smartpush contacts import``: merges by email and phone, idempotent re-import, exports
importing into another store, and bad lines skipped with their number and reason."""

from __future__ import annotations

import json
import subprocess

import pytest

from smartpush_devhost.host import DevHost
from smartpush_devhost.importing import _TAG_LENGTH, MAX_DEPTH, import_contacts
from smartpush_devhost.transfer import iter_export


def _lines(*records) -> list[bytes]:
    return [json.dumps(r).encode() for r in records]


def _export(host, store):
    return list(iter_export(host.storage, host.contacts(store)))


def test_lines_merge_by_email_then_phone_and_a_second_import_changes_nothing(host, store_ids):
    (store,) = store_ids(1)
    contacts = host.contacts(store)
    first = _lines(
        {"email": "Ann@Example.com", "name": "Ann", "properties": {"a": 1}, "tags": ["vip"]},
        {"phone": "+14155550123", "name": "Bob"},
        {"email": "ann@example.COM ", "country": "US", "properties": {"b": 2}},  # same person, later line
    )
    result = import_contacts(host.storage, contacts, first)
    assert (result.created, result.updated, result.skipped) == (2, 0, [])
    again = import_contacts(host.storage, contacts, first)
    assert (again.created, again.updated, again.unchanged, again.skipped) == (0, 0, 2, [])
    later = import_contacts(host.storage, contacts, _lines(
        {"email": "ANN@example.com", "email_subscription": "subscribed", "tags": ["new"]},
        {"phone": "+14155550123", "email": "bob@example.com"},  # phone match gains an email
        {"email": "bob@example.com", "phone": "+14155550123"},  # now matches both ways: the same contact
    ))
    assert (later.created, later.updated, later.skipped) == (0, 2, [])
    records = {r["name"]: r for r in _export(host, store)}
    assert set(records) == {"Ann", "Bob"}
    ann = records["Ann"]
    assert ann["country"] == "US" and ann["properties"] == {"a": 1, "b": 2}
    assert ann["email_subscription"] == "subscribed" and ann["tags"] == ["new", "vip"]
    assert records["Bob"]["email"] == "bob@example.com"


def test_email_and_phone_of_two_different_contacts_is_skipped_not_merged(host, store_ids):
    (store,) = store_ids(1)
    contacts = host.contacts(store)
    import_contacts(host.storage, contacts, _lines({"email": "a@example.com"}, {"phone": "+14155550123"}))
    result = import_contacts(host.storage, contacts, _lines({"email": "a@example.com", "phone": "+14155550123"}))
    assert result.skipped == [(1, "its email or phone belongs to another contact")]
    assert len(_export(host, store)) == 2


def test_an_export_imports_into_another_store_keeping_every_uid_and_again_changes_nothing(host, store_ids):
    a, b = store_ids(2)
    import_contacts(host.storage, host.contacts(a), _lines(
        {"uid": "keep_me", "email": "a@example.com", "tags": ["t"]}, {"phone": "+447911123456", "name": "P"}))
    in_a = _export(host, a)
    exported = [json.dumps(r).encode() for r in in_a]
    result = import_contacts(host.storage, host.contacts(b), exported)
    assert (result.created, result.skipped) == (2, [])
    again = import_contacts(host.storage, host.contacts(b), exported)
    assert (again.created, again.updated, again.unchanged, again.skipped) == (0, 0, 2, [])
    in_b = _export(host, b)
    assert in_b == in_a  # every uid, field and tag kept (no Klaviyo ids in either store)
    assert "keep_me" in {r["uid"] for r in in_b}
    # the same uids now name two contacts, one per store: changing B's leaves A's alone
    changed = import_contacts(host.storage, host.contacts(b), _lines(
        {"uid": "keep_me", "email": "a@example.com", "name": "B's own", "properties": {"b": 1}, "tags": ["only_b"]}))
    assert (changed.created, changed.updated, changed.skipped) == (0, 1, [])
    assert _export(host, a) == in_a
    keep_b = next(r for r in _export(host, b) if r["uid"] == "keep_me")
    assert keep_b["name"] == "B's own" and keep_b["tags"] == ["only_b", "t"] and keep_b["email"] == "a@example.com"
    # into its own store, the export changes nothing either
    own = import_contacts(host.storage, host.contacts(a), exported)
    assert (own.created, own.updated, own.unchanged) == (0, 0, 2)


def test_a_uid_repeated_in_one_file_names_one_contact_whatever_the_batch(host, store_ids):
    (store,) = store_ids(1)
    lines = _lines({"uid": "u1", "email": "first@example.com"}, {"uid": "u1", "phone": "+14155550123", "name": "Same"})
    for batch in (1, 500):  # in one batch or two, the second line updates the contact the first made
        contacts = host.contacts(f"{store}-{batch}")
        result = import_contacts(host.storage, contacts, lines, batch=batch)
        assert (result.created, result.skipped) == (1, [])
        (record,) = _export(host, contacts.store_id)
        assert (record["uid"], record["email"], record["phone"], record["name"]) == (
            "u1", "first@example.com", "+14155550123", "Same")


BAD_LINES = [
    (b'{"email": "x\xff@example.com"}', "not valid UTF-8"),
    (b'{"email": "d@example.com", "properties": {"p": ' + b"[" * 5000 + b"]" * 5000 + b"}}",
     f"nested deeper than {MAX_DEPTH} levels"),
    (b'{"email": "d2@example.com", "properties": {"p": ' + b"[" * 40 + b"]" * 40 + b"}}",
     f"nested deeper than {MAX_DEPTH} levels"),
    (b'{"email": "n@example.com", "properties": {"p": NaN}}', "not valid JSON"),
    (b'{"email": "i@example.com", "properties": {"p": Infinity}}', "not valid JSON"),
    (b'{"email": "b@example.com", "properties": {"p": ' + b"9" * 400 + b"}}", "a number is too large"),
    (b'{"email": "f@example.com", "properties": {"p": 1e400}}', "a number is too large"),
    (b'{"email": "s@example.com", "properties": {"p": "\\ud800"}}', "invalid surrogate"),
    (b'{"email": "t@example.com", "tags": ["a\\u0000b"]}', "control character"),
    *([(b'{"email": "t2@example.com", "tags": ["' + b"x" * (_TAG_LENGTH + 1) + b'"]}', "a tag is longer than")]
      if _TAG_LENGTH else []),  # only while the tag column has a length limit
]


def test_bad_lines_are_skipped_with_number_and_reason_and_the_rest_imports(host, store_ids):
    (store,) = store_ids(1)
    good = [b'{"email": "ok%d@example.com", "properties": {"big": 18446744073709551615, "neg": -9223372036854775808, '
            b'"f": 1.5e300, "deep": %s}}' % (i, b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1)) for i in range(3)]
    lines = [good[0], *[line for line, _ in BAD_LINES], good[1], good[2]]
    result = import_contacts(host.storage, host.contacts(store), lines)
    assert result.created == 3
    assert [n for n, _ in result.skipped] == list(range(2, 2 + len(BAD_LINES)))
    for (lineno, reason), (_, want) in zip(result.skipped, BAD_LINES):
        assert want in reason, (lineno, reason)
    # what was stored reads back exactly: export, and the lookups a sync makes
    records = _export(host, store)
    assert records[0]["properties"]["big"] == 2**64 - 1 and records[0]["properties"]["neg"] == -(2**63)
    contacts = host.contacts(store)
    with host.storage.transaction(readonly=True) as tx:
        uids = contacts.find_by_emails(tx, ["ok1@example.com"])["ok1@example.com"]
        assert contacts.get_many(tx, uids)[uids[0]].properties["f"] == 1.5e300


def test_cli_import_exits_6_and_says_how_many_lines_were_skipped(tmp_path, db_url):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"email": "a@example.com"}\n' + BAD_LINES[0][0] + b"\n" + BAD_LINES[1][0] + b"\n")
    env_cmd = ["smartpush", "--home", str(tmp_path / "home"), "--db", db_url, "contacts", "import"]
    out = subprocess.run([*env_cmd, str(src)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 6, out.stderr
    assert "created 1, updated 0, unchanged 0, skipped 2" in out.stdout
    assert "line 2: not valid UTF-8" in out.stderr and "line 3: nested deeper" in out.stderr
    assert "2 line(s) skipped" in out.stderr and "Traceback" not in out.stderr
    again = subprocess.run([*env_cmd, "--json", str(src)], capture_output=True, text=True, timeout=120)
    report = json.loads(again.stdout)
    assert (report["created"], report["unchanged"], report["skipped"]) == (0, 1, 2)
    assert [s["line"] for s in report["skipped_lines"]] == [2, 3]
    export = subprocess.run(["smartpush", "--home", str(tmp_path / "home"), "--db", db_url, "contacts", "export"],
                            capture_output=True, text=True, timeout=120)
    assert export.returncode == 0 and len(export.stdout.splitlines()) == 1


def test_cli_export_of_one_store_imports_into_another_with_the_same_uids(tmp_path, db_url):
    smartpush = ["smartpush", "--home", str(tmp_path / "home"), "--db", db_url]

    def run(store, *args):
        out = subprocess.run([*smartpush, "--store", store, "contacts", *args], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in (
        {"email": "a@example.com", "tags": ["t"]}, {"phone": "+447911123456"}, {"uid": "own", "email": "o@example.com"})))
    run("shop-a", "import", str(src))
    run("shop-a", "export", "-o", str(tmp_path / "a.jsonl"))
    first = json.loads(run("shop-b", "import", "--json", str(tmp_path / "a.jsonl")))
    second = json.loads(run("shop-b", "import", "--json", str(tmp_path / "a.jsonl")))
    assert (first["created"], first["skipped"]) == (3, 0)
    assert (second["created"], second["updated"], second["unchanged"]) == (0, 0, 3)
    assert run("shop-b", "export") == (tmp_path / "a.jsonl").read_text()  # every uid, field and tag


@pytest.fixture
def host(tmp_path, db_url):
    h = DevHost(db_url, tmp_path / "home", env={})
    yield h
    h.close()


def test_a_line_the_database_refuses_is_skipped_alone(host, store_ids):
    """A line only the database refuses (here a real CHECK / trigger on the real table) is
    skipped with a reason; the other lines of its batch are imported."""
    from sqlalchemy import text

    (store,) = store_ids(1)
    contacts = host.contacts(store)
    # a real CHECK added to the real table: names "refuse-me" are refused by the database itself
    with host.storage.transaction() as tx:
        if host.storage.engine.dialect.name == "postgresql":
            tx.execute(text("ALTER TABLE sp_contact_tags ADD CONSTRAINT no_refused CHECK (tag <> 'refuse-me')"))
        else:
            tx.execute(text("CREATE TRIGGER no_refused BEFORE INSERT ON sp_contact_tags WHEN NEW.tag = 'refuse-me' "
                            "BEGIN SELECT RAISE(ABORT, 'refused'); END"))
    result = import_contacts(host.storage, contacts, _lines(
        {"email": "a@example.com"}, {"email": "b@example.com", "tags": ["refuse-me"]}, {"email": "c@example.com"}))
    assert (result.created, [n for n, _ in result.skipped]) == (2, [2])
    assert "the database refused it" in result.skipped[0][1]
    assert sorted(r["email"] for r in _export(host, store)) == ["a@example.com", "c@example.com"]
