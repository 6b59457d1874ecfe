"""The ``smartpush`` command line of the development host.

Every hook is called with keyword arguments only. ``click.Context.obj`` is a
:class:`CliHost` (a :class:`hookspecs.interfaces.HostProvider`) for plugin commands
added through ``smartpush_register_commands``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from typing import Any

import click
import pluggy

import hookspecs
from smartpush_devhost import exit_codes
from smartpush_devhost.crypto import CryptoError
from smartpush_devhost.schema_upgrade import SchemaUpgradeError
from smartpush_devhost.formatting import format_report, format_status
from smartpush_devhost.host import DEFAULT_STORE, ENV_DATABASE_URL, ENV_HOME, DevHost
from smartpush_devhost import cli_serve
from smartpush_devhost.plan import PLAN_FEATURES
from hookspecs.interfaces import HostContext

log = logging.getLogger("smartpush")

EXIT_NO_PLUGIN = exit_codes.USAGE


class CliError(click.ClickException):
    """An error shown as ``Error: ...`` on stderr with a chosen exit code."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class CliHost:
    """The HostProvider in ``ctx.obj``: builds the :class:`DevHost` on first use,
    so commands that need no database (``apps``) never create one."""

    def __init__(self, pm: pluggy.PluginManager, database_url: str | None, home: str | None,
                 store: str, settings: dict[str, str] | None = None):
        self.pm = pm
        self.database_url = database_url
        self.home = home
        self.store = store
        self.settings = settings or {}
        self._host: DevHost | None = None

    def __repr__(self) -> str:
        return f"CliHost(store={self.store!r})"

    @property
    def host(self) -> DevHost:
        """The development host (created on first access)."""
        if self._host is None:
            self._host = DevHost(self.database_url, self.home, self.settings, default_store=self.store)
        return self._host

    def host_context(self, store_id: str | None = None) -> HostContext:
        """The host context of ``store_id`` (default: ``--store``)."""
        return self.host.context(store_id or self.store)

    def close(self) -> None:
        if self._host is not None:
            self._host.close()


class SmartPushGroup(click.Group):
    """Turns unexpected exceptions into ``Error: ...`` lines (traceback with ``-v``)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            interrupt = _interrupt_behind(exc)
            if interrupt is not None:  # a clean-up that failed because the run was interrupted
                log.debug("failure while stopping", exc_info=True)
                raise interrupt from None
            log.debug("command failed", exc_info=True)
            if isinstance(exc, (CryptoError, SchemaUpgradeError, ValueError, LookupError, PermissionError)):
                raise CliError(f"{exc}") from None
            raise CliError(f"unexpected {type(exc).__name__} (run with -v for details)") from None


def _interrupt_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C/SIGTERM an exception was raised while handling, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, KeyboardInterrupt):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)  # basicConfig is a no-op when already configured


def _obj() -> CliHost:
    return click.get_current_context().obj


def _require(result, name: str):
    if result is None:
        raise CliError(f"no installed plugin provides integration {name}", EXIT_NO_PLUGIN)
    return result


def _echo_json(model) -> None:
    click.echo(model.model_dump_json(indent=2))


def build_cli(pm: pluggy.PluginManager | None = None) -> click.Group:
    """Build the ``smartpush`` root group with the host commands and plugin commands."""
    pm = pm if pm is not None else hookspecs.get_plugin_manager()

    @click.group(cls=SmartPushGroup, context_settings={"help_option_names": ["-h", "--help"]})
    @click.option("--db", "database_url", envvar=ENV_DATABASE_URL, metavar="URL",
                  help="SQLAlchemy database URL (default: SQLite in the data dir).")
    @click.option("--store", envvar="SMARTPUSH_STORE", default=DEFAULT_STORE, show_default=True,
                  help="The merchant store to act on.")
    @click.option("--home", envvar=ENV_HOME, metavar="DIR", type=click.Path(file_okay=False),
                  help="Data directory (default ./.smartpush).")
    @click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
    @click.version_option(package_name="smartpush-plugin-klaviyo", prog_name="smartpush")
    @click.pass_context
    def root(ctx: click.Context, database_url, store, home, verbose):
        """SmartPush development host: drive integration plugins against a local database."""
        _setup_logging(verbose)
        ctx.obj = CliHost(pm, database_url, home, store)
        ctx.call_on_close(ctx.obj.close)

    _add_integration_commands(root, pm)
    _add_admin_commands(root)
    cli_serve.register(root)
    from smartpush_devhost.cli_contacts import contacts_group
    from smartpush_devhost.cli_demo import demo_command

    from smartpush_devhost.cli_jobs import scheduler_group, worker_command

    root.add_command(scheduler_group)
    root.add_command(worker_command)
    root.add_command(contacts_group)
    root.add_command(demo_command)
    pm.hook.smartpush_register_commands(cli=root)
    return root


# ------------------------------------------------------------ integrations
def _add_integration_commands(root: click.Group, pm: pluggy.PluginManager) -> None:
    @root.command()
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def apps(as_json):
        """List the integrations the installed plugins provide."""
        infos = sorted(pm.hook.smartpush_integration_info(), key=lambda i: i.name)
        if as_json:
            click.echo(json.dumps([i.model_dump() for i in infos], indent=2))
            return
        if not infos:
            click.echo("no integration plugins installed")
        for info in infos:
            click.echo(f"{info.name:<16} {info.title:<32} {info.version}")

    # install, status, uninstall: one hook each, answering the integration's status
    for command, hook, doc in (
        ("install", "smartpush_install", "Install integration NAME in the store."),
        ("status", "smartpush_status", "Show the status of integration NAME."),
        ("uninstall", "smartpush_uninstall", "Cancel integration NAME (imported contacts are kept)."),
    ):
        _add_status_command(root, pm, command, hook, doc)

    @root.command()
    @click.argument("name")
    @click.option("--json", "as_json", is_flag=True)
    def authorize(name, as_json):
        """Validate and store the API key of integration NAME.

        The key is read from $<NAME>_API_KEY (e.g. KLAVIYO_API_KEY) or asked for
        without echo; it is never accepted as an argument and never printed.
        """
        env_name = f"{name.upper()}_API_KEY"
        key = os.environ.get(env_name) or click.prompt(f"{name} API key", hide_input=True)
        result = _require(
            pm.hook.smartpush_authorize(integration=name, host=_obj().host_context(), credentials=key.strip()), name
        )
        del key
        if as_json:
            _echo_json(result)
        else:
            click.echo(("accepted: " if result.ok else "refused: ") + result.message)
            if result.account_name:
                click.echo(f"account: {result.account_name}")
            if result.missing_scopes:
                click.echo("missing scopes: " + ", ".join(result.missing_scopes))
        if not result.ok:
            raise click.exceptions.Exit(1)

    @root.command()
    @click.argument("name")
    @click.option("--full", is_flag=True, help="Re-read the whole account instead of what changed.")
    @click.option("--json", "as_json", is_flag=True)
    @click.option("--progress/--no-progress", default=True, show_default=True,
                  help="Show progress on stderr (a bar with ETA on a terminal, plain lines otherwise).")
    def sync(name, full, as_json, progress):
        """Run one sync of integration NAME.

        Exit 0 completed, 1 failed, 3 paused or not installed, 4 already running,
        5 cancelled; 130 (Ctrl-C) or 143 (SIGTERM) when stopped: the run resumes next time.
        """
        from smartpush_devhost.progress import ProgressView
        from smartpush_devhost.signals import PROCESS

        cli = _obj()
        ctx = cli.host_context()
        mode = "full" if full else "incremental"
        # the first Ctrl-C/SIGTERM asks the run to stop at its next checkpoint (never mid-write)
        with PROCESS.asking(ctx.stop_requested):
            if progress:
                with ProgressView(lambda: pm.hook.smartpush_status(integration=name, host=cli.host_context())):
                    report = _require(pm.hook.smartpush_sync(integration=name, host=ctx, mode=mode), name)
            else:
                report = _require(pm.hook.smartpush_sync(integration=name, host=ctx, mode=mode), name)
        _echo_json(report) if as_json else click.echo(format_report(report))
        if report.outcome == "stopped":
            PROCESS.raise_if_signalled()  # exits 130/143 with the usual "stopped cleanly" line
        code = exit_codes.for_outcome(report.outcome)
        if code:
            raise click.exceptions.Exit(code)



def _add_status_command(root: click.Group, pm: pluggy.PluginManager, command: str, hook: str, doc: str) -> None:
    @root.command(command, help=doc)
    @click.argument("name")
    @click.option("--json", "as_json", is_flag=True)
    def run(name, as_json):
        st = _require(getattr(pm.hook, hook)(integration=name, host=_obj().host_context()), name)
        _echo_json(st) if as_json else click.echo(format_status(st))


# ------------------------------------------------------------------- admin
def _add_admin_commands(root: click.Group) -> None:
    @root.command()
    @click.option("--json", "as_json", is_flag=True)
    def stores(as_json):
        """List the stores with their plan and contact count."""
        host = _obj().host
        rows = []
        for store_id in host.list_stores():
            with host.storage.transaction(readonly=True) as tx:
                count = host.contacts(store_id).count(tx)
            rows.append({"store_id": store_id, "plan": host.plan(store_id).name, "contacts": count})
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        for row in rows:
            click.echo(f"{row['store_id']:<24} {row['plan']:<6} {row['contacts']} contacts")

    @root.group()
    def plan():
        """Show or change the store's plan."""

    @plan.command("show")
    @click.option("--json", "as_json", is_flag=True)
    def plan_show(as_json):
        """Print the store's plan."""
        cli = _obj()
        name = cli.host.plan(cli.store).name
        click.echo(json.dumps({"store_id": cli.store, "plan": name}) if as_json else name)

    @plan.command("set")
    @click.argument("name", type=click.Choice(sorted(PLAN_FEATURES)))
    def plan_set(name):
        """Change the store's plan (``free`` has no integrations)."""
        cli = _obj()
        cli.host.ensure_store(cli.store)
        statuses = cli.host.set_plan(cli.pm, cli.store, name)
        click.echo(f"store {cli.store}: plan {name}")
        for st in statuses:
            reason = f" ({st.pause_reason.value})" if st.pause_reason else ""
            click.echo(f"{st.integration}: {st.state.value}{reason}")

    @root.group()
    def keys():
        """Master key management."""

    @keys.command("rotate")
    @click.option("--batch-size", default=500, show_default=True)
    @click.option("--json", "as_json", is_flag=True)
    def keys_rotate(batch_size, as_json):
        """New active master key; re-encrypt every contact and secret; retire the old key."""
        t0 = time.monotonic()
        report = _obj().host.rotate_keys(batch_size=batch_size)
        if as_json:
            click.echo(json.dumps({"active_key": report.new_key_id, "contacts_reencrypted": report.contacts_reencrypted,
                                   "secrets_reencrypted": report.secrets_reencrypted,
                                   "retired_keys": list(report.retired_key_ids),
                                   "seconds": round(time.monotonic() - t0, 3)}, indent=2))
            return
        click.echo(
            f"active key {report.new_key_id}; re-encrypted {report.contacts_reencrypted} contacts and "
            f"{report.secrets_reencrypted} secrets in {time.monotonic() - t0:.1f} s; "
            f"retired {', '.join(report.retired_key_ids) or 'none'}"
        )

    @keys.command("reencrypt")
    @click.option("--json", "as_json", is_flag=True)
    def keys_reencrypt(as_json):
        """Re-encrypt everything under the active key (after changing SMARTPUSH_MASTER_KEY)."""
        from smartpush_devhost.rotation import reencrypt_all

        host = _obj().host
        contacts, secrets = reencrypt_all(host.storage, host.keyring)
        if as_json:
            click.echo(json.dumps({"active_key": host.keyring.active_id, "contacts_reencrypted": contacts,
                                   "secrets_reencrypted": secrets}))
            return
        click.echo(f"re-encrypted {contacts} contacts and {secrets} secrets under key {host.keyring.active_id}")

    @keys.command("status")
    @click.option("--json", "as_json", is_flag=True)
    def keys_status(as_json):
        """List the key ids and their status (never key material)."""
        keyring = _obj().host.keyring
        if as_json:
            click.echo(json.dumps({"source": keyring.source,
                                   "keys": [{"key_id": k.key_id, "status": k.status} for k in keyring.keys()]}, indent=2))
            return
        click.echo(f"source: {keyring.source}")
        for key in keyring.keys():
            click.echo(f"{key.key_id}  {key.status}")


def main(argv: list[str] | None = None) -> None:
    """Console script entry point (``smartpush``).

    Ctrl-C and SIGTERM stop without a traceback: the sync unwinds (checkpoints kept,
    lease released), leftover helper processes are ended, and the exit code is 130 or
    143. See :mod:`smartpush_devhost.exit_codes` for the others.
    """
    from smartpush_devhost.signals import PROCESS, end_helpers, interrupted_exit_code

    PROCESS.install()
    try:
        cli = build_cli()
    except Exception as exc:  # a broken plugin must fail loudly, not silently vanish
        click.echo(f"Error: could not load plugins: {type(exc).__name__}: {exc}", err=True)
        raise SystemExit(exit_codes.FAILED) from None
    try:
        rv = cli.main(args=argv, prog_name="smartpush", standalone_mode=False)
    except click.Abort as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, KeyboardInterrupt):
            raise SystemExit(_interrupted(cause, end_helpers, interrupted_exit_code)) from None
        click.echo("Aborted!", err=True)
        raise SystemExit(exit_codes.FAILED) from None
    except KeyboardInterrupt as exc:  # raised outside click's own handling (e.g. while closing)
        raise SystemExit(_interrupted(exc, end_helpers, interrupted_exit_code)) from None
    except click.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    raise SystemExit(rv if isinstance(rv, int) else exit_codes.OK)


def _interrupted(exc: BaseException, end_helpers, code_of) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not break the clean-up
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    end_helpers()
    code = code_of(exc)
    what = "terminated" if code == exit_codes.TERMINATED else "interrupted"
    click.echo(f"{what}: stopped cleanly; the next run resumes where this one stopped", err=True)
    return code


if __name__ == "__main__":  # pragma: no cover
    main()
