"""Benchmark: the sync's per-profile CPU cost stage by stage, in one thread, without HTTP.

Not a test: it prints figures. Usage::

    python benchmarks/pipeline_stages.py --profiles 20000
    python benchmarks/pipeline_stages.py --profiles 20000 --busy-other-core

It generates the stand-in's account in-process, encodes its profiles as 100-record JSON
pages (what ``GET /api/profiles`` returns), then times, per profile: decoding the pages
(`jsondecode.loads`: orjson, exact where a literal would not fit), mapping them (:func:`smartpush_plugin_klaviyo.mapping.map_profile`), writing them
(:meth:`~smartpush_plugin_klaviyo.writer.PageWriter.write_mapped`: merge lookups, contact
encryption, id map) into a fresh SQLite file, and writing the account's real memberships
(:meth:`~smartpush_plugin_klaviyo.writer.PageWriter.write_members`, with the tags of the
account's lists and segments, which are reconciled first as a sync does; as in a first sync,
the groups hold no members yet, so their members are tagged group by group after the last
page, by :meth:`~smartpush_plugin_klaviyo.writer.PageWriter.apply_deferred_tags`).

``--busy-other-core`` runs a CPU-bound process for the duration, as the stand-in does in
``full_sync.py``: on a machine whose two vCPUs share a physical core, every stage gets
slower, which is what separates this single-thread figure from the end-to-end one.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _spin(stop) -> None:
    while not stop.is_set():
        sum(range(10_000))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profiles", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--busy-other-core", action="store_true")
    args = p.parse_args(argv)

    import orjson
    from klaviyo_standin import generate_account
    from klaviyo_standin.resources import profile_resource

    from hookspecs import get_plugin_manager
    from smartpush_devhost.host import DevHost
    from smartpush_plugin_klaviyo import mapping
    from smartpush_plugin_klaviyo.groups.reconcile import apply_groups
    from smartpush_plugin_klaviyo.jsondecode import loads
    from smartpush_plugin_klaviyo.models import parse_group
    from smartpush_plugin_klaviyo.writer import PageWriter, RunCounters

    account = generate_account(profiles=args.profiles, seed=args.seed)
    ids = account.profile_ids()
    pages = [
        orjson.dumps({"data": [profile_resource("http://standin", ids[i], account.profile_attributes(i))
                               for i in range(start, min(start + 100, len(ids)))]})
        for start in range(0, len(ids), 100)
    ]
    member_pages = []
    for group in account.lists() + account.segments():
        members = [profile_id for profile_id, _joined in account.iter_members(group["id"])]
        member_pages += [(group["id"], members[i:i + 100]) for i in range(0, len(members), 100)]
    n_members = sum(len(m) for _g, m in member_pages)
    n_tags = 0

    tmp = Path(tempfile.mkdtemp(prefix="klaviyo-stages-"))
    stop = multiprocessing.Event()
    hog = multiprocessing.Process(target=_spin, args=(stop,), daemon=True) if args.busy_other_core else None
    try:
        host = DevHost(f"sqlite:///{tmp / 'stages.db'}", tmp / "home", env={})
        ctx = host.context("bench")
        get_plugin_manager().hook.smartpush_install(integration="klaviyo", host=ctx)
        writer = PageWriter(ctx, "bench-run", 1, RunCounters())
        # The groups phase comes first, as in a sync: without the groups' tags the
        # memberships stage would write no tags at all.
        groups = [parse_group(r, "list") for r in account.lists()]
        groups += [parse_group(r, "segment") for r in account.segments()]
        with host.storage.transaction() as tx:
            apply_groups(tx, writer, groups)
        if hog:
            hog.start()
            time.sleep(0.5)
        t = {}
        t0 = time.perf_counter()
        decoded = [loads(page)["data"] for page in pages]
        t["decode"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        mapped = [[mapping.map_profile(r) for r in page] for page in decoded]
        t["map"] = time.perf_counter() - t0
        del decoded
        t0 = time.perf_counter()
        for page in mapped:
            with host.storage.transaction() as tx:
                writer.write_mapped(tx, page)
        t["write profiles"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for group_id, members in member_pages:
            with host.storage.transaction() as tx:
                writer.write_members(tx, group_id, members)
        # As a sync does when its reading ends (SyncRun._tag_deferred_groups): the
        # groups held no members before, so their members are tagged group by group.
        with host.storage.transaction(readonly=True) as tx:
            deferred = sorted(writer.deferred_groups(tx))
        for group_id in deferred:
            with host.storage.transaction() as tx:
                writer.apply_deferred_tags(tx, [group_id])
        t["write memberships"] = time.perf_counter() - t0
        with host.storage.transaction(readonly=True) as tx:
            n_tags = sum(ctx.contacts.tag_counts(tx).values())
        host.close()
    finally:
        stop.set()
        if hog:
            hog.join()
        shutil.rmtree(tmp, ignore_errors=True)

    n = len(ids)
    total = sum(t.values())
    print(f"profiles {n:,}, memberships {n_members:,} ({n_members / n:.1f} per profile), tags {n_tags:,}"
          f"{', other core busy' if hog else ''}")
    for stage, seconds in t.items():
        print(f"  {stage:<18} {seconds / n * 1e6:7.1f} µs per profile")
    print(f"  {'total':<18} {total / n * 1e6:7.1f} µs per profile -> {n / total:,.0f} profiles/s in one thread")


if __name__ == "__main__":
    main()
