"""The operator API's door: the token is checked, and the body capped, before a byte of the body is read.

FastAPI reads and parses a request's body before it solves the route's dependencies, so a token check
in a dependency comes too late: a 300 MB body without a token would be read (and a multipart upload
spooled to disk) before the 401. This ASGI layer sits in front of the operator routes instead:

- 403 (API off) or 401 (no or wrong token) is answered from the headers alone;
- a Content-Length over ADMIN_MAX_BODY_BYTES gets 413 from the headers alone too, and a body without
  one (chunked) is counted as it is read and refused with 413 once past the cap, so that neither
  memory nor a multipart spool file holds more than the cap;
- an answer given before the body was read to its end says `Connection: close`, so the server stops
  receiving a body nobody will read (otherwise it reads and discards all of it to keep the
  connection).
"""

from __future__ import annotations

import hmac

from fastapi import HTTPException, status
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from plugin_server.config import Settings
from plugin_server.web.error_answers import error_answer

OPERATOR_PREFIX = "/api/admin"
API_OFF = "the operator API is off: set ADMIN_TOKEN to turn it on"
WRONG_TOKEN = "missing or wrong admin token: send Authorization: Bearer <ADMIN_TOKEN>"


def token_refusal(expected: str | None, authorization: str | None) -> tuple[int, str] | None:
    """(status, reason) when a request with this Authorization header may not use the operator API:
    403 while ADMIN_TOKEN is unset, 401 unless the header is `Bearer <ADMIN_TOKEN>` (compared in
    constant time); None when it may."""
    if not expected:
        return status.HTTP_403_FORBIDDEN, API_OFF
    scheme, _, given = (authorization or "").partition(" ")
    matches = hmac.compare_digest(given.strip().encode(), expected.encode())
    if scheme.lower() != "bearer" or not matches:
        return status.HTTP_401_UNAUTHORIZED, WRONG_TOKEN
    return None


def too_large(limit: int) -> str:
    return f"the request body is larger than ADMIN_MAX_BODY_BYTES ({limit} bytes)"


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a body passes the cap; FastAPI answers it (413) like its own errors."""

    def __init__(self, limit: int) -> None:
        super().__init__(status.HTTP_413_CONTENT_TOO_LARGE, too_large(limit))


class OperatorGate:
    """ASGI layer in front of an app: requests under /api/admin pass only with the token, capped."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self._token = settings.ADMIN_TOKEN
        self._limit = settings.ADMIN_MAX_BODY_BYTES

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_operator_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = token_refusal(self._token, headers.get("authorization"))
        length = headers.get("content-length", "")
        if refusal is None and length.isdigit() and int(length) > self._limit:
            refusal = status.HTTP_413_CONTENT_TOO_LARGE, too_large(self._limit)
        if refusal is not None:
            await _refuse(*refusal)(scope, receive, send)
            return
        has_body = length not in ("", "0") or "transfer-encoding" in headers
        body = _CappedBody(receive, send, self._limit, has_body=has_body)
        try:
            await self.app(scope, body.receive, body.send)
        except BodyTooLarge as error:  # when no handler answered it (a route that reads the body itself)
            if body.answered:
                raise
            await _refuse(error.status_code, error.detail)(scope, receive, send)


def is_operator_path(path: str) -> bool:
    return path == OPERATOR_PREFIX or path.startswith(OPERATOR_PREFIX + "/")


def _refuse(code: int, reason: str) -> Response:
    """The answer to a request whose body is not read: `{"detail": reason}`, closing the connection."""
    headers = {"Connection": "close"}
    if code == status.HTTP_401_UNAUTHORIZED:
        headers["WWW-Authenticate"] = "Bearer"
    return error_answer(code, reason, headers)


class _CappedBody:
    """One request's `receive` counting the body against the cap, and `send` closing the connection
    when the answer starts before the body was read to its end."""

    def __init__(self, receive: Receive, send: Send, limit: int, *, has_body: bool) -> None:
        self._receive = receive
        self._send = send
        self._limit = limit
        self._received = 0
        self._finished = not has_body
        self.answered = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            if self._received > self._limit:
                raise BodyTooLarge(self._limit)
            self._finished = not message.get("more_body", False)
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.answered = True
            if not self._finished:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
        await self._send(message)
