"""uvicorn's HTTP protocol with each answer's head and first body piece in one write, driven with the
bytes a client sends and a transport that records every write."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from plugin_server.web.http_protocol import HttpProtocol

App = Any


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 3008), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def connected(app: App) -> tuple[HttpProtocol, RecordingTransport]:
    config = uvicorn.Config(app, http=HttpProtocol, log_config=None, lifespan="off")
    config.load()
    protocol = HttpProtocol(config, ServerState(), app_state={})
    transport = RecordingTransport()
    protocol.connection_made(transport)
    return protocol, transport


async def settled(transport: RecordingTransport, writes: int) -> list[bytes]:
    for _ in range(200):
        if len(transport.writes) >= writes:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # nothing more comes
    return transport.writes


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]}
    )
    await send({"type": "http.response.body", "body": body})


async def test_the_head_and_the_body_of_an_answer_go_out_in_one_write_on_each_request() -> None:
    protocol, transport = connected(echo)
    protocol.data_received(b"POST /e/ HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nfirst")
    (first,) = await settled(transport, 1)
    protocol.data_received(b"POST /e/ HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nsecond")
    writes = await settled(transport, 2)
    assert len(writes) == 2
    assert first.startswith(b"HTTP/1.1 200 OK\r\n") and first.endswith(b"\r\n\r\nfirst")
    assert writes[1].startswith(b"HTTP/1.1 200 OK\r\n") and writes[1].endswith(b"\r\n\r\nsecond")
    assert not transport.closed


async def test_a_100_continue_goes_out_at_once_and_the_answer_after_the_body() -> None:
    protocol, transport = connected(echo)
    protocol.data_received(
        b"POST /e/ HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    )
    assert await settled(transport, 1) == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    protocol.data_received(b"body")
    writes = await settled(transport, 2)
    assert len(writes) == 2
    assert writes[1].startswith(b"HTTP/1.1 200 OK\r\n") and writes[1].endswith(b"\r\n\r\nbody")


async def test_a_streamed_answer_sends_its_head_with_the_first_piece_then_each_piece() -> None:
    async def stream(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for piece in (b"one", b"two", b""):
            await send({"type": "http.response.body", "body": piece, "more_body": piece != b""})

    protocol, transport = connected(stream)
    protocol.data_received(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n")
    writes = await settled(transport, 3)
    assert len(writes) == 3
    assert b"transfer-encoding: chunked" in writes[0] and writes[0].endswith(b"\r\n\r\n3\r\none\r\n")
    assert writes[1:] == [b"3\r\ntwo\r\n", b"0\r\n\r\n"]


async def test_an_answer_cut_short_after_its_head_sends_the_head_and_closes() -> None:
    async def fails(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
        raise RuntimeError("the app failed after starting its answer")

    protocol, transport = connected(fails)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    writes = await settled(transport, 1)
    assert len(writes) == 1 and writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.closed


async def test_the_head_of_an_answer_to_a_head_request_goes_out_on_a_kept_alive_connection() -> None:
    # uvicorn writes no body at all for HEAD: a head held back for one would never be sent
    protocol, transport = connected(echo)
    protocol.data_received(b"HEAD /_health HTTP/1.1\r\nHost: x\r\n\r\n")
    writes = await settled(transport, 1)
    assert len(writes) == 1 and writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert writes[0].endswith(b"\r\n\r\n") and not transport.closed
