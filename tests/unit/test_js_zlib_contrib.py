"""require('zlib') and require('@posthog/plugin-contrib') in the JavaScript runtime (zlib.js and contrib.js).

zlib is checked against Python's zlib and gzip both ways, through the runtime's own setup script
(bytes cross as base64). createBuffer runs in a plugin through JSPlugin, with its timer.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import random
import zlib
from collections.abc import Iterator
from typing import Any

import brotli
import pytest
from py_mini_racer import JSEvalException, MiniRacer

from tests.js_support import loaded_plugin, process_one, set_up_racer


@pytest.fixture(scope="module")
def racer() -> Iterator[MiniRacer]:
    with set_up_racer("globalThis.__zlib = require('zlib');") as racer:
        yield racer


def run(racer: MiniRacer, function: str, data: bytes) -> bytes:
    """`zlib[function](data)` in the isolate."""
    given = base64.b64encode(data).decode()
    result = racer.eval(f"__zlib.{function}(Buffer.from({json.dumps(given)}, 'base64')).toString('base64')")
    assert isinstance(result, str), result
    return base64.b64decode(result)


def text_mb() -> bytes:
    words = [f"event_{i}" for i in range(500)] + ["$pageview", "distinct_id", "properties", "timestamp"]
    rng = random.Random(1)
    return " ".join(rng.choice(words) for _ in range(140_000)).encode()[: 1 << 20]


INPUTS = {
    "empty": b"",
    "one byte": b"x",
    "small": b"hello hello hello world",
    "runs": b"a" * 1000 + b"b" * 70_000,
    "json": json.dumps([{"event": "$pageview", "properties": {"i": i}} for i in range(2000)]).encode(),
    "text 1 MB": text_mb(),
    "random 200 kB": random.Random(2).randbytes(200_000),
}


@pytest.mark.parametrize("name", INPUTS)
def test_our_output_decompresses_in_python(racer: MiniRacer, name: str) -> None:
    data = INPUTS[name]
    assert zlib.decompress(run(racer, "deflateSync", data)) == data
    assert gzip.decompress(run(racer, "gzipSync", data)) == data
    assert zlib.decompress(run(racer, "deflateRawSync", data), wbits=-15) == data
    stored = run(racer, "brotliCompressSync", data)
    assert brotli.decompress(stored) == data
    assert len(stored) <= len(data) + 3 * (len(data) // 65536 + 1) + 1


@pytest.mark.parametrize("level", [0, 1, 6, 9])
@pytest.mark.parametrize("name", INPUTS)
def test_python_output_decompresses_here(racer: MiniRacer, name: str, level: int) -> None:
    data = INPUTS[name]
    assert run(racer, "inflateSync", zlib.compress(data, level)) == data
    assert run(racer, "gunzipSync", gzip.compress(data, level)) == data
    raw = zlib.compressobj(level, wbits=-15)
    assert run(racer, "inflateRawSync", raw.compress(data) + raw.flush()) == data
    assert run(racer, "unzipSync", gzip.compress(data, level)) == data
    assert run(racer, "unzipSync", zlib.compress(data, level)) == data


def test_gzip_members_with_header_fields_and_concatenation(racer: MiniRacer) -> None:
    with_name = gzip.compress(b"first ", mtime=0)
    # FNAME: a member written by gzip.GzipFile with a file name
    named = bytearray(with_name[:10])
    named[3] |= 8
    member = bytes(named) + b"name.txt\0" + with_name[10:]
    assert run(racer, "gunzipSync", member + gzip.compress(b"second")) == b"first second"


def test_strings_are_utf8_and_crc32_matches(racer: MiniRacer) -> None:
    text = "héllo wörld €"
    result = racer.eval(f"__zlib.gunzipSync(__zlib.gzipSync({json.dumps(text)})).toString()")
    assert result == text
    assert racer.eval("Buffer.isBuffer(__zlib.deflateSync('x'))") is True
    assert racer.eval("__zlib.crc32('hello')") == zlib.crc32(b"hello")


@pytest.mark.parametrize(
    ("function", "data", "message"),
    [
        ("inflateSync", zlib.compress(b"data")[:-1], "unexpected end of file"),
        ("inflateSync", zlib.compress(b"data")[:-4] + b"\0\0\0\0", "incorrect data check"),
        ("inflateSync", b"\x00\x01", "incorrect header check"),
        ("gunzipSync", gzip.compress(b"data", mtime=0)[:-8] + b"\0" * 8, "incorrect data check"),
        ("gunzipSync", zlib.compress(b"data"), "incorrect header check"),
        ("inflateRawSync", b"\x07", "invalid block type"),
    ],
)
def test_corrupt_input_throws(racer: MiniRacer, function: str, data: bytes, message: str) -> None:
    with pytest.raises(JSEvalException, match=message):
        run(racer, function, data)


def test_compression_ratio(racer: MiniRacer) -> None:
    data = INPUTS["text 1 MB"]
    ours = len(run(racer, "deflateSync", data))
    assert ours < len(data) * 0.5, (ours, len(zlib.compress(data, 6)))


# ---------------------------------------------------------------------- createBuffer

PLUGIN = """
const { createBuffer } = require('@posthog/plugin-contrib');
const flushed = [];
let buffer;
exports.setupPlugin = () => {
    buffer = createBuffer({
        limit: 10,
        timeoutSeconds: 0.1,
        onFlush: async (batch) => { await null; flushed.push(batch); },
    });
};
exports.processEvent = async (event) => {
    const { command, value, points } = event.properties;
    if (command === 'add') {
        buffer.add(value, points ?? undefined);
    } else if (command === 'flush') {
        await buffer.flush();
    }
    await null;
    event.properties.flushed = flushed.splice(0);
    event.properties.points = buffer._points;
    return event;
};
"""


async def test_create_buffer_flushes_on_limit_timeout_and_demand() -> None:
    async with loaded_plugin(PLUGIN) as plugin:
        await plugin.setup()

        async def send(command: str, value: Any = None, points: int | None = None) -> Any:
            outcome = await process_one(plugin, {"command": command, "value": value, "points": points})
            return [outcome["properties"]["flushed"], outcome["properties"]["points"]]

        assert await send("add", "a", 4) == [[], 4]
        assert await send("add", "b", 4) == [[], 8]
        # c would take the buffer over the limit: a and b go first
        assert await send("add", "c", 4) == [[["a", "b"]], 4]
        # reaching the limit flushes at once
        assert await send("add", "d", 6) == [[["c", "d"]], 0]
        # an object over the limit goes alone
        assert await send("add", "big", 50) == [[["big"]], 0]
        # the default weight is one point; the timer flushes 0.1 s after the first add
        assert await send("add", "e") == [[], 1]
        assert await send("add", "f") == [[], 2]
        await asyncio.sleep(0.3)
        assert await send("read") == [[["e", "f"]], 0]
        # flush() on demand, and on an empty buffer
        assert await send("add", "g", 2) == [[], 2]
        assert await send("flush") == [[["g"]], 0]
        assert await send("flush") == [[], 0]
