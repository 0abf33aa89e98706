"""A real HTTP server on 127.0.0.1 for hermetic tests of the web tools.

Routes map a path (without query) to a function that writes the response through the handler, so
each test states the protocol behaviour it needs (success, errors, sleeps, redirects, huge bodies).
Every request is recorded, which lets tests assert what was (or was not) sent.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Route = Callable[["Handler", Recorded], None]


class Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        pass

    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("content-length") or 0)
        request = Recorded(self.command, parts.path, parse_qs(parts.query), dict(self.headers.items()),
                           self.rfile.read(length) if length else b"")
        self.server.owner.requests.append(request)
        route = self.server.owner.routes.get(parts.path)
        try:
            if route is None:
                send_bytes(self, b"not found", "text/plain", status=404)
            else:
                route(self, request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeouts, size caps): exactly what some tests provoke

    do_GET = do_POST = _dispatch


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: LoopbackServer


@dataclass
class LoopbackServer:
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)

    def __enter__(self) -> LoopbackServer:
        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def hits(self, path: str) -> int:
        return sum(r.path == path for r in self.requests)


def send_bytes(h: BaseHTTPRequestHandler, data: bytes, content_type: str, *, status: int = 200,
               headers: dict[str, str] | None = None, length: int | None = None) -> None:
    h.send_response(status)
    h.send_header("Content-Type", content_type)
    h.send_header("Content-Length", str(len(data) if length is None else length))
    for key, value in (headers or {}).items():
        h.send_header(key, value)
    h.end_headers()
    h.wfile.write(data)


def send_json(h: BaseHTTPRequestHandler, payload: Any, *, status: int = 200) -> None:
    send_bytes(h, json.dumps(payload).encode(), "application/json", status=status)


def redirect(h: BaseHTTPRequestHandler, location: str, status: int = 302) -> None:
    send_bytes(h, b"", "text/plain", status=status, headers={"Location": location})


def sleepy(seconds: float, then: Route | None = None) -> Route:
    """A route that answers only after ``seconds`` (longer than the client's timeout in tests)."""

    def route(h: Handler, request: Recorded) -> None:
        time.sleep(seconds)
        if then is not None:
            then(h, request)
        else:
            send_json(h, {})

    return route


def sequence(*routes: Route) -> Route:
    """A route that behaves like ``routes[i]`` on its i-th call (the last one repeats)."""
    calls = iter(range(10**9))

    def route(h: Handler, request: Recorded) -> None:
        routes[min(next(calls), len(routes) - 1)](h, request)

    return route
