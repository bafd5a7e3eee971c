"""uvicorn's HTTP protocol (httptools), sending each answer's head and first body piece together.

uvicorn writes the status line and headers of an answer, then its body, as two writes: two system
calls and two TCP segments for every capture answer (a dozen bytes of body). System calls are the
dearest part of a small request on a virtual machine, and the client reads twice. Here each request's
cycle gets a transport that holds the head back until the body's first piece (or the close) comes, and
writes both at once; every other write (a `100 Continue`, later body pieces) goes out as it comes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle


class HttpProtocol(HttpToolsProtocol):
    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle: RequestResponseCycle | None = self.cycle
        # A new request's cycle; not for HEAD, whose answer uvicorn ends without writing any body.
        if cycle is not None and cycle.transport is self.transport and cycle.scope["method"] != "HEAD":
            cycle.transport = _HeadWithBody(self.transport, cycle)  # type: ignore[assignment]


class _HeadWithBody:
    """The transport as one request's cycle sees it. The cycle marks its response started just before
    it writes the head; the first write after that is held and goes out with the next write."""

    def __init__(self, transport: asyncio.Transport, cycle: RequestResponseCycle) -> None:
        self._transport = transport
        self._cycle = cycle
        self._head: bytes | None = None
        self._head_seen = False

    def write(self, data: bytes) -> None:
        if self._head is not None:
            data, self._head = self._head + data, None
        elif self._cycle.response_started and not self._head_seen:
            self._head_seen = True
            self._head = data
            return
        self._transport.write(data)

    def close(self) -> None:
        if self._head is not None:  # an answer cut short after its head: send what there is
            self._transport.write(self._head)
            self._head = None
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
