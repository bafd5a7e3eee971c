"""Reading a capture request's payload the ways PostHog's SDKs send it.

The payload is the raw body (JSON, text/plain) or the `data` field of a form body or of the query
string (GET). It may be gzip (compression=gzip-js or Content-Encoding: gzip), lz-string base64
(compression=lz64, posthog-js) or plain base64, and is JSON in the end. Every failure is a
`CaptureError` with the status code and message the client gets.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from lzstring import LZString
from starlette.datastructures import Headers
from starlette.formparsers import FormParser, MultiPartParser
from starlette.requests import Request

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class CaptureError(Exception):
    """A refused capture request: the status code and the JSON body PostHog's capture answered with."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        code: str = "invalid_payload",
        type: str = "validation_error",
        attr: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.body = {"type": type, "code": code, "detail": detail, "attr": attr}


@dataclass(frozen=True, slots=True)
class CaptureInput:
    """What one request carried: the decoded payload plus the fields that may sit beside it."""

    payload: Any
    query: Mapping[str, str]
    form: Mapping[str, str]


async def read_capture_input(request: Request, max_bytes: int) -> CaptureInput:
    query = dict(request.query_params)
    form: dict[str, str] = {}
    if request.method == "GET":
        data: bytes | str | None = query.get("data")
    else:
        body = await read_body(request, max_bytes)
        media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type in FORM_TYPES:
            form = await parse_form(request.headers, body)
            data = form.get("data")
        else:
            data = body
    if not data:
        raise CaptureError(
            400,
            "No data found. Make sure to use a POST request when sending the payload in the body of the request.",
            code="no_data",
        )
    compression = (
        query.get("compression") or form.get("compression") or request.headers.get("content-encoding", "")
    )
    return CaptureInput(decode_data(data, compression, max_bytes), query, form)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `max_bytes`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_form(headers: Mapping[str, str], body: bytes) -> dict[str, str]:
    """The text fields of an url-encoded or multipart body (files are ignored)."""

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    parser: FormParser | MultiPartParser
    if media_type == "multipart/form-data":
        parser = MultiPartParser(Headers(headers=dict(headers)), stream())
    else:
        parser = FormParser(Headers(headers=dict(headers)), stream())
    try:
        form = await parser.parse()
    except Exception as error:  # the parsers raise several types for broken bodies
        raise CaptureError(400, f"Malformed request data: cannot read the form body ({error})") from None
    return {key: value for key, value in form.items() if isinstance(value, str)}


def decode_data(data: bytes | str, compression: str, max_bytes: int) -> Any:
    """The JSON value of a payload, after decompressing and base64 decoding as needed."""
    compression = compression.strip().lower()
    raw = data.encode() if isinstance(data, str) else data
    if compression in ("gzip", "gzip-js"):
        raw = gunzip(raw, max_bytes)
    elif compression == "lz64":
        raw = lz64_decode(raw, max_bytes)
    try:
        return parse_json(raw)
    except ValueError as error:
        decoded = _base64_or_none(raw)
        if decoded is None:
            raise CaptureError(400, f"Malformed request data: Invalid JSON: {error}") from None
    try:
        return parse_json(decoded)
    except ValueError as error:
        raise CaptureError(400, f"Malformed request data: Invalid JSON: {error}") from None


def gunzip(raw: bytes, max_bytes: int) -> bytes:
    if raw == b"undefined":
        raise CaptureError(400, "Malformed request data: the gzip body is the literal string 'undefined'")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(raw, max_bytes + 1)
    except zlib.error as error:
        raise CaptureError(400, f"Malformed request data: Failed to decompress data. {error}") from None
    if len(out) > max_bytes:
        raise _too_large(max_bytes, "once decompressed")
    if not inflater.eof:
        raise CaptureError(
            400, "Malformed request data: Failed to decompress data. The gzip data is truncated."
        )
    return out


def lz64_decode(raw: bytes, max_bytes: int) -> bytes:
    """posthog-js's `compression=lz64`: lz-string's base64 form of UTF-16 text."""
    text = raw.decode("ascii", errors="replace").replace(" ", "+")
    try:
        decoded = LZString().decompressFromBase64(text)
    except (KeyError, IndexError, TypeError, ValueError):
        decoded = None
    if not decoded:
        raise CaptureError(400, "Malformed request data: Failed to decompress data.")
    # lz-string works on UTF-16 code units: astral characters come out as surrogate pairs.
    out: bytes = decoded.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode()
    if len(out) > max_bytes:
        raise _too_large(max_bytes, "once decompressed")
    return out


def parse_json(raw: bytes) -> Any:
    """JSON, with NaN and ±Infinity read as null like PostHog's capture did. Raises ValueError."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    # also raises UnicodeDecodeError (a ValueError)
    return json.loads(raw, parse_constant=lambda _: None, parse_int=_int_like_orjson)


def _int_like_orjson(text: str) -> int | float:
    """An integer as orjson reads it: past 64 bits a float (the queue's encoder takes no bigger int)."""
    value = int(text)
    return value if -(2**63) <= value < 2**64 else float(value)


def _base64_or_none(raw: bytes) -> bytes | None:
    """Base64 (spaces read as '+', padding optional, as form bodies mangle it), or None if it is not."""
    text = raw.strip().replace(b" ", b"+")
    try:
        return base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _too_large(max_bytes: int, when: str = "") -> CaptureError:
    where = f" {when}" if when else ""
    return CaptureError(
        413, f"Request body is larger than {max_bytes} bytes{where}.", code="payload_too_large"
    )
