"""Benchmark: a full sync, then N daily runs of a merchant-shaped account under real limits.

Not a test: it prints figures (issue #12 "Done means"). Usage::

    python benchmarks/daily_run.py --profiles 20000 --groups 224 --latency 0.1 --runs 8 [--gap 61]
    python benchmarks/daily_run.py --profiles 100000 --groups 1000 --latency 0.1 --runs 8

What it does
------------
1. Starts the stand-in in a **child process** (its CPU does not share this process's GIL)
   holding ``generate_account(P, seed, groups=G, group_sizes=(20, 10_000))`` (sizes
   log-uniform, capped at P) behind ``StandInServer(latency=L, rate_limits=True,
   clock_scale=1)``: Klaviyo's real limits, stacked ones included (``profile_count`` 1/s
   15/min on top of 75/s 750/min). The child also answers commands on a pipe: apply a
   day of churn (``daily_churn``), give its request statistics, tell the Klaviyo truth of
   some profile ids.
2. Builds a :class:`~smartpush_devhost.host.DevHost` (SQLite in a temp dir, or ``--db``),
   installs and authorizes the plugin and runs the **full sync** through the hooks.
3. Then ``--runs`` daily runs (hook ``smartpush_sync(mode="incremental")``), ``--gap``
   seconds apart (61: Klaviyo's minute windows reset between them, as a day makes them;
   0: back to back, each run sharing its first minute with the previous one's requests).
   Before run k it applies ``daily_churn`` with ``--updates``% updates, ``--creates``%
   creations, ``--deletes``% deletions, ``--merges``% merges, ``--quiet``% quiet consent
   changes (hard bounce, spam complaint, unsubscribe, list unsubscribe, re-subscribe: none
   moves ``updated``), ``--joins``% joins and ``--leaves``% leaves (percent of profiles).
4. For each run it prints: outcome, wall time, requests per endpoint and 429s (counted by
   the stand-in), and how many of the changes made so far are reflected in SmartPush:

   * deleted / merged-away profile: no id mapping left for its Klaviyo id, and its contact
     (if it still exists and no other Klaviyo id maps to it) carries no ``kla_`` tag;
   * quiet consent change: the mapped contact's email and SMS status equal what Klaviyo's
     consent implies (``tests/expectations.py``, derived independently of the plugin) and
     its ``kla_email_consent``, ``kla_email_suppressions`` (reasons) and
     ``kla_email_list_suppressions`` (list ids) match Klaviyo's.

   At the end, per batch of changes (made before run k): after which run each kind was
   fully reflected, or how many are still missing.

It runs against whatever engine is checked out: today's daily run is slow on many groups
(one ``profile_count`` per group at 15/min) and misses quiet consent changes and
deletions; the figures show it.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for extra in (ROOT, ROOT / "fixtures"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

STORE = "bench"
GROUP_SIZES = (20, 10_000)


# ------------------------------------------------------------------ the stand-in process
def _truth(account, ids: list[str]) -> dict[str, dict | None]:
    """Klaviyo's side of some profiles: None when gone, else the consent the checks need."""
    out: dict[str, dict | None] = {}
    for pid in ids:
        p = account.get_profile(pid)
        out[pid] = None if p is None else {"subscriptions": p["attributes"]["subscriptions"],
                                           "email": p["attributes"]["email"],
                                           "phone_number": p["attributes"]["phone_number"]}
    return out


def standin_main(conn, profiles: int, seed: int, groups: int, latency: float) -> None:
    """The child: serve the account and obey the parent's commands until "stop"."""
    from klaviyo_standin import StandInServer, generate_account

    sizes = (min(GROUP_SIZES[0], profiles), min(GROUP_SIZES[1], profiles))
    account = generate_account(profiles, seed, groups=groups, group_sizes=sizes)
    for g in account.group_records("list") + account.group_records("segment"):
        account.member_count(g["id"])  # draw the memberships before the clock starts
    server = StandInServer(account, latency=latency, rate_limits=True, clock_scale=1.0).start()
    conn.send((server.base_url, server.api_key, account.profile_count))
    try:
        while True:
            cmd, *rest = conn.recv()
            if cmd == "stop":
                break
            if cmd == "churn":
                churn = account.daily_churn(rest[0], **rest[1])
                conn.send(churn.__dict__)
            elif cmd == "stats":
                conn.send(server.stats)
            elif cmd == "reset_stats":
                server.reset_stats()
                conn.send(True)
            elif cmd == "truth":
                conn.send(_truth(account, rest[0]))
    finally:
        server.stop()


class StandInProcess:
    def __init__(self, args):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=standin_main, args=(child, args.profiles, args.seed, args.groups, args.latency),
                                daemon=True)
        self.proc.start()
        self.base_url, self.api_key, self.profile_count = self.conn.recv()

    def ask(self, *cmd):
        self.conn.send(cmd)
        return self.conn.recv()

    def stop(self) -> None:
        if self.proc.is_alive():
            self.conn.send(("stop",))
            self.proc.join(15)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)


# ------------------------------------------------------------------ SmartPush side
def smartpush_view(host, ids: list[str]) -> dict[str, dict | None]:
    """SmartPush's side of some Klaviyo ids: None when unmapped, else the contact's
    status, kla_ consent evidence, tags, and how many Klaviyo ids map to the contact."""
    from sqlalchemy import text

    contacts = host.contacts(STORE)
    out: dict[str, dict | None] = {pid: None for pid in ids}
    with host.storage.transaction(readonly=True) as tx:
        rows = []
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            params = {f"k{j}": v for j, v in enumerate(chunk)}
            rows += tx.execute(text(
                "SELECT klaviyo_id, contact_uid FROM klaviyo_profile_map WHERE store_id = :s AND klaviyo_id IN ("
                + ",".join(f":k{j}" for j in range(len(chunk))) + ")"), {"s": STORE, **params}).all()
        uids = sorted({uid for _, uid in rows})
        shared = Counter()
        for i in range(0, len(uids), 500):
            chunk = uids[i:i + 500]
            params = {f"u{j}": v for j, v in enumerate(chunk)}
            for uid, n in tx.execute(text(
                    "SELECT contact_uid, COUNT(*) FROM klaviyo_profile_map WHERE store_id = :s AND contact_uid IN ("
                    + ",".join(f":u{j}" for j in range(len(chunk))) + ") GROUP BY contact_uid"),
                    {"s": STORE, **params}).all():
                shared[uid] = n
        got = contacts.get_many(tx, uids) if uids else {}
        tags = contacts.tags_of(tx, uids) if uids else {}
    for kid, uid in rows:
        c = got.get(uid)
        out[kid] = {"uid": uid, "contact": c, "tags": {t for t in tags.get(uid, set()) if t.startswith("kla_")},
                    "ids_on_contact": shared[uid]}
    return out


def contact_leftovers(host, uids: list[str]) -> dict[str, tuple[set[str], int]]:
    """Per contact uid: its kla_ tags and how many Klaviyo ids still map to it."""
    from sqlalchemy import text

    contacts = host.contacts(STORE)
    out: dict[str, tuple[set[str], int]] = {}
    with host.storage.transaction(readonly=True) as tx:
        tags = contacts.tags_of(tx, uids) if uids else {}
        for uid in uids:
            n = tx.execute(text("SELECT COUNT(*) FROM klaviyo_profile_map WHERE store_id = :s AND contact_uid = :u"),
                           {"s": STORE, "u": uid}).scalar()
            out[uid] = ({t for t in tags.get(uid, set()) if t.startswith("kla_")}, n)
    return out


def gone_reflected(view: dict | None, leftovers: tuple[set[str], int] | None) -> bool:
    """A deleted or merged-away profile: no id mapping left, and its former contact has no
    kla_ tag (unless another Klaviyo profile still maps to that contact)."""
    if view is not None:
        return False
    if leftovers is None:
        return True
    tags, still_mapped = leftovers
    return still_mapped > 0 or not tags


def consent_reflected(truth: dict | None, view: dict | None) -> bool:
    from tests.expectations import email_status, sms_status

    if truth is None:  # deleted since: nothing to reflect
        return True
    if view is None or view["contact"] is None:
        return False
    c = view["contact"]
    props = c.properties or {}
    m = truth["subscriptions"]["email"]["marketing"]
    if truth.get("email") and c.email_subscription != email_status(truth):
        return False
    if truth.get("phone_number") and c.sms_subscription != sms_status(truth):
        return False
    if props.get("kla_email_consent") != m.get("consent"):
        return False
    if sorted(s.get("reason") for s in props.get("kla_email_suppressions") or []) != \
            sorted(s["reason"] for s in m.get("suppression") or []):
        return False
    return sorted(s.get("list_id") for s in props.get("kla_email_list_suppressions") or []) == \
        sorted(s["list_id"] for s in m.get("list_suppressions") or [])


# ------------------------------------------------------------------ main
def _counts(args, profiles: int) -> dict[str, int]:
    def pct(x: float) -> int:
        return max(0, round(profiles * x / 100))
    return {"updates": pct(args.updates), "creates": pct(args.creates), "deletes": pct(args.deletes),
            "merges": pct(args.merges), "quiet_consent": pct(args.quiet), "joins": pct(args.joins),
            "leaves": pct(args.leaves)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--profiles", type=int, default=20_000)
    p.add_argument("--groups", type=int, default=224)
    p.add_argument("--latency", type=float, default=0.1, help="seconds per request at the stand-in")
    p.add_argument("--runs", type=int, default=8)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--updates", type=float, default=1.0, help="percent of profiles updated per day")
    p.add_argument("--creates", type=float, default=0.2)
    p.add_argument("--deletes", type=float, default=0.1)
    p.add_argument("--merges", type=float, default=0.05)
    p.add_argument("--quiet", type=float, default=0.1, help="percent with a quiet consent change per day")
    p.add_argument("--joins", type=float, default=0.2)
    p.add_argument("--leaves", type=float, default=0.1)
    p.add_argument("--gap", type=float, default=61.0,
                   help="seconds between daily runs, not timed (a day resets the minute windows; 0: back to back)")
    p.add_argument("--db", default=None, help="SQLAlchemy URL (default: SQLite in a temp dir)")
    args = p.parse_args(argv)

    from hookspecs import get_plugin_manager
    from smartpush_devhost.host import DevHost

    tmp = Path(tempfile.mkdtemp(prefix="klaviyo-daily-"))
    t = time.perf_counter()
    standin = StandInProcess(args)
    print(f"stand-in       : {args.profiles} profiles, {args.groups} groups (sizes {GROUP_SIZES[0]}-{GROUP_SIZES[1]} "
          f"log-uniform), latency {args.latency * 1000:.0f} ms, real stacked limits; ready in "
          f"{time.perf_counter() - t:.1f} s", flush=True)
    host = None
    pending: list[dict] = []  # {"run": k, "kind": "deleted"|"merged"|"consent", "id": ..., "reflected": run|None}
    try:
        settings = {"KLAVIYO_BASE_URL": standin.base_url, "KLAVIYO_TIME_SCALE": "1.0"}
        host = DevHost(database_url=args.db or f"sqlite:///{tmp / 'bench.db'}", data_dir=tmp / "home",
                       settings=settings, env={})
        pm = get_plugin_manager()
        ctx = host.context(STORE)
        pm.hook.smartpush_install(integration="klaviyo", host=ctx)
        auth = pm.hook.smartpush_authorize(integration="klaviyo", host=ctx, credentials=standin.api_key)
        if not auth or not auth.ok:
            raise RuntimeError(f"authorize failed: {auth and auth.message}")

        def run(label: str, mode: str) -> None:
            standin.ask("reset_stats")
            t0 = time.perf_counter()
            report = pm.hook.smartpush_sync(integration="klaviyo", host=ctx, mode=mode)
            wall = time.perf_counter() - t0
            stats = standin.ask("stats")
            total, n429 = stats.get("total", 0), stats.get("429", 0)
            print(f"\n{label}: {report.outcome} ({report.mode}) in {wall:.1f} s; {total} requests, {n429} answered 429"
                  f" ({100 * n429 / total if total else 0:.1f}%)", flush=True)
            if report.outcome != "completed":
                print(f"  message: {report.message}")
            for name, n in sorted(stats.items()):
                if name.startswith("GET "):
                    print(f"  {n:7d}  {name}")

        run("full sync", "full")
        counts = _counts(args, standin.profile_count)
        print(f"\nchurn per day  : {counts}")
        for k in range(1, args.runs + 1):
            churn = standin.ask("churn", args.seed * 1000 + k, counts)
            gone = [("deleted", pid) for pid in churn["deleted"]] + [("merged", g) for _, g in churn["merged"]]
            before = smartpush_view(host, [pid for _, pid in gone])  # the contacts they were on
            for kind, pid in gone:
                pending.append({"run": k, "kind": kind, "id": pid, "reflected": None,
                                "uid": before[pid]["uid"] if before[pid] else None})
            for pid, _kind in churn["quiet_consent"]:
                pending.append({"run": k, "kind": "consent", "id": pid, "reflected": None})
            if args.gap > 0:
                # A day passes between daily runs: Klaviyo's minute windows have long reset.
                # Back to back, a run would share its first minute with the previous run's.
                time.sleep(args.gap)
            run(f"daily run {k}", "incremental")
            ids = [item["id"] for item in pending]
            truth = standin.ask("truth", ids)
            view = smartpush_view(host, ids)
            left = contact_leftovers(host, sorted({i["uid"] for i in pending if i.get("uid")}))
            for item in pending:
                kid = item["id"]
                if item["kind"] == "consent":
                    ok = consent_reflected(truth[kid], view[kid])
                else:
                    ok = gone_reflected(view[kid], left.get(item.get("uid")))
                item["reflected"] = (item["reflected"] or k) if ok else None  # must stay reflected
            by_kind = Counter((item["kind"], item["reflected"] is not None) for item in pending)
            print("  reflected so far: " + ", ".join(
                f"{kind} {by_kind[(kind, True)]}/{by_kind[(kind, True)] + by_kind[(kind, False)]}"
                for kind in ("deleted", "merged", "consent")), flush=True)
    finally:
        if host is not None:
            host.close()
        standin.stop()
        if args.db is None:
            shutil.rmtree(tmp, ignore_errors=True)

    print("\nchanges made before run k -> reflected in SmartPush after run j (missing: not yet)")
    for k in range(1, args.runs + 1):
        parts = []
        for kind in ("deleted", "merged", "consent"):
            items = [i for i in pending if i["run"] == k and i["kind"] == kind]
            if not items:
                continue
            when = Counter(i["reflected"] for i in items)
            missing = when.pop(None, 0)
            spread = ", ".join(f"run {j}: {n}" for j, n in sorted(when.items()))
            parts.append(f"{kind} {len(items)} ({spread}{'; ' if spread and missing else ''}"
                         f"{f'missing: {missing}' if missing else ''})")
        print(f"  run {k}: " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
