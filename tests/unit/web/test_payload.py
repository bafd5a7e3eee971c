"""Decoding capture payloads: every encoding PostHog's SDKs use, and the refusals."""

from __future__ import annotations

import base64
import gzip
import json

import pytest

from plugin_server.web.payload import CaptureError, decode_data, parse_form

from .lz import lz64

EVENT = {"event": "$pageview", "distinct_id": "u1", "properties": {"emoji": "é😀", "n": 1}}
LIMIT = 1_000_000


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
        (gzip.compress(b'{"a": 1}')[:-12], "gzip", "truncated"),
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
