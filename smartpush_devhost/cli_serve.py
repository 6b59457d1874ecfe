"""``smartpush serve``: the Apps > Integrations web page and its JSON API."""

from __future__ import annotations

import click


def register(root: click.Group) -> None:
    """Add ``serve`` to the host's command line."""

    @root.command()
    @click.option("--bind", default="127.0.0.1", show_default=True, help="Address to listen on.")
    @click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
                  help="Port to listen on; 0 picks a free one.")
    @click.option("--access-log", is_flag=True, help="Log each request line (never a body).")
    def serve(bind, port, access_log):
        """Serve the web pages (Apps > Integrations, Contacts) and the JSON API."""
        from smartpush_devhost.web.server import WebServer, quiet_access_log

        cli = click.get_current_context().obj
        host = cli.host
        host.ensure_store(cli.store)
        quiet_access_log(access_log)
        server = WebServer(host, cli.pm, bind=bind, port=port)
        # one line a script can read: the URL, with the port chosen
        click.echo(f"serving {server.url}/stores/{cli.store}/apps (Ctrl-C to stop)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            host.stop_requested.set()  # syncs started from the page keep their checkpoints and stop
            click.echo("stopped", err=True)
        finally:
            server.close()
