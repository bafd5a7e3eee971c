"""A stand-in for an internet service: an HTTP server on 127.0.0.1 that records every request; and the
plugin HTTP client that may reach such stand-ins (plugin HTTP goes only to public addresses unless
allowed)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from plugin_server.config import load_settings
from plugin_server.plugins.egress import plugin_http_client


@dataclass(frozen=True)
class Request:
    method: str
    target: str  # the path with its query string, as sent
    headers: dict[str, str]  # lower-cased names
    body: bytes

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, str]:
        return {key: values[-1] for key, values in parse_qs(urlsplit(self.target).query).items()}


# What to answer a request with: (status, JSON body bytes).
Answer = Callable[[Request], tuple[int, bytes]]


def loopback_plugin_http(timeout: float = 5) -> httpx.AsyncClient:
    """Plugin HTTP as topology.open_plugin_services builds it, with PLUGIN_HTTP_ALLOW_PRIVATE_NETWORKS
    on for the stand-ins."""
    return plugin_http_client(
        load_settings({}, PLUGIN_HTTP_ALLOW_PRIVATE_NETWORKS=True, TASK_TIMEOUT=timeout)
    )


class LoopbackService:
    """Use as a context manager; `url` is where it listens (127.0.0.1, or any loopback `host`),
    `requests` what it received."""

    def __init__(
        self, answer: Answer, extra_headers: dict[str, str] | None = None, *, host: str = "127.0.0.1"
    ) -> None:
        self.requests: list[Request] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = Request(
                    self.command,
                    self.path,
                    {key.lower(): value for key, value in self.headers.items()},
                    self.rfile.read(length),
                )
                service.requests.append(request)
                status, body = answer(request)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for name, value in (extra_headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((host, 0), Handler)
        self.port: int = self._server.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> LoopbackService:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


class LoopbackUdp:
    """A UDP listener on 127.0.0.1 (a StatsD server stand-in); `lines()` is every line received so far."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.setblocking(False)
        self.port: int = self._socket.getsockname()[1]
        self._lines: list[str] = []

    def lines(self) -> list[str]:
        with contextlib.suppress(BlockingIOError):
            while True:
                self._lines.extend(self._socket.recv(65536).decode().splitlines())
        return list(self._lines)

    def close(self) -> None:
        self._socket.close()
