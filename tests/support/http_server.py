"""A tiny HTTP server on 127.0.0.1 for the http_fetch tests, run in a background thread.

Routes:
    /hello                  text/plain "hello"
    /redirect/<n>           302 chain of n hops ending at /hello
    /to?url=<url>&code=<c>  redirect (302 by default) to any URL
    /echo                   JSON of the method, path, headers and body it received
    /big?size=<n>           n bytes of "a"
    /binary                 a few bytes of image/png
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self._route()

    def do_HEAD(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self._route()

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output clean

    def _route(self) -> None:
        parts = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        if parts.path == "/hello":
            self._send(200, b"hello", "text/plain; charset=utf-8")
        elif parts.path.startswith("/redirect/"):
            hops = int(parts.path.rsplit("/", 1)[1])
            self._redirect(302, "/hello" if hops <= 0 else f"/redirect/{hops - 1}")
        elif parts.path == "/to":
            self._redirect(int(query.get("code", "302")), query["url"])
        elif parts.path == "/echo":
            self._echo()
        elif parts.path == "/big":
            self._send(200, b"a" * int(query.get("size", "100000")), "text/plain")
        elif parts.path == "/binary":
            self._send(200, b"\x89PNG\r\n\x1a\n\x00\x00", "image/png")
        else:
            self._send(404, b"not found", "text/plain")

    def _echo(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        echoed = {
            "method": self.command,
            "path": self.path,
            "headers": {key.lower(): value for key, value in self.headers.items()},
            "body": body,
        }
        self._send(200, json.dumps(echoed).encode(), "application/json")

    def _redirect(self, code: int, location: str) -> None:
        self.send_response(code)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


@contextmanager
def http_server() -> Iterator[int]:
    """Serve the routes above on 127.0.0.1; yield the port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="test-http-server", daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
