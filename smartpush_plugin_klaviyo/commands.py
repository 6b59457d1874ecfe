"""``smartpush klaviyo ...``: commands this plugin adds to the host's CLI."""

from __future__ import annotations

import json

import click
from sqlalchemy import select

from smartpush_plugin_klaviyo.state import create_tables, event_t, skipped_t


def _context():
    return click.get_current_context().obj.host_context()


def register(cli: click.Group) -> None:
    @cli.group(name="klaviyo")
    def klaviyo_group() -> None:
        """Klaviyo integration: skipped profiles and sync events."""

    @klaviyo_group.command(name="skipped")
    @click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
    def skipped(as_json: bool) -> None:
        """List the Klaviyo profiles that were not imported, with the reason (no PII)."""
        ctx = _context()
        create_tables(ctx.storage.engine)
        with ctx.storage.transaction() as tx:
            rows = tx.execute(
                select(skipped_t.c.klaviyo_id, skipped_t.c.reason, skipped_t.c.seen_at)
                .where(skipped_t.c.store_id == ctx.store_id)
                .order_by(skipped_t.c.klaviyo_id)
            ).all()
        for kid, reason, seen in rows:
            if as_json:
                click.echo(json.dumps({"klaviyo_id": kid, "reason": reason, "seen_at": seen.isoformat() if seen else None}))
            else:
                click.echo(f"{kid}\t{reason}")
        if not as_json:
            click.echo(f"{len(rows)} skipped profile(s)", err=True)

    @klaviyo_group.command(name="events")
    @click.option("--limit", default=100, show_default=True)
    @click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
    def events(limit: int, as_json: bool) -> None:
        """Recent sync events: duplicate profiles merged, tag collisions."""
        ctx = _context()
        create_tables(ctx.storage.engine)
        with ctx.storage.transaction() as tx:
            rows = tx.execute(
                select(event_t.c.at, event_t.c.kind, event_t.c.detail)
                .where(event_t.c.store_id == ctx.store_id)
                .order_by(event_t.c.id.desc())
                .limit(limit)
            ).all()
        for at, kind, detail in rows:
            if as_json:
                click.echo(json.dumps({"at": at.isoformat() if at else None, "kind": kind, "detail": detail}))
            else:
                click.echo(f"{at:%Y-%m-%d %H:%M:%S}\t{kind}\t{detail}")
