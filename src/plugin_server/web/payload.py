"""Reading a capture request's payload the ways PostHog's SDKs send it.

The payload is the raw body (JSON, text/plain) or the `data` field of a form body or of the query
string (GET). It may be gzip (compression=gzip-js or Content-Encoding: gzip), lz-string base64
(compression=lz64, posthog-js) or plain base64, and is JSON in the end. Every failure is a
`CaptureError` with the status code and message the client gets.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import time
import zlib
from collections.abc import AsyncGenerator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.datastructures import Headers
from starlette.formparsers import FormParser, MultiPartParser
from starlette.requests import ClientDisconnect
from starlette.types import Receive

from plugin_server.ingestion.storable import (
    MAX_JSON_DEPTH,
    TooDeep,
    check_depth,
    int_like_orjson,
    may_need_scrubbing,
    may_nest_too_deep,
    scrub,
)
from plugin_server.web.lzstring import OutputTooLarge, decompress_from_base64
from plugin_server.web.request_head import RequestHead

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
INLINE_BYTES = 16_384  # payloads decoded on the event loop: plain JSON up to this size...
INLINE_COMPRESSED_BYTES = 512  # ...compressed up to this (gzip inflates at most ~1000x)
DECODE_THREADS = 2
GUNZIP_PIECE_BYTES = 1 << 20


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


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """How much a request may cost while it is decoded: bytes as sent and once decompressed, and
    seconds of decompressing and parsing."""

    max_bytes: int
    seconds: float


async def read_capture_input(head: RequestHead, receive: Receive, limits: DecodeLimits) -> CaptureInput:
    query = head.query
    form: dict[str, str] = {}
    if head.method == "GET":
        data: bytes | str | None = query.get("data")
    else:
        body = await read_body(head.headers, receive, limits.max_bytes)
        media_type = head.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type in FORM_TYPES:
            form = await parse_form(head.headers, body)
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
        query.get("compression") or form.get("compression") or head.headers.get("content-encoding", "")
    )
    return CaptureInput(await decode_off_loop(data, compression, limits), query, form)


async def decode_off_loop(data: bytes | str, compression: str, limits: DecodeLimits) -> Any:
    """`decode_data`, in a thread of its own unless the payload is small enough to cost nothing.

    A large or compressed payload can take a while to decode (at most `limits.seconds`); in a thread
    the event loop goes on answering other requests meanwhile (health checks among them). At most
    DECODE_THREADS such payloads are decoded at once; the others wait their turn."""
    kind = compression.strip().lower()
    compressed = kind in ("gzip", "gzip-js", "lz64")
    if len(data) <= (INLINE_COMPRESSED_BYTES if compressed else INLINE_BYTES):
        return decode_data(data, compression, limits)
    if kind in ("gzip", "gzip-js") and len(data) <= INLINE_BYTES:
        # posthog-js's usual batch: gzip of a few KB of JSON. Inflated here, it costs what a plain
        # payload of its inflated size does (at most INLINE_BYTES), and no hand-off to a thread.
        raw = data.encode() if isinstance(data, str) else data
        inflated = small_gunzip(raw, min(INLINE_BYTES, limits.max_bytes))
        if inflated is not None:
            return decode_data(inflated, "", limits)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_decoders(), decode_data, data, compression, limits)


@functools.cache
def _decoders() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="capture-decode")


async def read_body(headers: Mapping[str, str], receive: Receive, max_bytes: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `max_bytes`."""
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect: nobody is left to answer
            raise ClientDisconnect()
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


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


def decode_data(data: bytes | str, compression: str, limits: DecodeLimits) -> Any:
    """The JSON value of a payload, after decompressing and base64 decoding as needed; strings
    scrubbed of what cannot be stored (see `storable`), nesting at most MAX_JSON_DEPTH levels."""
    deadline = time.monotonic() + limits.seconds
    compression = compression.strip().lower()
    raw = data.encode() if isinstance(data, str) else data
    if compression in ("gzip", "gzip-js"):
        raw = gunzip(raw, limits.max_bytes, deadline)
    elif compression == "lz64":
        raw = lz64_decode(raw, limits.max_bytes, deadline)
    try:
        value, clean = parse_json(raw)
    except ValueError as error:
        decoded = _base64_or_none(raw)
        if decoded is None:
            raise _invalid_json(error) from None
        try:
            value, clean = parse_json(decoded)
        except ValueError as error:
            raise _invalid_json(error) from None
        raw = decoded  # the JSON text, for the bracket count below
    try:
        if may_nest_too_deep(raw):
            check_depth(value)
    except TooDeep as error:
        raise CaptureError(400, f"Malformed request data: {error}.", code="too_deep") from None
    return value if clean else scrub(value)


def gunzip(raw: bytes, max_bytes: int, deadline: float) -> bytes:
    """gzip, inflated a piece at a time: at most `max_bytes` of output, refused past `deadline`."""
    if raw == b"undefined":
        raise _undecompressable("the gzip body is the literal string 'undefined'")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    pieces: list[bytes] = []
    size = 0
    pending = raw
    try:
        while pending and not inflater.eof:
            piece = inflater.decompress(pending, GUNZIP_PIECE_BYTES)
            pending = inflater.unconsumed_tail
            size += len(piece)
            if size > max_bytes:
                raise _too_large(max_bytes, "once decompressed")
            pieces.append(piece)
            if time.monotonic() > deadline:
                raise _too_slow()
    except zlib.error as error:
        raise _undecompressable(str(error)) from None
    if not inflater.eof:
        raise _undecompressable("The gzip data is truncated.")
    return b"".join(pieces)


def small_gunzip(raw: bytes, max_bytes: int) -> bytes | None:
    """The inflated gzip data if it is complete and at most `max_bytes`, else None (too large, broken
    or truncated: for `gunzip` to inflate, or to refuse with its reason)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(raw, max_bytes + 1)
    except zlib.error:
        return None
    return inflated if inflater.eof and len(inflated) <= max_bytes else None


def lz64_decode(raw: bytes, max_bytes: int, deadline: float) -> bytes:
    """posthog-js's `compression=lz64`: lz-string's base64 form of UTF-16 text."""
    text = raw.decode("ascii", errors="replace").replace(" ", "+")
    try:
        decoded = decompress_from_base64(text, max_bytes, deadline)
    except OutputTooLarge:
        raise _too_large(max_bytes, "once decompressed") from None
    except TimeoutError:
        raise _too_slow() from None
    except ValueError as error:
        raise _undecompressable(f"This is not lz-string base64: {error}.") from None
    if not decoded:
        raise _undecompressable("The lz-string data is empty.")
    # lz-string works on UTF-16 code units: astral characters come out as surrogate pairs.
    out: bytes = decoded.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode()
    if len(out) > max_bytes:
        raise _too_large(max_bytes, "once decompressed")
    return out


def parse_json(raw: bytes) -> tuple[Any, bool]:
    """JSON, with NaN and ±Infinity read as null like PostHog's capture did, and whether its
    strings are known to need no scrubbing. Raises ValueError."""
    try:
        return orjson.loads(raw), not may_need_scrubbing(raw)
    except orjson.JSONDecodeError as error:
        if "depth" in str(error):
            raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep") from None
    # NaN, Infinity and lone surrogates, which orjson refuses (also raises UnicodeDecodeError)
    try:
        return json.loads(raw, parse_constant=lambda _: None, parse_int=int_like_orjson), False
    except RecursionError:
        raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep") from None


def _base64_or_none(raw: bytes) -> bytes | None:
    """Base64 (spaces read as '+', padding optional, as form bodies mangle it), or None if it is not."""
    text = raw.strip().replace(b" ", b"+")
    try:
        return base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _invalid_json(error: ValueError) -> CaptureError:
    return CaptureError(400, f"Malformed request data: Invalid JSON: {error}")


def _undecompressable(reason: str) -> CaptureError:
    return CaptureError(400, f"Malformed request data: Failed to decompress data. {reason}")


def _too_slow() -> CaptureError:
    return CaptureError(413, "Request body takes too long to decompress and read.", code="payload_too_large")


def _too_large(max_bytes: int, when: str = "") -> CaptureError:
    where = f" {when}" if when else ""
    return CaptureError(
        413, f"Request body is larger than {max_bytes} bytes{where}.", code="payload_too_large"
    )
