"""``smartpush demo``: a full Klaviyo import against the local stand-in, end to end."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import click
from click.core import ParameterSource
from sqlalchemy import func, select

from smartpush_devhost.formatting import format_report, mask_email, mask_name, mask_phone
from smartpush_devhost.host import DevHost
from smartpush_devhost.transfer import reflect_table, tag_counts_by_group

INTEGRATION = "klaviyo"


def _explicit(ctx: click.Context, name: str):
    """A root option's value only when given on the command line (not from the env),
    so the demo never writes into the user's configured database by accident."""
    root = ctx.find_root()
    if root.get_parameter_source(name) == ParameterSource.COMMANDLINE:
        return root.params.get(name)
    return None


FIXTURES_DIR = Path(__file__).resolve().parent.parent / "fixtures"
"""Where the Klaviyo stand-in lives in a checkout; it is a test fixture, not in the wheel."""


def _find_standin_in_checkout() -> None:
    """Make ``klaviyo_standin`` importable when the host runs from a checkout
    (an editable install), so ``smartpush demo`` works without PYTHONPATH."""
    if importlib.util.find_spec("klaviyo_standin") is None and (FIXTURES_DIR / "klaviyo_standin").is_dir():
        sys.path.append(str(FIXTURES_DIR))
        # helper processes (forkserver) and `python -m klaviyo_standin` children find it too
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(FIXTURES_DIR)) if p)


@click.command("demo")
@click.option("--profiles", default=3000, show_default=True, help="Profiles in the generated account.")
@click.option("--seed", default=7, show_default=True, help="Seed of the generated account.")
@click.option("--latency", default=0.0, show_default=True, help="Seconds added to every stand-in response.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def demo_command(ctx: click.Context, profiles, seed, latency, as_json):
    """Import a generated Klaviyo account from the local stand-in and show the result."""
    _find_standin_in_checkout()
    try:
        from klaviyo_standin import ALL_SCOPES, DEFAULT_API_KEY, StandInServer, generate_account
    except ImportError as exc:
        raise click.ClickException(f"the Klaviyo stand-in was not found ({exc}): run the demo from a checkout "
                                   f"(tox -e demo), or put its fixtures/ directory on PYTHONPATH") from None
    cli = ctx.obj
    home = _explicit(ctx, "home") or tempfile.mkdtemp(prefix="smartpush-demo-")
    database_url = _explicit(ctx, "database_url")
    pm = cli.pm
    t0 = time.monotonic()
    account = generate_account(profiles=profiles, seed=seed)
    with StandInServer(account, api_keys={DEFAULT_API_KEY: ALL_SCOPES}, latency=latency) as server:
        host = DevHost(database_url, home, {"KLAVIYO_BASE_URL": server.base_url}, default_store=cli.store)
        try:
            ctx_ = host.context(cli.store)
            say = (lambda *_: None) if as_json else click.echo
            say(f"Klaviyo stand-in at {server.base_url}: {profiles} profiles (seed {seed})")
            say(f"data dir: {host.data_dir}  store: {cli.store}")
            status = pm.hook.smartpush_install(integration=INTEGRATION, host=ctx_)
            if status is None:
                raise click.ClickException(f"no installed plugin provides integration {INTEGRATION}")
            say(f"installed: {status.state.value}")
            auth = pm.hook.smartpush_authorize(integration=INTEGRATION, host=ctx_, credentials=DEFAULT_API_KEY)
            say(f"authorized: {'ok' if auth.ok else 'refused'}: {auth.message}")
            if not auth.ok:
                raise click.exceptions.Exit(1)
            report = pm.hook.smartpush_sync(integration=INTEGRATION, host=ctx_, mode="full")
            summary = _summary(host, cli.store, report, server.stats, time.monotonic() - t0)
        finally:
            host.close()
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    else:
        click.echo(format_report(report, max_skipped=5))
        _print_summary(summary)
    if report.outcome != "completed":
        raise click.exceptions.Exit(1)


def _skip_reasons(host: DevHost, store_id: str) -> dict[str, int]:
    table = reflect_table(host.storage, "klaviyo_skipped", ("store_id", "reason"))
    if table is None:
        return {}
    with host.storage.transaction(readonly=True) as tx:
        rows = tx.execute(
            select(table.c.reason, func.count()).where(table.c.store_id == store_id).group_by(table.c.reason)
        )
        return {reason: int(n) for reason, n in rows}


def _summary(host: DevHost, store_id: str, report, stats: dict, wall: float) -> dict:
    contacts = host.contacts(store_id)
    with host.storage.transaction(readonly=True) as tx:
        count = contacts.count(tx)
        tags = contacts.tag_counts(tx)
        subs = contacts.subscription_counts(tx)
        samples = []
        for contact in contacts.iter_all(tx):
            samples.append(contact)
            if len(samples) == 3:
                break
        sample_tags = contacts.tags_of(tx, [c.uid for c in samples])
    reasons = _skip_reasons(host, store_id) or dict(Counter(s.reason for s in report.skipped))
    return {
        "outcome": report.outcome,
        "contacts": count,
        "tags": tag_counts_by_group(tags),
        "subscriptions": subs,
        "skipped": report.counts.get("skipped", sum(reasons.values())),
        "skipped_reasons": reasons,
        "skipped_examples": [s.model_dump() for s in report.skipped[:10]],
        "requests": stats or report.requests,
        "wall_seconds": round(wall, 2),
        "samples": [
            {
                "uid": c.uid,
                "email": mask_email(c.email),
                "phone": mask_phone(c.phone),
                "name": mask_name(c.name),
                "country": c.country,
                "email_subscription": c.email_subscription,
                "sms_subscription": c.sms_subscription,
                "tags": sorted(sample_tags[c.uid]),
            }
            for c in samples
        ],
    }


def _print_summary(s: dict) -> None:
    echo = click.echo
    echo("")
    echo(f"Contacts imported: {s['contacts']}")
    for kind, tags in sorted(s["tags"].items()):
        echo(f"Tags from Klaviyo {kind} (contacts per tag):")
        for tag, n in tags.items():
            echo(f"  {tag:<48} {n}")
    for channel, counts in s["subscriptions"].items():
        echo(f"{channel.upper()} subscription: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    echo(f"Skipped records: {s['skipped']}")
    for reason, n in sorted(s["skipped_reasons"].items(), key=lambda kv: -kv[1]):
        echo(f"  {reason:<48} {n}")
    echo("Requests per endpoint:")
    for endpoint, n in sorted(s["requests"].items()):
        echo(f"  {endpoint:<56} {n}")
    echo(f"Wall time: {s['wall_seconds']:.1f} s")
    echo("Sample contacts (PII masked):")
    for c in s["samples"]:
        echo(
            f"  {c['uid']}  {c['email']}  {c['phone']}  {c['name']}  {c['country'] or '-'}  "
            f"email={c['email_subscription']} sms={c['sms_subscription']}  tags={','.join(c['tags']) or '-'}"
        )
