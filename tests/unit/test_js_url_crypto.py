"""URL, URLSearchParams and require('crypto') in the JavaScript runtime (url.js and crypto.js).

The isolate is set up with the runtime's own setup script (prelude.js with guards.js, url.js and
crypto.js); its `require` is taken from the module function that the prelude's `load` runs. Results
are compared with Python's urllib.parse, hashlib and hmac. The last test runs a plugin through
JSPlugin (no database: its meta is a plain namespace).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, quote_plus, urlencode, urljoin, urlsplit

import pytest
from py_mini_racer import JSEvalException, MiniRacer

from tests.js_support import loaded_plugin, process_one, set_up_racer


@pytest.fixture(scope="module")
def racer() -> Iterator[MiniRacer]:
    with set_up_racer("globalThis.__require = require;") as racer:
        yield racer


def js(racer: MiniRacer, expression: str) -> Any:
    """The value of an expression, through JSON (so that strings, lists and objects come back)."""
    text = racer.eval(f"JSON.stringify(({expression}))")
    assert isinstance(text, str), text
    return json.loads(text)


def lit(value: Any) -> str:
    return json.dumps(value)


# ---------------------------------------------------------------------- URL

ABSOLUTE = [
    "https://example.com",
    "https://example.com/",
    "http://example.com:8080/path/to/page.html?query=1&b=two#section",
    "https://user:secret@app.posthog.com/project/1/insights?x=1",
    "https://EXAMPLE.com/Case/Kept?Q=V",
    "http://localhost:8000/api/event/?ip=1&_=1700000000",
    "https://www.example.co.uk/a/b/c/",
    "https://example.com/search?q=hello+world&lang=en#top",
    "ftp://files.example.com/pub/file.txt",
    "wss://socket.example.com:9443/live",
    "https://example.com/path;params?x=y",
    "http://127.0.0.1:5000/",
    "https://example.com/?",
    "https://example.com/#",
    "https://example.com/a%20b?c=%2F",
]


@pytest.mark.parametrize("url", ABSOLUTE)
def test_url_parts_match_urllib(racer: MiniRacer, url: str) -> None:
    parts = js(
        racer,
        f"(() => {{ const u = new URL({lit(url)}); return [u.protocol, u.username, u.password, u.hostname,"
        " u.port, u.pathname, u.search, u.hash, u.origin, u.href, u.toString(), u.toJSON()] })()",
    )
    split = urlsplit(url)
    default = {"http": 80, "https": 443, "ftp": 21, "wss": 443}[split.scheme]
    port = "" if split.port in (None, default) else str(split.port)
    host = split.hostname or ""
    assert parts[:9] == [
        split.scheme + ":",
        split.username or "",
        split.password or "",
        host,
        port,
        split.path or "/",
        "?" + split.query if split.query else "",
        "#" + split.fragment if split.fragment else "",
        f"{split.scheme}://{host}" + (f":{port}" if port else ""),
    ]
    assert parts[9] == parts[10] == parts[11]


RELATIVE = [
    ("/a?b=1", "https://x.com/y"),
    ("a?b=1", "https://x.com/y/z"),
    ("../c", "http://a/b/c/d;p?q"),
    ("../../g", "http://a/b/c/d;p?q"),
    ("./g/", "http://a/b/c/d;p?q"),
    ("g;x?y#s", "http://a/b/c/d;p?q"),
    ("?y", "http://a/b/c/d;p?q"),
    ("#s", "http://a/b/c/d;p?q"),
    ("", "http://a/b/c/d;p?q#f"),
    ("//g/h", "http://a/b/c/d;p?q"),
    ("https://other.org/x", "http://a/b"),
    (".", "http://a/b/c/d"),
    ("..", "http://a/b/c/d"),
]


@pytest.mark.parametrize(("url", "base"), RELATIVE)
def test_relative_resolution_matches_urljoin(racer: MiniRacer, url: str, base: str) -> None:
    # urljoin keeps the base's fragment for an empty reference; WHATWG (and node) drop it.
    expected = urljoin(base, url) if url else base.partition("#")[0]
    assert js(racer, f"new URL({lit(url)}, {lit(base)}).href") == expected


@pytest.mark.parametrize(
    ("url", "href"),
    [
        # WHATWG specifics: percent-encoding sets, lowercase hosts, dot segments, default ports
        ("https://x.com/a b/ü?q=a b'\"<>#f g`", "https://x.com/a%20b/%C3%BC?q=a%20b%27%22%3C%3E#f%20g%60"),
        ("http://x.com/{a}|^", "http://x.com/%7Ba%7D|^"),
        ("non-special://x.com/q?a'b", "non-special://x.com/q?a'b"),
        ("HTTPS://User:P@ss@EXAMPLE.COM:443/", "https://User:P%40ss@example.com/"),
        ("http://x.com:80/a/./b/../c/%2e%2E/d", "http://x.com/a/d"),
        ("http:\\\\x.com\\a\\b", "http://x.com/a/b"),
        ("  https://x.com/\t\na  ", "https://x.com/a"),
        ("http://0x7f.1/", "http://127.0.0.1/"),
        ("http://2130706433/", "http://127.0.0.1/"),
        ("http://[0:0:0:0:0:0:0:1]:8080/", "http://[::1]:8080/"),
        ("http://[2001:DB8::0:1]/", "http://[2001:db8::1]/"),
        ("http://[::ffff:192.168.0.1]/", "http://[::ffff:c0a8:1]/"),
        ("mailto:someone@example.com?subject=hi", "mailto:someone@example.com?subject=hi"),
        ("data:text/plain,hello world", "data:text/plain,hello world"),
        ("file:///etc/hosts", "file:///etc/hosts"),
        ("https://x.com/%zz%41", "https://x.com/%zz%41"),
    ],
)
def test_whatwg_serialization(racer: MiniRacer, url: str, href: str) -> None:
    assert js(racer, f"new URL({lit(url)}).href") == href


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("nope", None),
        ("", None),
        ("/relative", None),
        ("https://", None),
        ("http://exa mple.com/", None),
        ("http://x.com:99999/", None),
        ("http://x.com:8o/", None),
        ("http://[::1/", None),
        ("http://256.256.256.256/", None),
        ("x", "mailto:a@b.c"),
        ("/a", "not a url"),
    ],
)
def test_invalid_urls_throw_type_error(racer: MiniRacer, url: str, base: str | None) -> None:
    call = f"new URL({lit(url)})" if base is None else f"new URL({lit(url)}, {lit(base)})"
    result = js(
        racer,
        f"(() => {{ try {{ {call}; return 'parsed' }} catch (e) {{ return [e instanceof TypeError, e.message] }} }})()",
    )
    assert result == [True, "Invalid URL"]
    assert js(racer, f"URL.canParse({lit(url)}{'' if base is None else ', ' + lit(base)})") is False


def test_url_setters(racer: MiniRacer) -> None:
    result = js(
        racer,
        """(() => {
            const u = new URL("https://x.com/a?b=1#c");
            const seen = [];
            u.search = "?q=a b"; seen.push(u.href);
            u.hash = "top"; seen.push(u.href);
            u.pathname = "/p/q r"; seen.push(u.href);
            u.hostname = "Other.ORG"; seen.push(u.href);
            u.port = "8443"; seen.push(u.href);
            u.port = "443"; seen.push(u.href);
            u.protocol = "http"; seen.push(u.href);
            u.username = "me"; u.password = "p w"; seen.push(u.href);
            u.href = "https://y.com/?z=9"; seen.push(u.searchParams.get("z"));
            return seen;
        })()""",
    )
    assert result == [
        "https://x.com/a?q=a%20b#c",
        "https://x.com/a?q=a%20b#top",
        "https://x.com/p/q%20r?q=a%20b#top",
        "https://other.org/p/q%20r?q=a%20b#top",
        "https://other.org:8443/p/q%20r?q=a%20b#top",
        "https://other.org/p/q%20r?q=a%20b#top",
        "http://other.org/p/q%20r?q=a%20b#top",
        "http://me:p%20w@other.org/p/q%20r?q=a%20b#top",
        "9",
    ]


def test_globals_and_require(racer: MiniRacer) -> None:
    assert js(racer, "__require('url').URL === URL && __require('url').URLSearchParams === URLSearchParams")
    assert js(racer, "new URL('https://x.com/y', new URL('https://z.com/w')).href") == "https://x.com/y"
    assert js(racer, "Object.prototype.toString.call(new URL('https://x.com'))") == "[object URL]"
    assert js(racer, "JSON.stringify({u: new URL('https://x.com/a')})") == '{"u":"https://x.com/a"}'
    assert js(racer, "`${new URL('https://x.com/a')}`") == "https://x.com/a"


async def test_url_is_made_on_first_use_and_then_a_plain_global() -> None:
    """url.js runs when a plugin first uses URL (not in every isolate); a plugin may still replace it."""
    source = """
    URLSearchParams = 'mine'
    exports.processEvent = function (event) {
        const made = typeof Object.getOwnPropertyDescriptor(globalThis, 'URL').get
        event.properties.host = new URL('https://a.example/x').host
        const now = Object.getOwnPropertyDescriptor(globalThis, 'URL')
        event.properties.seen = [made, typeof now.value, now.enumerable, require('url').URL === URL]
        event.properties.params = URLSearchParams
        return event
    }
    """
    async with loaded_plugin(source) as plugin:
        properties = (await process_one(plugin, {}))["properties"]
    assert properties["host"] == "a.example"
    assert properties["seen"] == ["function", "function", False, True]
    assert properties["params"] == "mine"


# ---------------------------------------------------------------------- URLSearchParams

QUERIES = [
    "a=1&b=2",
    "?a=1&a=2&b=",
    "q=hello+world&x=%26%3D%3F",
    "empty&=value&k=v=w",
    "utf=%C3%A9%E2%82%AC&plus=%2B",
    "&&a=1&&",
    "bad=%zz&ok=%41",
]


@pytest.mark.parametrize("query", QUERIES)
def test_search_params_parse_like_parse_qsl(racer: MiniRacer, query: str) -> None:
    pairs = js(racer, f"[...new URLSearchParams({lit(query)})]")
    assert [tuple(pair) for pair in pairs] == parse_qsl(query.removeprefix("?"), keep_blank_values=True)


def form(pairs: list[tuple[str, str]]) -> str:
    """application/x-www-form-urlencoded as WHATWG serializes it ("*" kept, "~" encoded)."""
    return urlencode(pairs, quote_via=quote_plus, safe="*").replace("~", "%7E")


@pytest.mark.parametrize(
    "pairs",
    [
        [("a", "1"), ("b", "two words")],
        [("sym", "&=?#/+%~*-._!'()"), ("é", "€ 😀")],
        [("", ""), ("k", "")],
    ],
)
def test_search_params_serialize_like_urlencode(racer: MiniRacer, pairs: list[tuple[str, str]]) -> None:
    from_array = js(racer, f"new URLSearchParams({lit(pairs)}).toString()")
    assert from_array == form(pairs)
    assert js(racer, f"new URLSearchParams({lit(dict(pairs))}).toString()") == form(list(dict(pairs).items()))


def test_search_params_methods(racer: MiniRacer) -> None:
    result = js(
        racer,
        """(() => {
            const p = new URLSearchParams("b=2&a=1&b=3&c=x");
            const seen = [p.get("b"), p.getAll("b"), p.get("zz"), p.has("a"), p.has("b", "3"), p.has("b", "9"), p.size];
            p.append("a", "0"); p.set("b", "9"); p.delete("c"); seen.push(p.toString());
            p.sort(); seen.push(p.toString());
            seen.push([...p.keys()], [...p.values()], [...p.entries()]);
            const each = []; p.forEach((value, name, self) => each.push(name + value + (self === p))); seen.push(each);
            p.delete("a", "0"); seen.push(p.toString());
            return seen;
        })()""",
    )
    assert result == [
        "2",
        ["2", "3"],
        None,
        True,
        True,
        False,
        4,
        "b=9&a=1&a=0",
        "a=1&a=0&b=9",
        ["a", "a", "b"],
        ["1", "0", "9"],
        [["a", "1"], ["a", "0"], ["b", "9"]],
        ["a1true", "a0true", "b9true"],
        "a=1&b=9",
    ]


def test_search_params_linked_to_url(racer: MiniRacer) -> None:
    result = js(
        racer,
        """(() => {
            const u = new URL("https://x.com/p?a=1#h");
            const params = u.searchParams;
            params.append("q", "a b&c");
            const seen = [u.href];
            params.delete("a"); params.delete("q"); seen.push(u.href);
            u.search = "?z=1"; seen.push(params.get("z"), u.searchParams === params);
            return seen;
        })()""",
    )
    assert result == ["https://x.com/p?a=1&q=a+b%26c#h", "https://x.com/p#h", "1", True]


# ---------------------------------------------------------------------- crypto

MEGABYTE = bytes(range(256)) * 4096
INPUTS: list[str | bytes] = [
    "",
    "abc",
    "The quick brown fox jumps over the lazy dog",
    "é€😀 多字节",
    "x" * 55,
    "y" * 56,
    "z" * 64,
    "w" * 1000,
]


def js_bytes(data: bytes) -> str:
    return f"Buffer.from({lit(data.hex())}, 'hex')"


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha256"])
@pytest.mark.parametrize("data", INPUTS, ids=lambda data: f"{len(data)}")
def test_hashes_match_hashlib(racer: MiniRacer, algorithm: str, data: str) -> None:
    expected = hashlib.new(algorithm, data.encode())
    create = f"__require('crypto').createHash({lit(algorithm)})"
    assert js(racer, f"{create}.update({lit(data)}).digest('hex')") == expected.hexdigest()
    assert js(racer, f"{create}.update({lit(data)}, 'utf8').digest('base64')") == (
        base64.b64encode(expected.digest()).decode()
    )
    assert js(racer, f"[...{create}.update({js_bytes(data.encode())}).digest()]") == list(expected.digest())
    # Chained updates, split anywhere, give the same digest.
    half = len(data) // 2
    chained = f"{create}.update({lit(data[:half])}).update({lit(data[half:])}).digest('hex')"
    assert js(racer, chained) == expected.hexdigest()


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha256"])
def test_hash_of_a_megabyte(racer: MiniRacer, algorithm: str) -> None:
    racer.eval("globalThis.__mb = Uint8Array.from({length: 1 << 20}, (_, i) => i & 255)")
    start = time.perf_counter()
    digest = js(racer, f"__require('crypto').createHash({lit(algorithm)}).update(__mb).digest('hex')")
    elapsed = time.perf_counter() - start
    assert digest == hashlib.new(algorithm, MEGABYTE).hexdigest()
    assert elapsed < 2.0, f"{algorithm} of 1 MB took {elapsed:.3f} s"


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha256"])
@pytest.mark.parametrize(
    "key",
    [b"", b"key", b"k" * 64, b"long key " * 20, "ключ".encode()],
    ids=["empty", "short", "block", "long", "utf8"],
)
def test_hmac_matches_python(racer: MiniRacer, algorithm: str, key: bytes) -> None:
    for data in ["", "The quick brown fox jumps over the lazy dog", "é€😀" * 50]:
        expected = hmac.new(key, data.encode(), algorithm)
        create = f"__require('crypto').createHmac({lit(algorithm)}, {js_bytes(key)})"
        assert js(racer, f"{create}.update({lit(data)}).digest('hex')") == expected.hexdigest()
    text_key = f"__require('crypto').createHmac({lit(algorithm)}, {lit(key.decode())})"
    expected = hmac.new(key, b"payload", algorithm)
    assert js(racer, f"{text_key}.update('pay').update('load').digest('hex')") == expected.hexdigest()


def test_hash_errors(racer: MiniRacer) -> None:
    with pytest.raises(JSEvalException, match="Digest method not supported"):
        racer.eval("__require('crypto').createHash('sha512')")
    with pytest.raises(JSEvalException, match="Digest already called"):
        racer.eval("const __h = __require('crypto').createHash('md5'); __h.digest(); __h.digest()")
    assert (
        js(racer, "__require('crypto').createHash('SHA-256').digest('hex')") == hashlib.sha256().hexdigest()
    )


def test_random_values(racer: MiniRacer) -> None:
    uuids = js(racer, "Array.from({length: 200}, () => __require('crypto').randomUUID())")
    assert len(set(uuids)) == 200
    for value in uuids:
        assert len(value) == 36 and value[14] == "4" and value[19] in "89ab", value
    sizes = js(racer, "[0, 1, 31, 32, 33, 1000].map((n) => __require('crypto').randomBytes(n).length)")
    assert sizes == [0, 1, 31, 32, 33, 1000]
    assert js(racer, "Buffer.isBuffer(__require('crypto').randomBytes(4))") is True
    # Roughly uniform bytes: every value appears in 64 KB.
    counts = js(
        racer,
        "(() => { const c = new Array(256).fill(0); for (const b of __require('crypto').randomBytes(65536)) c[b]++; return c })()",
    )
    assert min(counts) > 150 and max(counts) < 400
    assert 0 <= js(racer, "__require('crypto').randomInt(10)") < 10
    assert js(racer, "__require('crypto').timingSafeEqual(Buffer.from('ab'), Buffer.from('ab'))") is True


def test_random_seed_comes_from_the_host() -> None:
    def first_bytes(seed: str) -> str:
        with set_up_racer("globalThis.__require = require;", seed=seed) as racer:
            return str(racer.eval("__require('crypto').randomBytes(16).toString('hex')"))

    assert first_bytes("00" * 32) == first_bytes("00" * 32)
    assert first_bytes("00" * 32) != first_bytes("01" * 32)
    with pytest.raises(JSEvalException, match="random seed"):
        first_bytes("short")


# ---------------------------------------------------------------------- through the runtime

PLUGIN = """
const { createHash, randomUUID } = require('crypto');
exports.processEvent = (event) => {
    const url = new URL(event.properties.$current_url);
    event.properties.host = url.hostname;
    event.properties.utm = url.searchParams.get('utm_source');
    event.properties.hashed = createHash('sha256').update(event.distinct_id).digest('hex');
    event.properties.id_length = randomUUID().length;
    return event;
};
"""


async def test_plugin_uses_url_and_crypto() -> None:
    async with loaded_plugin(PLUGIN) as plugin:
        outcome = await process_one(
            plugin,
            {"$current_url": "https://App.Example.com/page?utm_source=news#x"},
            event="$pageview",
            distinct_id="person 1",
        )
    assert outcome["properties"]["host"] == "app.example.com"
    assert outcome["properties"]["utm"] == "news"
    assert outcome["properties"]["hashed"] == hashlib.sha256(b"person 1").hexdigest()
    assert outcome["properties"]["id_length"] == 36
