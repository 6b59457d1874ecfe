"""``smartpush contacts``: export, import and count the store's contacts."""

from __future__ import annotations

import json
import os
import sys

import click

from smartpush_devhost import exit_codes
from smartpush_devhost.transfer import export_contacts, import_contacts


def _cli():
    return click.get_current_context().obj


@click.group("contacts")
def contacts_group():
    """Export, import and count the store's contacts."""


@contacts_group.command("export")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="File to write (default stdout). Created 0600.")
def export_cmd(output):
    """Write every contact, decrypted, as JSON lines (uid order)."""
    cli = _cli()
    host = cli.host
    host.ensure_store(cli.store)
    contacts = host.contacts(cli.store)
    if output is None:
        n = export_contacts(host.storage, contacts, sys.stdout)
    else:
        # the export is PII: never world-readable, not even for an instant
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            n = export_contacts(host.storage, contacts, fh)
    click.echo(f"exported {n} contacts of store {cli.store}", err=True)


@contacts_group.command("import")
@click.argument("file", type=click.File("rb"))
@click.option("--json", "as_json", is_flag=True, help="Print the counts and skipped lines as JSON.")
def import_cmd(file, as_json):
    """Merge the store's pre-existing contacts from JSON lines (FILE or - for stdin).

    Fields: email, phone (E.164), name, country, email_subscription,
    sms_subscription, properties (object), tags (list), uid (optional). A line is
    matched to a contact of this store by uid, then email, then phone, and merged
    into it; otherwise a contact is created. Importing the same file again changes
    nothing. Bad lines are skipped with their number and reason; then the command
    exits 6 and says how many.
    """
    cli = _cli()
    host = cli.host
    host.ensure_store(cli.store)
    result = import_contacts(host.storage, host.contacts(cli.store), file)
    if as_json:
        click.echo(json.dumps({"store_id": cli.store, **result.as_dict()}, indent=2))
    else:
        click.echo(f"store {cli.store}: created {result.created}, updated {result.updated}, "
                   f"unchanged {result.unchanged}, skipped {len(result.skipped)}")
    for lineno, reason in result.skipped:
        click.echo(f"  line {lineno}: {reason}", err=True)
    if result.skipped:
        click.echo(f"Error: {len(result.skipped)} line(s) skipped, the rest imported", err=True)
        raise click.exceptions.Exit(exit_codes.LINES_SKIPPED)


@contacts_group.command("count")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def count_cmd(as_json):
    """Print how many contacts the store holds."""
    cli = _cli()
    host = cli.host
    host.ensure_store(cli.store)
    with host.storage.transaction(readonly=True) as tx:
        n = host.contacts(cli.store).count(tx)
    click.echo(json.dumps({"store_id": cli.store, "contacts": n}) if as_json else n)
