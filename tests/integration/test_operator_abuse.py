"""The operator API under attack: bodies sent without the token or past the cap are refused before they
are read (a real server on loopback, its memory watched); generated requests with the token get a 4xx,
never a 5xx, and without it a 401; a dependency that is down is a 503.

The generated suites try 300 requests each; OPERATOR_FUZZ_EXAMPLES=3000 (say) tries more."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import select
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import hypothesis
import psycopg
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, example, given
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool

from plugin_server.config import load_settings
from plugin_server.db.teams import CreatedTeam
from plugin_server.ingestion.enqueue import open_enqueuer
from plugin_server.plugins.admin import enable_plugin, install_archive
from plugin_server.plugins.archive import pack_zip
from plugin_server.reads.postgres import postgres_reads
from plugin_server.web.app import create_app
from plugin_server.web.context import WebContext
from tests.e2e.server import RunningServer, running_server
from tests.integration.test_admin_api import AUTH, PLUGINS, TOKEN, zipped
from tests.kafka_broker import free_port

Db = psycopg.Connection[Any]
HUGE = 300_000_000  # what a client announces and would send, if the server read it
CAP = 1_000_000  # ADMIN_MAX_BODY_BYTES of the server under test
# What may reach the server before it answers: socket buffers on both sides of a loopback connection.
IN_FLIGHT = 32_000_000
MEMORY_GROWTH = 16_000_000  # what the web process's peak memory may grow by over all the abuse
MULTIPART_HEAD = (
    b'--b\r\nContent-Disposition: form-data; name="archive"; filename="p.zip"\r\n'
    b"Content-Type: application/zip\r\n\r\n"
)


def request_head(path: str, content_type: str, *, token: bool, length: int | None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: operator", f"Content-Type: {content_type}"]
    if token:
        lines.append(f"Authorization: Bearer {TOKEN}")
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def send_until_answered(port: int, head: bytes, chunk: bytes, first: bytes = b"") -> tuple[int, bytes]:
    """Send `head` and `first`, then `chunk` after `chunk` until HUGE bytes went or the server answered
    or closed; return how many bytes of body went and what the server answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(head + first)
        connection.setblocking(False)
        sent, answer = len(first), b""
        deadline = time.monotonic() + 30
        while sent < HUGE and time.monotonic() < deadline:
            readable, writable, _ = select.select([connection], [connection], [], 1)
            if readable:
                try:
                    data = connection.recv(65536)
                except ConnectionResetError:
                    data = b""
                answer += data
                if not data or (b"\r\n\r\n" in answer and answer.endswith(b"}")):
                    break
            if writable:
                try:
                    sent += connection.send(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    break
        connection.setblocking(True)
        try:  # the rest of the answer, up to the server's close
            while data := connection.recv(65536):
                answer += data
        except (ConnectionResetError, TimeoutError):
            pass
    return sent, answer


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def peak_memory(pid: int) -> int:
    """The process's peak resident memory (VmHWM), in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert match, status
    return int(match[1]) * 1024


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1])


def test_bodies_are_refused_before_they_are_read(
    tmp_path: Path, database_url: str, redis_url: str, team: CreatedTeam, clean_db: Db
) -> None:
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "WORKER_CONCURRENCY": "1",
        "ADMIN_TOKEN": TOKEN,
        "ADMIN_MAX_BODY_BYTES": str(CAP),
    }
    with running_server(tmp_path, env) as server:
        pid = server.web_pid()
        port = int(server.env["WEB_PORT"])
        # Warm up: a good upload and a refusal, so that what they import is in the peak already.
        good = httpx.post(
            f"{server.web_url}/api/admin/plugins/archive",
            files={"archive": ("hello-python.zip", zipped("hello-python"), "application/zip")},
            headers=AUTH,
            timeout=30,
        )
        assert good.status_code == 201, good.text
        assert httpx.post(f"{server.web_url}/api/admin/plugins", json={}).status_code == 401
        before = peak_memory(pid)

        json_head = request_head("/api/admin/plugins", "application/json", token=False, length=HUGE)
        sent, answer = send_until_answered(port, json_head, b"[" * 65536)
        assert (status_of(answer), sent < IN_FLIGHT) == (401, True), (answer[:300], sent)
        assert b"connection: close" in answer.lower()

        upload = "/api/admin/plugins/archive"
        multipart = "multipart/form-data; boundary=b"
        for token in (False, True):  # chunked: no length to judge by, so counted as it comes
            head = request_head(upload, multipart, token=token, length=None)
            sent, answer = send_until_answered(port, head, chunked(b"x" * 65536), chunked(MULTIPART_HEAD))
            assert (status_of(answer), sent < IN_FLIGHT) == (413 if token else 401, True), (answer, sent)

        head = request_head(upload, multipart, token=True, length=HUGE)
        sent, answer = send_until_answered(port, head, b"x" * 65536, MULTIPART_HEAD)
        assert (status_of(answer), sent < IN_FLIGHT) == (413, True), (answer[:300], sent)
        assert b"ADMIN_MAX_BODY_BYTES (1000000 bytes)" in answer

        assert peak_memory(pid) - before < MEMORY_GROWTH
        assert_still_serving(server)


def assert_still_serving(server: RunningServer) -> None:
    answer = httpx.get(f"{server.web_url}/api/admin/plugins", headers=AUTH, timeout=10)
    assert answer.status_code == 200
    assert [plugin["name"] for plugin in answer.json()] == ["hello-python"]


# --- generated requests with the token: never a 5xx

# Values that have reached Postgres or the code badly: past int32/int64, NUL, lone surrogates, long text.
HOSTILE_INTS = st.sampled_from([0, -1, 2**31, -(2**31) - 1, 2**63, -(2**63) - 1, 2**64, 10**100])
HOSTILE_TEXTS = st.sampled_from(
    ["", "\x00", "a\x00b", "\ud800", "x\udfff", "x" * 5000, "%00", "💥", " ", "\n"]
)
INTS = st.one_of(st.integers(-5, 5), st.integers(), HOSTILE_INTS)
TEXTS = st.one_of(st.text(max_size=40), HOSTILE_TEXTS)
SCALARS = st.one_of(st.none(), st.booleans(), INTS, st.floats(), TEXTS)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXTS, children, max_size=3),
    max_leaves=8,
)
ANY_VALUE = st.one_of(SCALARS, JSON_VALUES)
# Nesting past what the JSON codecs and Postgres take.
NESTED = st.integers(1, 300).map(
    lambda depth: functools.reduce(lambda inner, _: {"a": [inner]}, range(depth), {})
)
NESTED_TEXT = st.integers(1, 5000).map(
    lambda depth: b'{"config": ' + b'{"a": [' * depth + b"]}" * depth + b"}"
)
CONFIGS = st.one_of(st.dictionaries(TEXTS, JSON_VALUES, max_size=3), NESTED)
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "multipart/form-data; boundary=b",
        "application/x-www-form-urlencoded",
        "text/plain",
        "",
    ]
)
IDS = st.one_of(st.integers(1, 3), st.integers(1, 3), INTS, TEXTS)  # configs 1 and 2, team 2 exist


def json_body(
    required: dict[str, st.SearchStrategy[Any]], optional: dict[str, st.SearchStrategy[Any]]
) -> st.SearchStrategy[dict[str, Any]]:
    """A body for a route: a well-typed one (its values still hostile: NUL, huge numbers...), one
    with a field of any type, a field too many, a non-object, or bytes that are not JSON."""
    typed = st.fixed_dictionaries(required, optional=optional)
    names = st.sampled_from([*required, *optional, "extra"])
    retyped = st.builds(lambda body, name, value: {**body, name: value}, typed, names, ANY_VALUE)
    encoded = st.one_of(typed, typed, retyped, JSON_VALUES).map(
        lambda value: {"content": json.dumps(value).encode()}
    )
    raw = st.one_of(st.binary(max_size=60), NESTED_TEXT)
    return st.one_of(
        encoded.map(lambda body: {**body, "headers": {**AUTH, "Content-Type": "application/json"}}),
        st.builds(
            lambda data, kind: {"content": data, "headers": {**AUTH, "Content-Type": kind}},
            raw,
            CONTENT_TYPES,
        ),
    )


def segment(value: Any) -> str:
    """A path segment that the server decodes back to `value` (surrogates as their UTF-8 bytes)."""
    return quote(utf8(str(value)), safe="")


def query(params: dict[str, Any]) -> str:
    return urlencode({name: utf8(str(value)) for name, value in params.items()})


def plugin_archive(plugin_json: Any) -> bytes:
    return pack_zip({"plugin.json": json.dumps(plugin_json).encode(), "index.js": b"export function f() {}"})


ARCHIVES = st.one_of(
    st.binary(max_size=40),
    st.fixed_dictionaries(
        {"main": st.just("index.js")},
        optional={"name": ANY_VALUE, "description": ANY_VALUE, "config": ANY_VALUE},
    ).map(plugin_archive),
    JSON_VALUES.map(plugin_archive),
)


def utf8(text: str) -> bytes:
    """The text's UTF-8 bytes, lone surrogates included (as a client that does not check would send them)."""
    return text.encode("utf-8", "surrogatepass")


def upload_body(field: str) -> st.SearchStrategy[dict[str, Any]]:
    file_names = TEXTS.map(lambda name: utf8(name).decode("utf-8", "replace"))  # a header: no surrogates
    files = st.tuples(file_names, ARCHIVES, st.sampled_from(["application/zip", "text/plain", "x" * 300]))
    return st.builds(
        lambda file, organization: {
            "files": {field: file},
            "data": {} if organization is None else {"organization_id": utf8(organization)},
            "headers": AUTH,
        },
        files,
        st.one_of(st.none(), ORGANIZATIONS),
    )


# Paths to install from: inside BASE_DIR (the test's folder, holding a `plugin` folder), or broken.
INSTALL_PATHS = st.one_of(
    st.sampled_from(["plugin", "missing", "plugin/plugin.json", "x" * 5000, "a\x00b", "\ud800"]),
    st.text(alphabet="abcxyz./\x00", max_size=12).filter(
        lambda path: not path.startswith("/") and ".." not in path
    ),
)
# Urls to install from: nothing reachable but a closed port on loopback, and urls that are not urls.
INSTALL_URLS = st.one_of(
    st.sampled_from(["http://127.0.0.1:9/p.zip", "http://[::1", "https://", "ftp://x/p.zip", "http://\x00/"]),
    TEXTS,
    TEXTS.map(lambda path: f"http://127.0.0.1:9/{path}"),
)
SOURCES = st.one_of(st.just("export function processEvent(event) { return event }"), TEXTS)
ORGANIZATIONS = st.one_of(st.uuids().map(str), TEXTS)
PLUGIN_REFERENCES = st.one_of(st.sampled_from(["hello-python", "1", "2", "0"]), TEXTS)


@st.composite
def operator_requests(draw: st.DrawFn) -> tuple[str, str, dict[str, Any]]:
    """(method, url, httpx keyword arguments) of a request to an operator route, with the token."""
    config = segment(draw(IDS))
    route = draw(st.sampled_from(range(11)))
    get: dict[str, Any] = {"headers": AUTH}
    if route == 0:
        return "GET", "/api/admin/plugins", get
    if route == 1:
        origin = draw(st.sampled_from(["url", "source", "path"]))  # one of them, as the route wants
        required = {"url": {"url": INSTALL_URLS}, "source": {"source": SOURCES, "name": TEXTS}}
        optional = {"organization_id": ORGANIZATIONS, "local": st.booleans()}
        body = json_body(required.get(origin, {"path": INSTALL_PATHS}), optional)
        return "POST", "/api/admin/plugins", draw(body)
    if route == 2:
        return "POST", "/api/admin/plugins/archive", draw(upload_body("archive"))
    if route == 3:
        body = json_body({"plugin": PLUGIN_REFERENCES, "team_id": IDS}, {"config": CONFIGS, "order": INTS})
        return "POST", "/api/admin/plugin-configs", draw(body)
    if route == 4:
        body = json_body({}, {"enabled": st.booleans(), "config": CONFIGS, "order": INTS})
        return "PATCH", f"/api/admin/plugin-configs/{config}", draw(body)
    if route == 5:
        key = segment(draw(TEXTS.filter(bool)))
        return "PUT", f"/api/admin/plugin-configs/{config}/attachments/{key}", draw(upload_body("file"))
    if route == 6:
        params = draw(st.fixed_dictionaries({}, optional={"limit": st.one_of(INTS, TEXTS), "after": TEXTS}))
        return "GET", f"/api/admin/plugin-configs/{config}/logs?{query(params)}", get
    if route == 7:
        params = draw(st.fixed_dictionaries({}, optional={"limit": st.one_of(INTS, TEXTS)}))
        return "GET", f"/api/admin/dead-letters?{query(params)}", get
    if route == 8:
        return "POST", "/api/admin/dead-letters/replay", draw(json_body({}, {"limit": INTS}))
    if route == 9:
        return "POST", "/api/admin/reload", get
    method = draw(st.sampled_from(["DELETE", "PUT", "GET", "POST"]))  # any path under the prefix
    return method, f"/api/admin/{segment(draw(TEXTS))}/{config}", get


class OperatorClient:
    """Sends requests to the whole web app (as the server builds it) on a loop of its own, so that
    hypothesis can drive it from a plain function."""

    def __init__(self, context: WebContext) -> None:
        self.context = context
        self.loop = asyncio.new_event_loop()
        transport = httpx.ASGITransport(app=create_app(context), raise_app_exceptions=False)
        self.client = httpx.AsyncClient(transport=transport, base_url="http://operator")

    def request(self, method: str, url: str, **arguments: Any) -> httpx.Response:
        return self.loop.run_until_complete(self.client.request(method, url, **arguments))

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.run_until_complete(self.context.redis.aclose())
        self.loop.close()


def operator_context(database_url: str, redis_url: str, **settings: Any) -> WebContext:
    """The web context of the operator API on these services (the pool is not opened: the operator
    routes use only its conninfo)."""
    app_settings = load_settings({}, ADMIN_TOKEN=TOKEN, **settings)
    redis_client = aioredis.Redis.from_url(redis_url)
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(database_url, open=False)
    return WebContext(
        app_settings,
        pool,
        redis_client,
        open_enqueuer(app_settings, redis_client),
        reads=postgres_reads(database_url),
    )


@pytest.fixture
def operator_client(
    tmp_path: Path, database_url: str, redis_url: str, team: CreatedTeam, clean_db: Db
) -> Iterator[OperatorClient]:
    """The operator API on the test database and Redis, with two plugins enabled for team 2 (configs
    1 and 2) and a plugin folder in BASE_DIR."""
    shutil.copytree(PLUGINS / "hello-python", tmp_path / "plugin")
    for name in ("hello-python", "hello-js"):
        enable_plugin(clean_db, install_archive(clean_db, zipped(name), name), team.team_id)
    client = OperatorClient(operator_context(database_url, redis_url, BASE_DIR=str(tmp_path)))
    yield client
    client.close()


def sent_json(text: bytes) -> dict[str, Any]:
    return {"content": text, "headers": {**AUTH, "Content-Type": "application/json"}}


def attachment(content_type: str) -> dict[str, Any]:
    return {"files": {"file": ("words.txt", b"w", content_type)}, "headers": AUTH}


# One request of each class of 500 the generated ones found, kept so that each is tried on every run.
FOUND_BEFORE = [
    ("POST", "/api/admin/plugins", sent_json(b"Infinity")),  # the 422 echoed a NaN
    ("POST", "/api/admin/plugins", sent_json(b'{"path": "\\ud800"}')),  # the 404 echoed a surrogate
    ("PATCH", "/api/admin/plugin-configs/1", sent_json(b'{"config": {"\\ud800": 0}}')),  # jsonb: surrogate
    ("PATCH", "/api/admin/plugin-configs/1", sent_json(b'{"config": {"a": 18446744073709551616}}')),  # int64+
    ("PATCH", "/api/admin/plugin-configs/1", sent_json(b'{"config": {"a": "\\u0000"}}')),  # jsonb: NUL
    ("POST", "/api/admin/plugin-configs", sent_json(b'{"plugin": "a\\u0000b", "team_id": 2}')),  # text: NUL
    ("PATCH", "/api/admin/plugin-configs/1", sent_json(b'{"order": 2147483648}')),  # past `integer`
    ("PUT", "/api/admin/plugin-configs/1/attachments/words", attachment("x" * 300)),  # past varchar(200)
    ("POST", "/api/admin/plugins", sent_json(b'{"url": "http://127.0.0.1:9/\\n"}')),  # httpx.InvalidURL
    ("POST", "/api/admin/plugins", sent_json(b'{"path": "' + b"x" * 5000 + b'"}')),  # ENAMETOOLONG
]


def with_examples(requests: list[tuple[str, str, dict[str, Any]]]) -> Any:
    def decorate(test: Any) -> Any:
        for request in requests:
            test = example(request=request)(test)
        return test

    return decorate


FUZZ = hypothesis.settings(
    max_examples=int(os.environ.get("OPERATOR_FUZZ_EXAMPLES", "300")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@with_examples(FOUND_BEFORE)
@given(request=operator_requests())
def test_generated_requests_with_the_token_get_no_5xx(
    operator_client: OperatorClient, request: tuple[str, str, dict[str, Any]]
) -> None:
    method, url, arguments = request
    answer = operator_client.request(method, url, **arguments)
    assert answer.status_code < 500, (answer.status_code, answer.text[:500])
    if answer.status_code >= 400:
        assert "detail" in answer.json()


SCHEMES = st.sampled_from([b"Bearer", b"bearer", b"BEARER", b"Basic", b"Token", b""])
NEAR_MISSES = st.sampled_from(
    [b"", TOKEN[:-1].encode(), (TOKEN + "x").encode(), TOKEN.upper().encode(), f"{TOKEN},{TOKEN}".encode()]
)
HEADER_BYTES = st.binary(max_size=60).filter(lambda value: not set(value) & set(b"\r\n\x00"))
WRONG_AUTHORIZATIONS = st.one_of(
    HEADER_BYTES,
    st.builds(
        lambda scheme, given: scheme + b" " + given,
        SCHEMES,
        st.one_of(NEAR_MISSES, HEADER_BYTES).filter(lambda given: given.strip() != TOKEN.encode()),
    ),
    st.builds(
        lambda scheme: scheme + b" " + TOKEN.encode(),
        SCHEMES.filter(lambda scheme: scheme.lower() != b"bearer"),
    ),
)


@FUZZ
@given(request=operator_requests(), authorization=st.one_of(st.none(), WRONG_AUTHORIZATIONS))
def test_generated_requests_without_the_token_get_401(
    operator_client: OperatorClient, request: tuple[str, str, dict[str, Any]], authorization: bytes | None
) -> None:
    method, url, arguments = request
    headers = {name: value for name, value in arguments.pop("headers").items() if name != "Authorization"}
    if authorization is not None:
        headers["Authorization"] = authorization
    answer = operator_client.request(method, url, headers=headers, **arguments)
    assert (answer.status_code, answer.headers.get("www-authenticate")) == (401, "Bearer"), answer.text


@pytest.mark.parametrize(
    ("down", "method", "path"),
    [
        ("database", "GET", "/api/admin/plugins"),
        ("database", "PATCH", "/api/admin/plugin-configs/1"),
        ("redis", "GET", "/api/admin/dead-letters"),
        ("redis", "POST", "/api/admin/dead-letters/replay"),
        ("redis", "POST", "/api/admin/reload"),
    ],
)
def test_a_dependency_that_is_down_is_a_503(
    database_url: str, redis_url: str, down: str, method: str, path: str
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens there
    if down == "database":
        database_url = f"postgresql://postgres@{nowhere}/nothing"
    else:
        redis_url = f"redis://{nowhere}"
    client = OperatorClient(operator_context(database_url, redis_url))
    try:
        answer = client.request(
            method, path, headers=AUTH, json={"enabled": True} if method == "PATCH" else None
        )
    finally:
        client.close()
    assert answer.status_code == 503, answer.text
    assert "unavailable" in answer.json()["detail"]
