"""Benchmark: the development host's contact store, in batches as a sync writes.

Not a test: it prints figures (the suite only checks that a batch costs a fixed number of
statements, ``tests/test_devhost_perf.py``)::

    python benchmarks/contact_store.py
    python benchmarks/contact_store.py --db postgresql+psycopg://postgres@127.0.0.1:5432/postgres

1. ``create_many`` of ``--contacts`` new contacts (encrypted fields, blind indexes), ``--batch``
   per transaction;
2. ``find_by_emails`` + ``get_many`` + ``update_many`` of the same contacts, batch by batch.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from hookspecs.interfaces import NewContact
from smartpush_devhost.host import DevHost


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--db", default=None, help="database URL (default: a SQLite file in a temporary directory)")
    p.add_argument("--contacts", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=100)
    args = p.parse_args()
    n, batch = args.contacts, args.batch
    with tempfile.TemporaryDirectory() as home:
        host = DevHost(args.db or f"sqlite:///{Path(home) / 'bench.db'}", Path(home) / "home", env={})
        try:
            cs = host.contacts(f"bench-{time.time_ns()}")
            people = [
                NewContact(email=f"User{i}@Example.com", phone=f"+1415555{i % 10_000:04d}", name=f"User {i}",
                           country="US", email_subscription="subscribed",
                           properties={"kla_i": i, "kla_city": "Springfield"})
                for i in range(n)
            ]
            wall, cpu = time.perf_counter(), time.process_time()
            for i in range(0, n, batch):
                with host.storage.transaction() as tx:
                    cs.create_many(tx, people[i : i + batch])
            created = (time.perf_counter() - wall, time.process_time() - cpu)

            wall, cpu = time.perf_counter(), time.process_time()
            for i in range(0, n, batch):
                with host.storage.transaction() as tx:
                    found = cs.find_by_emails(tx, [c.email for c in people[i : i + batch]])
                    got = cs.get_many(tx, [u for us in found.values() for u in us])
                    for c in got.values():
                        c.properties["kla_seen"] = True
                    cs.update_many(tx, list(got.values()))
            updated = (time.perf_counter() - wall, time.process_time() - cpu)
        finally:
            host.close()
    for name, (w, c) in (("create_many", created), ("find+get+update", updated)):
        print(f"{name:16} {n / w:10,.0f} contacts/s   {c / n * 1e6:6.1f} µs of CPU per contact   "
              f"({n:,} contacts, {batch} per transaction, {w:.2f} s)")


if __name__ == "__main__":
    main()
