"""The operator API under attack: bodies sent without the token or past the cap are refused before they
are read (a real server on loopback, its memory watched), and generated requests with the token get a
4xx, never a 5xx."""

from __future__ import annotations

import re
import select
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from plugin_server.db.teams import CreatedTeam
from tests.e2e.server import RunningServer, running_server
from tests.integration.test_admin_api import AUTH, TOKEN, zipped

Db = psycopg.Connection[Any]
HUGE = 300_000_000  # what a client announces and would send, if the server read it
CAP = 1_000_000  # ADMIN_MAX_BODY_BYTES of the server under test
# What may reach the server before it answers: socket buffers on both sides of a loopback connection.
IN_FLIGHT = 32_000_000
MEMORY_GROWTH = 16_000_000  # what the web process's peak memory may grow by over all the abuse
MULTIPART_HEAD = (
    b'--b\r\nContent-Disposition: form-data; name="archive"; filename="p.zip"\r\n'
    b"Content-Type: application/zip\r\n\r\n"
)


def request_head(path: str, content_type: str, *, token: bool, length: int | None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: operator", f"Content-Type: {content_type}"]
    if token:
        lines.append(f"Authorization: Bearer {TOKEN}")
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def send_until_answered(port: int, head: bytes, chunk: bytes, first: bytes = b"") -> tuple[int, bytes]:
    """Send `head` and `first`, then `chunk` after `chunk` until HUGE bytes went or the server answered
    or closed; return how many bytes of body went and what the server answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(head + first)
        connection.setblocking(False)
        sent, answer = len(first), b""
        deadline = time.monotonic() + 30
        while sent < HUGE and time.monotonic() < deadline:
            readable, writable, _ = select.select([connection], [connection], [], 1)
            if readable:
                try:
                    data = connection.recv(65536)
                except ConnectionResetError:
                    data = b""
                answer += data
                if not data or (b"\r\n\r\n" in answer and answer.endswith(b"}")):
                    break
            if writable:
                try:
                    sent += connection.send(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    break
        connection.setblocking(True)
        try:  # the rest of the answer, up to the server's close
            while data := connection.recv(65536):
                answer += data
        except (ConnectionResetError, TimeoutError):
            pass
    return sent, answer


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def peak_memory(pid: int) -> int:
    """The process's peak resident memory (VmHWM), in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert match, status
    return int(match[1]) * 1024


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1])


def test_bodies_are_refused_before_they_are_read(
    tmp_path: Path, database_url: str, redis_url: str, team: CreatedTeam, clean_db: Db
) -> None:
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "WORKER_CONCURRENCY": "1",
        "ADMIN_TOKEN": TOKEN,
        "ADMIN_MAX_BODY_BYTES": str(CAP),
    }
    with running_server(tmp_path, env) as server:
        pid = server.web_pid()
        port = int(server.env["WEB_PORT"])
        # Warm up: a good upload and a refusal, so that what they import is in the peak already.
        good = httpx.post(
            f"{server.web_url}/api/admin/plugins/archive",
            files={"archive": ("hello-python.zip", zipped("hello-python"), "application/zip")},
            headers=AUTH,
            timeout=30,
        )
        assert good.status_code == 201, good.text
        assert httpx.post(f"{server.web_url}/api/admin/plugins", json={}).status_code == 401
        before = peak_memory(pid)

        json_head = request_head("/api/admin/plugins", "application/json", token=False, length=HUGE)
        sent, answer = send_until_answered(port, json_head, b"[" * 65536)
        assert (status_of(answer), sent < IN_FLIGHT) == (401, True), (answer[:300], sent)
        assert b"connection: close" in answer.lower()

        upload = "/api/admin/plugins/archive"
        multipart = "multipart/form-data; boundary=b"
        for token in (False, True):  # chunked: no length to judge by, so counted as it comes
            head = request_head(upload, multipart, token=token, length=None)
            sent, answer = send_until_answered(port, head, chunked(b"x" * 65536), chunked(MULTIPART_HEAD))
            assert (status_of(answer), sent < IN_FLIGHT) == (413 if token else 401, True), (answer, sent)

        head = request_head(upload, multipart, token=True, length=HUGE)
        sent, answer = send_until_answered(port, head, b"x" * 65536, MULTIPART_HEAD)
        assert (status_of(answer), sent < IN_FLIGHT) == (413, True), (answer[:300], sent)
        assert b"ADMIN_MAX_BODY_BYTES (1000000 bytes)" in answer

        assert peak_memory(pid) - before < MEMORY_GROWTH
        assert_still_serving(server)


def assert_still_serving(server: RunningServer) -> None:
    answer = httpx.get(f"{server.web_url}/api/admin/plugins", headers=AUTH, timeout=10)
    assert answer.status_code == 200
    assert [plugin["name"] for plugin in answer.json()] == ["hello-python"]
