"""``smartpush scheduler run`` (run due jobs in this process) and ``smartpush worker``
(a job-engine worker; see :mod:`smartpush_devhost.engine`)."""

from __future__ import annotations

import json

import click

from smartpush_devhost.scheduler import JobRun


def _printer(as_json: bool):
    def show(run: JobRun) -> None:
        if as_json:
            report = run.report
            click.echo(json.dumps({
                "store_id": run.store_id, "integration": run.integration, "outcome": run.outcome,
                "started_at": report.started_at.isoformat() if report is not None else None,
                "finished_at": report.finished_at.isoformat() if report is not None else None,
                "resumed": report.resumed if report is not None else None,
                "next_run_at": run.next_run_at.isoformat() if run.next_run_at else None,
            }))
        else:
            click.echo(f"{run.store_id}/{run.integration}: {run.outcome}")

    return show


@click.group("scheduler")
def scheduler_group():
    """Run scheduled sync jobs without a worker (in this process)."""


@scheduler_group.command("run")
@click.option("--loop", is_flag=True, help="Keep polling until interrupted.")
@click.option("--interval", default=60.0, show_default=True, help="Seconds between polls with --loop.")
@click.option("--once", is_flag=True, help="Run due jobs once and exit (the default).")
@click.option("--json", "as_json", is_flag=True, help="One JSON line per run.")
def scheduler_run(loop, interval, once, as_json):
    """Run the due jobs of every store.

    Ctrl-C gives the running job back (it is due again at once), never a day later.
    """
    from smartpush_devhost.scheduler import run_loop
    from smartpush_devhost.signals import PROCESS

    cli = click.get_current_context().obj
    show = _printer(as_json)
    host = cli.host
    # the first Ctrl-C/SIGTERM asks the running sync to stop at its next checkpoint
    with PROCESS.asking(host.stop_requested):
        if not loop or once:
            run_loop(host, cli.pm, max_rounds=1, on_run=show)
        else:
            click.echo(f"polling every {interval:g} s; Ctrl-C to stop", err=True)
            run_loop(host, cli.pm, interval=interval, on_run=show)
    PROCESS.raise_if_signalled()


@click.command("worker")
@click.option("-w", "--workers", default=1, show_default=True, help="Jobs run at once by this process (threads).")
@click.option("--json", "as_json", is_flag=True, help="One JSON line per run.")
def worker_command(workers, as_json):
    """Run a job-engine worker: takes the stores' daily syncs from the queue.

    The queue is SMARTPUSH_QUEUE_URL (redis://... to run workers on several machines)
    or, by default, the embedded SQLite queue in the data directory. SIGINT or SIGTERM
    stops the running syncs at their next checkpoint, gives their jobs back (due at
    once) and exits 130 or 143; a second signal stops at once (those jobs run again
    after the claim timeout, SMARTPUSH_JOB_CLAIM_SECONDS, default 300).
    """
    from smartpush_devhost.engine import run_worker

    cli = click.get_current_context().obj
    click.echo(f"worker on {cli.host.queue!r} with {workers} thread(s)", err=True)
    code = run_worker(cli.host, cli.pm, workers=workers, on_run=_printer(as_json))
    if code:
        raise click.exceptions.Exit(code)
