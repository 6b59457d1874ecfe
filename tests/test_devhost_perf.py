"""The contact store's batch operations cost a fixed number of statements per batch.

A regression to a statement per contact (an N+1 query) is what would make a large sync slow;
counting the statements each call sends catches it on any machine, quiet or loaded, on SQLite
and PostgreSQL alike. Throughput itself is measured by ``benchmarks/contact_store.py``
(figures, not a timed test).
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager

from sqlalchemy import event

from hookspecs.interfaces import NewContact


def _people(start: int, n: int) -> list[NewContact]:
    return [
        NewContact(email=f"User{i}@Example.com", phone=f"+1415555{i:04d}", name=f"User {i}", country="US",
                   email_subscription="subscribed", properties={"kla_i": i, "kla_city": "Springfield"})
        for i in range(start, start + n)
    ]


@contextmanager
def _statements(engine):
    """Counts the statements sent to the driver, by the call they were sent for."""
    sent: Counter = Counter()
    current = {"call": None}

    def on_execute(conn, cursor, statement, parameters, context, executemany):
        if current["call"] is not None:
            sent[current["call"]] += 1

    event.listen(engine, "before_cursor_execute", on_execute)
    try:
        yield sent, current
    finally:
        event.remove(engine, "before_cursor_execute", on_execute)


def _batch(host, cs, people: list[NewContact]) -> Counter:
    """Create ``people``, then find, read and update them, each step one call for the batch."""
    with _statements(host.storage.engine) as (sent, current), host.storage.transaction() as tx:
        current["call"] = "create_many"
        uids = cs.create_many(tx, people)
        current["call"] = "find_by_emails"
        found = cs.find_by_emails(tx, [p.email for p in people])
        current["call"] = "find_by_phones"
        cs.find_by_phones(tx, [p.phone for p in people])
        current["call"] = "get_many"
        got = cs.get_many(tx, [u for us in found.values() for u in us])
        for c in got.values():
            c.properties["kla_seen"] = True
        current["call"] = "update_many"
        cs.update_many(tx, list(got.values()))
        current["call"] = "add_tags"
        cs.add_tags(tx, [(u, "kla_list_vip") for u in uids])
        current["call"] = None
    assert sorted(got) == sorted(uids) and all(found[p.email] for p in people)
    return sent


def test_batch_operations_send_the_same_statements_for_10_or_400_contacts(host):
    cs = host.contacts("perf")
    small = _batch(host, cs, _people(0, 10))
    large = _batch(host, cs, _people(10, 400))
    assert set(small) == {"create_many", "find_by_emails", "find_by_phones", "get_many", "update_many", "add_tags"}
    assert large == small, f"statements per call grew with the batch: {dict(small)} -> {dict(large)}"
    assert all(n <= 2 for n in large.values()), dict(large)
    with host.storage.transaction() as tx:
        assert cs.count(tx) == 410
