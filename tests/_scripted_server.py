"""A tiny scripted HTTP server on 127.0.0.1 for client fault tests (real sockets, no mocks)."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

JSONAPI = "application/vnd.api+json"


class LoopbackServer:
    """A threaded HTTP server on a free port of 127.0.0.1; a context manager that serves
    in a background thread. Subclasses build their handler class and call :meth:`_listen`."""

    def _listen(self, handler) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class ScriptedServer(LoopbackServer):
    """Answers from a queue of scripted responses, else from ``default`` (a paginated
    ``/api/profiles`` collection of ``profiles`` fake resources).

    Each scripted item: ``dict(status=, body=bytes|dict, headers=, kind="response"|"reset"|"sleep"|
    "endless"|"trickle", delay=)``: ``endless`` sends chunks without end, ``trickle`` one byte
    every ``delay`` seconds (both stop by themselves after 60 s).
    """

    def __init__(self, profiles: int = 0, page_host: str | None = None):
        self.script: deque[dict] = deque()
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.profiles = [{"type": "profile", "id": f"P{i:05d}", "attributes": {"updated": f"2026-01-01T00:00:{i % 60:02d}+00:00"}} for i in range(profiles)]
        self.page_host = page_host
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = 1 << 16  # headers + body in one segment (no Nagle/delayed-ACK stalls)
            disable_nagle_algorithm = True

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                outer._handle(self)

            def finish(self):
                try:
                    super().finish()
                except OSError:
                    pass

        self._listen(Handler)

    def push(self, status=200, body=None, headers=None, kind="response", count=1, delay=0.0):
        with self.lock:
            for _ in range(count):
                self.script.append(dict(status=status, body=body, headers=headers or {}, kind=kind, delay=delay))

    def _handle(self, h: BaseHTTPRequestHandler):
        with self.lock:
            self.requests.append({"time": time.monotonic(), "path": h.path, "headers": dict(h.headers)})
            item = self.script.popleft() if self.script else None
        if item is None:
            status, headers, body = self._default(h.path)
        else:
            if item["kind"] == "reset":
                h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                h.connection.close()
                h.close_connection = True
                return
            if item["kind"] in ("endless", "trickle"):
                # a body that never ends: endless chunks, or one byte at a time (slowloris)
                try:
                    h.send_response(200)
                    h.send_header("Content-Type", JSONAPI)
                    if item["kind"] == "endless":
                        h.send_header("Transfer-Encoding", "chunked")
                    else:
                        h.send_header("Content-Length", str(10**9))
                    h.end_headers()
                    h.wfile.write(b"" if item["kind"] == "endless" else b'{"data": [')
                    h.wfile.flush()
                    chunk = b"10000\r\n" + b" " * 0x10000 + b"\r\n"
                    deadline = time.monotonic() + 60  # bounded: stops by itself
                    while time.monotonic() < deadline:
                        if item["kind"] == "endless":
                            h.wfile.write(chunk)
                        else:
                            h.wfile.write(b" ")
                            time.sleep(item["delay"] or 0.2)
                        h.wfile.flush()
                except OSError:
                    pass
                h.close_connection = True
                return
            if item["kind"] == "sleep":
                time.sleep(item["delay"])
                status, headers, body = self._default(h.path)
            else:
                status, headers, body = item["status"], dict(item["headers"]), item["body"]
                if isinstance(body, (dict, list)):
                    body = json.dumps(body).encode()
                    headers.setdefault("Content-Type", JSONAPI)
                elif isinstance(body, str):
                    body = body.encode()
                body = body or b""
        try:
            h.send_response(status)
            for k, v in headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
            h.wfile.flush()
        except OSError:
            pass

    def _default(self, raw_path: str):
        parts = urlsplit(raw_path)
        q = {k: v[0] for k, v in parse_qs(parts.query).items()}
        size = int(q.get("page[size]", 20))
        start = int(q.get("page[cursor]", 0) or 0)
        data = self.profiles[start : start + size]
        links = {"self": self.base_url + raw_path}
        if start + size < len(self.profiles):
            host = self.page_host or self.base_url
            links["next"] = f"{host}{parts.path.rstrip('/')}/?page%5Bsize%5D={size}&page%5Bcursor%5D={start + size}"
        body = json.dumps({"data": data, "links": links}).encode()
        return 200, {"Content-Type": JSONAPI}, body
