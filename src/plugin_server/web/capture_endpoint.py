"""The capture endpoint as a bare ASGI app: read the request, check it, queue its events, answer.

Nearly all the traffic of the web process is capture requests, so this path avoids Starlette's request
and response objects (see `request_head`) and answers with header lists built once.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from plugin_server.config import Settings
from plugin_server.ingestion.enqueue import EventEnqueuer
from plugin_server.ingestion.teams import TeamManager
from plugin_server.services.metrics import get_metrics
from plugin_server.web.capture import Unavailable, captured_events
from plugin_server.web.client_ip import client_ip
from plugin_server.web.payload import CaptureError, DecodeLimits, read_capture_input
from plugin_server.web.request_head import RequestHead, request_head

log = logging.getLogger(__name__)

# PostHog capture's CORS answer: any origin may send (browsers run posthog-js on any site).
CORS_HEADERS = {
    "Access-Control-Allow-Credentials": "true",
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "X-Requested-With, Content-Type",
    "Vary": "Origin",
}
_CORS = [(name.lower().encode(), value.encode()) for name, value in CORS_HEADERS.items()]
_JSON = (b"content-type", b"application/json")
_CAPTURED = b'{"status":1}'
_UNAVAILABLE = {
    "type": "server_error",
    "code": "unavailable",
    "detail": "The events could not be queued right now; send them again later.",
    "attr": None,
}
_FAILED = {
    "type": "server_error",
    "code": "internal_error",
    "detail": "The request could not be handled; it is logged.",
    "attr": None,
}


def cors_headers(origin: str | None) -> dict[str, str]:
    """The CORS headers of a capture (or flags) answer: the constant ones and the request's origin."""
    return {"Access-Control-Allow-Origin": origin or "*", **CORS_HEADERS}


class CaptureEndpoint:
    """GET and POST capture requests, and their CORS preflight (OPTIONS)."""

    def __init__(self, settings: Settings, teams: TeamManager, enqueuer: EventEnqueuer) -> None:
        self._settings = settings
        self._teams = teams
        self._enqueuer = enqueuer
        self._limits = DecodeLimits(settings.CAPTURE_MAX_BODY_BYTES, settings.CAPTURE_DECODE_TIMEOUT)
        self._received = ReceivedCount()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        head = request_head(scope)
        if head.method == "OPTIONS":
            await _answer(send, 200, b"", head, content_type=False)
            return
        try:
            status, body = await self._capture(head, receive)
        except ClientDisconnect:
            return  # before its body was read: nothing was queued, and nobody waits for an answer
        await _answer(send, status, body, head)

    async def _capture(self, head: RequestHead, receive: Receive) -> tuple[int, bytes]:
        settings = self._settings
        try:
            received = await read_capture_input(head, receive, self._limits)
            events = await captured_events(
                received,
                team_by_token=self._teams.get_team_by_token,
                ip=client_ip(head.peer, head.headers.get("x-forwarded-for"), settings.trusted_proxy_networks),
                site_url=head.base_url,
            )
        except CaptureError as error:
            return error.status, orjson.dumps(error.body)
        except Unavailable:
            log.exception("capture request from %s could not be checked", head.peer)
            return 503, orjson.dumps(_UNAVAILABLE)
        except ClientDisconnect:
            raise
        except Exception:
            log.exception("capture request from %s failed", head.peer)
            return 500, orjson.dumps(_FAILED)
        try:
            await self._enqueuer.enqueue(events)
        except Exception:
            log.exception("capture request from %s could not be queued", head.peer)
            return 503, orjson.dumps(_UNAVAILABLE)
        self._received.add(len(events))
        return 200, _CAPTURED


class ReceivedCount:
    """The events accepted, recorded in the metrics once per event loop turn rather than per request:
    one recording costs ~9 µs (a stat of the multiprocess folder, two locks, an mmap write), a
    twentieth of a single-event request, and a loop turn answers many requests under load."""

    def __init__(self) -> None:
        self._pending = 0

    def add(self, events: int) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._record)
        self._pending += events

    def _record(self) -> None:
        events, self._pending = self._pending, 0
        get_metrics().events_received("capture", events)


async def _answer(
    send: Send, status: int, body: bytes, head: RequestHead, *, content_type: bool = True
) -> None:
    headers = [(b"content-length", str(len(body)).encode())]
    if content_type:
        headers.append(_JSON)
    headers.append(
        (b"access-control-allow-origin", head.headers.get("origin", "*").encode("latin-1") or b"*")
    )
    headers += _CORS
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
