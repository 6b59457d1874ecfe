"""``smartpush contacts``: export, import and count the store's contacts."""

from __future__ import annotations

import os
import sys

import click

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
@click.argument("file", type=click.File("r", encoding="utf-8"))
def import_cmd(file):
    """Create the store's pre-existing contacts from JSON lines (FILE or - for stdin).

    Fields: email, phone (E.164), name, country, email_subscription,
    sms_subscription, properties (object), tags (list), uid (optional: a uid already
    in this store updates that contact). Bad lines are skipped and reported.
    """
    cli = _cli()
    host = cli.host
    host.ensure_store(cli.store)
    result = import_contacts(host.storage, host.contacts(cli.store), file)
    click.echo(
        f"store {cli.store}: created {result.created}, updated {result.updated}, skipped {len(result.skipped)}"
    )
    for lineno, reason in result.skipped:
        click.echo(f"  line {lineno}: {reason}", err=True)


@contacts_group.command("count")
def count_cmd():
    """Print how many contacts the store holds."""
    cli = _cli()
    host = cli.host
    host.ensure_store(cli.store)
    with host.storage.transaction(readonly=True) as tx:
        click.echo(host.contacts(cli.store).count(tx))
