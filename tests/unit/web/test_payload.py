"""Decoding capture payloads: every encoding PostHog's SDKs use, and the refusals."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import os
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plugin_server.ingestion.storable import MAX_JSON_DEPTH
from plugin_server.web.payload import (
    DECODE_THREADS,
    INLINE_COMPRESSED_BYTES,
    CaptureError,
    DecodeLimits,
    _decoders,
    decode_data,
    decode_off_loop,
    parse_form,
)

from .lz import lz64, lz64_bomb

EVENT = {"event": "$pageview", "distinct_id": "u1", "properties": {"emoji": "é😀", "n": 1}}
LIMIT = DecodeLimits(max_bytes=1_000_000, seconds=5)


def test_plain_json() -> None:
    assert decode_data(json.dumps(EVENT).encode(), "", LIMIT) == EVENT


def test_base64_json_even_with_spaces_for_plus_and_no_padding() -> None:
    encoded = base64.b64encode(json.dumps(EVENT).encode()).decode().rstrip("=").replace("+", " ")
    assert decode_data(encoded, "", LIMIT) == EVENT


@pytest.mark.parametrize("compression", ["gzip", "gzip-js", "GZIP"])
def test_gzip(compression: str) -> None:
    assert decode_data(gzip.compress(json.dumps(EVENT).encode()), compression, LIMIT) == EVENT


def test_lz64_of_posthog_js_restores_characters_outside_the_basic_plane() -> None:
    assert decode_data(lz64(json.dumps([EVENT], ensure_ascii=False)).encode(), "lz64", LIMIT) == [EVENT]


def test_nan_and_infinity_become_null() -> None:
    assert decode_data(b'{"a": NaN, "b": Infinity}', "", LIMIT) == {"a": None, "b": None}
    # Integers past 64 bits become floats, as orjson reads them, with or without a NaN beside them.
    for body in (
        b'{"n": 123456789012345678901234567890}',
        b'{"n": 123456789012345678901234567890, "x": NaN}',
    ):
        assert decode_data(body, "", LIMIT)["n"] == 1.2345678901234568e29


@pytest.mark.parametrize(
    ("data", "compression", "message"),
    [
        (b"{not json", "", "Invalid JSON"),
        (b"not gzip at all", "gzip", "Failed to decompress"),
        (gzip.compress(b'{"a": 1}', mtime=0)[:-12], "gzip", "truncated"),
        (b"undefined", "gzip-js", "'undefined'"),
        (b"!!!not lz!!!", "lz64", "Failed to decompress"),
    ],
)
def test_undecodable_bodies_are_400(data: bytes, compression: str, message: str) -> None:
    with pytest.raises(CaptureError) as caught:
        decode_data(data, compression, LIMIT)
    assert caught.value.status == 400
    assert message in caught.value.body["detail"]
    assert caught.value.body["type"] == "validation_error"


def test_a_small_gzip_that_inflates_past_the_limit_is_413() -> None:
    bomb = gzip.compress(b"[" + b" " * 5_000_000 + b"]")
    assert len(bomb) < 10_000
    with pytest.raises(CaptureError) as caught:
        decode_data(bomb, "gzip", LIMIT)
    assert caught.value.status == 413
    assert "once decompressed" in caught.value.body["detail"]


async def test_url_encoded_form() -> None:
    form = await parse_form(
        {"content-type": "application/x-www-form-urlencoded"}, b"data=eyJhIjoxfQ%3D%3D&compression=&ver=1.2"
    )
    assert form == {"data": "eyJhIjoxfQ==", "compression": "", "ver": "1.2"}


async def test_multipart_form() -> None:
    body = (
        b'--XX\r\nContent-Disposition: form-data; name="data"\r\n\r\neyJhIjoxfQ==\r\n'
        b'--XX\r\nContent-Disposition: form-data; name="api_key"\r\n\r\nphc_x\r\n--XX--\r\n'
    )
    form = await parse_form({"content-type": "multipart/form-data; boundary=XX"}, body)
    assert form == {"data": "eyJhIjoxfQ==", "api_key": "phc_x"}


def test_an_lz64_bomb_is_refused_while_it_decompresses() -> None:
    """74 KB of lz-string that the `lzstring` package grew to 2 GB: stopped at the limit, at once."""
    bomb = lz64_bomb(30_000).encode()  # 450 million characters once decompressed
    assert len(bomb) < 75_000
    started = time.monotonic()
    with pytest.raises(CaptureError) as caught:
        decode_data(bomb, "lz64", LIMIT)
    assert caught.value.status == 413
    assert time.monotonic() - started < 1


def test_decompressing_past_the_time_limit_is_413() -> None:
    """50,000 events take 100-200 ms to decompress here: a limit of 1 ms trips on any machine."""
    text = json.dumps([{"event": str(i), "properties": {"n": i}} for i in range(50_000)])
    with pytest.raises(CaptureError) as caught:
        decode_data(lz64(text).encode(), "lz64", DecodeLimits(max_bytes=10**8, seconds=0.001))
    assert (caught.value.status, caught.value.body["code"]) == (413, "payload_too_large")


@settings(max_examples=300, database=None)
@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= $!", max_size=200))
def test_any_lz64_text_is_decoded_or_refused_with_400_or_413(text: str) -> None:
    try:
        decode_data(text.encode(), "lz64", LIMIT)
    except CaptureError as error:
        assert error.status in (400, 413)


def test_nesting_past_the_limit_is_400_whatever_the_parser() -> None:
    for depth in (MAX_JSON_DEPTH + 1, 1100, 5000):
        for extra in (b"", b", NaN"):  # orjson's reading, and the standard parser's
            body = b"[" * depth + b"]" * depth
            body = b'{"a": ' + body + extra + b"}" if extra else body
            with pytest.raises(CaptureError) as caught:
                decode_data(body, "", LIMIT)
            assert caught.value.status == 400, (depth, extra)
    assert decode_data(b"[" * 100 + b"]" * 100, "", LIMIT)


def _depth(value: Any) -> int:
    """How many levels of objects and arrays nest in `value`, counted afresh (not with storable's walk)."""
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
    return 0 if children is None else 1 + max(map(_depth, children), default=0)


@st.composite
def _nested(draw: st.DrawFn) -> Any:
    """A chain of arrays and objects about MAX_JSON_DEPTH deep, each level with some siblings: empty
    containers (brackets that add no depth) and strings holding brackets, which the bracket count
    also sees. (Drawn from a seeded random: hypothesis drawing each level costs seconds.)"""
    levels = draw(st.integers(MAX_JSON_DEPTH - 3, MAX_JSON_DEPTH + 3))
    pick = draw(st.randoms(use_true_random=False))
    value: Any = pick.choice([1, "x", None, "[{", []])
    for _ in range(levels):
        siblings = pick.choices([[], {}, "]][[", "{", 2], k=pick.randint(0, 2))
        if pick.random() < 0.5:
            value = [*siblings, value]
        else:
            value = {**{f"s{index}": sibling for index, sibling in enumerate(siblings)}, "v": value}
    return value


@given(st.one_of(_nested(), st.lists(st.sampled_from([[], {}, [[]], "[["]), max_size=300)))
@settings(max_examples=100)
def test_only_nesting_past_the_limit_is_refused_whatever_the_bracket_count(value: Any) -> None:
    """The bracket count that spares most payloads the walk changes no answer: too deep is refused,
    and a payload of many brackets but shallow is kept."""
    body = json.dumps(value).encode()
    if _depth(value) > MAX_JSON_DEPTH:
        with pytest.raises(CaptureError) as caught:
            decode_data(body, "", LIMIT)
        assert caught.value.body["code"] == "too_deep"
    else:
        assert decode_data(body, "", LIMIT) == value


def test_nul_characters_and_lone_surrogates_are_scrubbed_not_refused() -> None:
    body = b'{"e\\u0000": "a\\u0000b", "s": "\\ud800x\\ud83d\\ude00", "n": NaN}'
    assert decode_data(body, "", LIMIT) == {"e": "ab", "s": "\ufffdx😀", "n": None}
    assert decode_data(b'{"a": "\\\\u0000"}', "", LIMIT) == {"a": "\\u0000"}  # an escaped backslash


@pytest.mark.parametrize("encode", [lambda b: b, lambda b: base64.b64encode(b), gzip.compress])
def test_deep_nesting_is_found_in_every_encoding(encode: Any) -> None:
    body = b'{"a": ' + b"[" * (MAX_JSON_DEPTH + 5) + b"]" * (MAX_JSON_DEPTH + 5) + b"}"
    with pytest.raises(CaptureError) as caught:
        decode_data(encode(body), "gzip" if encode is gzip.compress else "", LIMIT)
    assert caught.value.body["code"] == "too_deep"


async def test_a_gzip_batch_of_a_few_kb_is_inflated_on_the_loop_and_a_bomb_in_a_decode_thread() -> None:
    """While every decode thread is busy, posthog-js's usual gzip batch is still decoded (on the event
    loop: it inflates to less than INLINE_BYTES); a small gzip that inflates to 5 MB waits for a
    thread, and is refused there."""
    batch = [{**EVENT, "properties": {"page": os.urandom(32).hex()}} for _ in range(20)]
    body = gzip.compress(json.dumps(batch).encode())
    bomb = gzip.compress(b"[" + b" " * 5_000_000 + b"]")
    broken = gzip.compress(json.dumps(batch).encode())[:-12]
    assert (
        len(body) > INLINE_COMPRESSED_BYTES and len(broken) > INLINE_COMPRESSED_BYTES and len(bomb) < 10_000
    )
    release = threading.Event()
    loop = asyncio.get_running_loop()
    busy = [loop.run_in_executor(_decoders(), release.wait) for _ in range(DECODE_THREADS)]
    try:
        assert await asyncio.wait_for(decode_off_loop(body, "gzip-js", LIMIT), 5) == batch
        waiting = [asyncio.ensure_future(decode_off_loop(data, "gzip", LIMIT)) for data in (bomb, broken)]
        done, _ = await asyncio.wait(waiting, timeout=0.3)
        assert not done
    finally:
        release.set()
        await asyncio.gather(*busy)
    with pytest.raises(CaptureError) as too_large:
        await waiting[0]
    assert too_large.value.status == 413
    with pytest.raises(CaptureError) as truncated:
        await waiting[1]
    assert truncated.value.status == 400
    assert "truncated" in truncated.value.body["detail"]
