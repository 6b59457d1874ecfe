"""Runs the web application on a local HTTP server (``smartpush serve``)."""

from __future__ import annotations

import logging
import threading

from werkzeug.serving import make_server

from smartpush_devhost.web.app import create_app

DEFAULT_BIND = "127.0.0.1"


class WebServer:
    """The web application on ``bind:port`` (``port=0``: a free port), threaded.

    The access log (logger ``werkzeug``) has the method, path and status of each request,
    never a request body, so a pasted key never reaches it.
    """

    def __init__(self, host, pm, *, bind: str = DEFAULT_BIND, port: int = 8000):
        self.app = create_app(host, pm)
        self._server = make_server(bind, port, self.app, threaded=True)
        self.port = self._server.server_port
        self.url = f"http://{bind}:{self.port}"
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"WebServer(url={self.url!r})"

    def serve_forever(self) -> None:
        """Serve until :meth:`shutdown` (or Ctrl-C in the caller)."""
        self._server.serve_forever()

    def start(self) -> "WebServer":
        """Serve in a background thread (tests, embedding)."""
        self._thread = threading.Thread(target=self.serve_forever, name="smartpush-web", daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        """Stop the serving thread, then :meth:`close`."""
        self._server.shutdown()
        self.close()

    def close(self) -> None:
        """Close the socket and wait a while for the syncs this server started."""
        self._server.server_close()
        self.app.extensions["smartpush"].syncs.join(timeout=30)

    def __enter__(self) -> "WebServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()


def quiet_access_log(verbose: bool) -> None:
    """Access lines only with ``-v`` (they hold paths and status codes, no bodies)."""
    logging.getLogger("werkzeug").setLevel(logging.INFO if verbose else logging.WARNING)
