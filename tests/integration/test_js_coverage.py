"""Every export shape, global, module and meta call of the JavaScript runtime, from a `.ts` plugin
(type annotations, `import`) and from a `.js` plugin (CommonJS `require`, plain functions), both
transpiled like installed plugins are. Results are checked against Python (hashlib, hmac, zlib, gzip,
urllib, base64), rows in Postgres, Redis keys and the requests a loopback service received.

Where each part is exercised (R = test_js_runtime.py, U = tests/unit/test_js_*.py on the bare
runtime, E = tests/e2e/test_js_*.py, C = this file; js/ts = a .js/.ts plugin file, raw = plain
JavaScript not transpiled):

| part | elsewhere | here |
|---|---|---|
| module.exports, exports.x, top-level functions | R raw | C js, ts |
| export function, export default | R ts | C js, ts |
| processEventBatch only, unknown exports ignored | R ts | C js, ts |
| console.* into the plugin logs | R ts | C js, ts |
| fetch: status, ok, headers, json(), text(), request seen | R ts | C js, ts |
| fetch: redirects (follow, manual, error), its `timeout` option | E js: only TASK_TIMEOUT | C js, ts |
| URL, URLSearchParams, require('url') | U raw (against urllib) | C js, ts |
| RetryError global and from @posthog/plugin-scaffold | R ts | C js, ts |
| setTimeout/clearTimeout, TextEncoder/TextDecoder, btoa/atob, Buffer | R ts | C js, ts |
| node-fetch | R ts | C js, ts |
| crypto createHash md5/sha1/sha256 hex/base64, createHmac, randomBytes, randomUUID | U raw | C js, ts |
| zlib gzip/gunzip/deflate/inflate sync | U raw | C js, ts |
| @posthog/plugin-contrib createBuffer | U raw | C js, ts (flushes seen by the loopback) |
| refused modules (aws-sdk, snowflake-sdk, pg, generic-pool, @google-cloud/*, others) | R ts (default import) | C js (require), ts (namespace import) |
| meta config, attachments, global | R ts | C js, ts |
| meta cache set/get/incr/expire/lpush/lrange/llen/lpop/lrem | R ts | C js, ts (Redis keys) |
| meta storage get/set/del, utils.cursor | R ts | C js, ts (posthog_pluginstorage rows) |
| meta jobs runNow/runIn/runAt | R ts | C js, ts (plugin_server_jobs rows, job run) |
| meta geoip.locate, posthog.capture | R ts | C js, ts (the queued Celery message) |
| posthog.api | R ts (post) | C js (get), ts (post) |
| meta metrics increment/max | R ts | C js, ts, with min |
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import socket
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import psycopg
import pytest

from plugin_server.ingestion.celery import decode_message, event_from_task
from plugin_server.plugin_api import RetryError
from plugin_server.plugins.js.runtime import JSError, JSPlugin
from plugin_server.plugins.models import PluginAttachment

# `load` and `setup` are fixtures: pytest finds them by their names in this module.
from tests.integration.test_js_runtime import (  # noqa: F401
    QUEUE,
    Loader,
    Setup,
    _service_answer,
    event,
    load,
    log_entries,
    ok,
    one,
    setup,
)
from tests.loopback import LoopbackService

Db = psycopg.Connection[Any]
LANGUAGES = ["js", "ts"]
TEXT = "Grüße, wörld! 😀 " * 20
LINK = "https://User:pw@App.Example.com:8443/a/b%20c/../d?utm_source=news&q=a+b&q=%E2%82%AC#top"


@dataclass(frozen=True)
class Web:
    """The loopback service, one that redirects every request to its /echo, and a port that accepts
    connections but never answers."""

    service: LoopbackService
    redirector: LoopbackService
    silent: str


@pytest.fixture(scope="module")
def web() -> Iterator[Web]:
    with (
        LoopbackService(_service_answer, {"X-Stub": "yes"}) as service,
        LoopbackService(
            lambda request: (302, b"{}"), {"Location": f"{service.url}/echo?from=redirect"}
        ) as redirector,
        socket.create_server(("127.0.0.1", 0)) as silent,
    ):
        yield Web(service, redirector, f"http://127.0.0.1:{silent.getsockname()[1]}")


@pytest.fixture(autouse=True)
def forget_requests(web: Web) -> None:
    web.service.requests.clear()
    web.redirector.requests.clear()


@dataclass(frozen=True)
class Variants:
    """The same plugin written as TypeScript and as CommonJS JavaScript."""

    ts: str
    js: str

    def source(self, language: str) -> str:
        return self.ts if language == "ts" else self.js


async def load_as(
    loader: Loader, language: str, variants: Variants, web: Web | None = None, **options: Any
) -> JSPlugin:
    config = {"url": web.service.url, "redirector": web.redirector.url, "silent": web.silent} if web else {}
    return await loader(variants.source(language), file_name=f"index.{language}", config=config, **options)


# ---------------------------------------------------------------------- export shapes

PROCESS = "event.properties.shape = 'seen'; return event"
SHAPES = {
    "module.exports": Variants(
        f"module.exports = {{ processEvent: (event: PluginEvent): PluginEvent => {{ {PROCESS} }} }}",
        f"module.exports = {{ processEvent(event) {{ {PROCESS} }} }}",
    ),
    "exports.x": Variants(
        f"exports.processEvent = function (event: PluginEvent): PluginEvent {{ {PROCESS} }}",
        f"exports.processEvent = function (event) {{ {PROCESS} }}",
    ),
    "export function": Variants(
        f"export function processEvent(event: PluginEvent): PluginEvent {{ {PROCESS} }}",
        f"export function processEvent(event) {{ {PROCESS} }}",
    ),
    "export default": Variants(
        f"const plugin: Plugin = {{ processEvent(event: PluginEvent) {{ {PROCESS} }} }}\nexport default plugin",
        f"export default {{ processEvent(event) {{ {PROCESS} }} }}",
    ),
    "top-level": Variants(
        f"function processEvent(event: PluginEvent): PluginEvent {{ {PROCESS} }}",
        f"function processEvent(event) {{ {PROCESS} }}",
    ),
    "processEventBatch only": Variants(
        f"export const processEventBatch = (events: PluginEvent[]) => events.map((event) => {{ {PROCESS} }})",
        f"exports.processEventBatch = (events) => events.map((event) => {{ {PROCESS} }})",
    ),
    "unknown exports": Variants(
        f"export const webHooks: string = 'legacy'\nexport function processEvent(event: PluginEvent) {{ {PROCESS} }}",
        f"module.exports = {{ webHooks: 'legacy', helper() {{}}, processEvent(event) {{ {PROCESS} }} }}",
    ),
}
# Types only: TypeScript drops the import (plugins import the scaffold's types like this).
TYPES = "import type { Plugin, PluginEvent } from '@posthog/plugin-scaffold'\n"


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
async def test_export_shapes(load: Loader, language: str, shape: Variants) -> None:  # noqa: F811
    plugin = await load_as(load, language, Variants(TYPES + shape.ts, shape.js))
    assert plugin.methods == {"processEvent"}
    outcomes = await plugin.process_events([event(1), event(2)], frozenset())
    assert [ok(outcome)["properties"] for outcome in outcomes] == [
        {"number": 1, "shape": "seen"},
        {"number": 2, "shape": "seen"},
    ]


# ---------------------------------------------------------------------- values computed in the plugin

INPUT = {
    "text": TEXT,
    "link": LINK,
    "gzipped": base64.b64encode(gzip.compress(TEXT.encode())).decode(),
    "deflated": base64.b64encode(zlib.compress(TEXT.encode(), 9)).decode(),
}


def compute(ts_imports: str, js_imports: str, body: str) -> Variants:
    """A processEvent that sets `event.properties.result` from `text`, `link`, `gzipped`, `deflated`."""
    ts = f"""
        {ts_imports}
        interface Input {{ text: string; link: string; gzipped: string; deflated: string }}
        export async function processEvent(event: PluginEvent): Promise<PluginEvent> {{
            const {{ text, link, gzipped, deflated }} = event.properties as Input
            const result: Record<string, unknown> = {{}}
            {body}
            event.properties = {{ result }}
            return event
        }}
        """
    js = f"""
        {js_imports}
        async function processEvent(event) {{
            const {{ text, link, gzipped, deflated }} = event.properties
            const result = {{}}
            {body}
            event.properties = {{ result }}
            return event
        }}
        module.exports = {{ processEvent }}
        """
    return Variants(TYPES + ts, js)


def digests(text: str) -> dict[str, str]:
    data = text.encode()
    answer = {}
    for name in ("md5", "sha1", "sha256"):
        answer[f"{name} hex"] = hashlib.new(name, data).hexdigest()
        answer[f"{name} base64"] = base64.b64encode(hashlib.new(name, data).digest()).decode()
    answer["hmac"] = hmac.new(b"k\xc3\xa9y", data, "sha256").hexdigest()
    return answer


def random_values(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "versions": [uuid.UUID(value).version for value in result["uuids"]],
        "distinct": len(set(result["uuids"])),
        "bytes": [len(bytes.fromhex(value)) for value in result["bytes"]],
        "differ": result["bytes"][0] != result["bytes"][1],
    }


def decompressed(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "gzip": gzip.decompress(base64.b64decode(result["gzip"])).decode(),
        "deflate": zlib.decompress(base64.b64decode(result["deflate"])).decode(),
        "gunzip": result["gunzip"],
        "inflate": result["inflate"],
        "smaller": result["smaller"],
    }


def url_parts(link: str) -> dict[str, Any]:
    split = urlsplit(link)
    query = parse_qsl(split.query)
    return {
        "parts": [split.scheme + ":", split.username, split.password, split.hostname, str(split.port)],
        "path": "/a/d",
        "q": [value for key, value in query if key == "q"],
        "utm": dict(query)["utm_source"],
        "same": True,
        "form": urlencode([("a b", "c&d"), ("€", "=")]),
    }


@dataclass(frozen=True)
class Computed:
    plugin: Variants
    expected: Any
    normalize: Callable[[Any], Any] = lambda result: result


HASHES = """
    for (const name of ['md5', 'sha1', 'sha256']) {
        result[`${name} hex`] = createHash(name).update(text).digest('hex')
        result[`${name} base64`] = createHash(name).update(Buffer.from(text)).digest('base64')
    }
    result.hmac = createHmac('sha256', 'kéy').update(text, 'utf8').digest('hex')
"""
RANDOM = """
    result.uuids = [randomUUID(), randomUUID()]
    result.bytes = [randomBytes(16).toString('hex'), randomBytes(16).toString('hex')]
"""
COMPRESS = """
    result.gzip = gzipSync(text).toString('base64')
    result.deflate = zlib.deflateSync(Buffer.from(text)).toString('base64')
    result.gunzip = gunzipSync(Buffer.from(gzipped, 'base64')).toString()
    result.inflate = zlib.inflateSync(Buffer.from(deflated, 'base64')).toString('utf8')
    result.smaller = zlib.deflateSync(text).length < Buffer.byteLength(text)
"""
URLS = """
    const url = new URL(link)
    result.parts = [url.protocol, url.username, url.password, url.hostname, url.port]
    result.path = url.pathname
    result.q = url.searchParams.getAll('q')
    result.utm = new Parsed(link).searchParams.get('utm_source')
    result.same = Parsed === URL && Params === URLSearchParams
    result.form = new Params([['a b', 'c&d'], ['€', '=']]).toString()
"""
TEXT_HELPERS = """
    const bytes = new TextEncoder().encode(text)
    result.decoded = new TextDecoder().decode(bytes)
    result.bytes = bytes.length
    result.buffer = Buffer.from(text).toString('base64')
    result.btoa = btoa('plugin:secret')
    result.atob = atob(btoa('plugin:secret'))
    const fired = []
    const cancelled = setTimeout(() => fired.push('cancelled'), 1)
    clearTimeout(cancelled)
    await new Promise((resolve) => setTimeout(() => resolve(fired.push('fired')), 5))
    result.fired = fired
"""
COMPUTED = {
    "crypto hashes": Computed(
        compute(
            "import { createHash, createHmac } from 'crypto'",
            "const { createHash, createHmac } = require('crypto')",
            HASHES,
        ),
        digests(TEXT),
    ),
    "crypto random": Computed(
        compute(
            "import * as crypto from 'crypto'\nconst { randomUUID, randomBytes } = crypto",
            "const { randomUUID, randomBytes } = require('crypto')",
            RANDOM,
        ),
        {"versions": [4, 4], "distinct": 2, "bytes": [16, 16], "differ": True},
        random_values,
    ),
    "zlib": Computed(
        compute(
            "import * as zlib from 'zlib'\nimport { gzipSync, gunzipSync } from 'zlib'",
            "const zlib = require('zlib')\nconst { gzipSync, gunzipSync } = require('zlib')",
            COMPRESS,
        ),
        {"gzip": TEXT, "deflate": TEXT, "gunzip": TEXT, "inflate": TEXT, "smaller": True},
        decompressed,
    ),
    "URL": Computed(
        compute(
            "import { URL as Parsed, URLSearchParams as Params } from 'url'",
            "const { URL: Parsed, URLSearchParams: Params } = require('url')",
            URLS,
        ),
        url_parts(LINK),
    ),
    "text helpers and timers": Computed(
        compute("", "", TEXT_HELPERS),
        {
            "decoded": TEXT,
            "bytes": len(TEXT.encode()),
            "buffer": base64.b64encode(TEXT.encode()).decode(),
            "btoa": base64.b64encode(b"plugin:secret").decode(),
            "atob": "plugin:secret",
            "fired": ["fired"],
        },
    ),
}


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("case", COMPUTED.values(), ids=COMPUTED.keys())
async def test_values_match_python(load: Loader, language: str, case: Computed) -> None:  # noqa: F811
    plugin = await load_as(load, language, case.plugin)
    result = ok(await one(plugin, event(properties=INPUT)))["properties"]["result"]
    assert case.normalize(result) == case.expected


# ---------------------------------------------------------------------- effects: Postgres, Redis, HTTP, logs

ATTACHMENT = PluginAttachment("names", "text/plain", "names.txt", "Åsa\nBo".encode())
Check = Callable[[JSPlugin, Setup, Db, Web], Awaitable[None]]


async def check_fetch(plugin: JSPlugin, env: Setup, db: Db, web: Web) -> None:
    result = ok(await one(plugin))["properties"]["result"]
    timeout = result.pop("timeout")
    assert result == {
        "json": [200, True, "application/json", "yes", {"hello": "wörld", "n": 1}],
        "failed": [404, False, "no"],
        "posted": 200,
        "followed": [200, True, f"{web.service.url}/echo?from=redirect", "GET"],
        "manual": [302, f"{web.service.url}/echo?from=redirect"],
        "refused": "FetchError",
    }
    assert timeout[0] == "FetchError" and 100 <= timeout[1] < 500
    assert timeout[2].startswith("network timeout at: http://127.0.0.1:")
    posted, followed = (request for request in web.service.requests if request.path == "/echo")
    assert (posted.method, posted.headers["x-token"], posted.body) == ("POST", "secret", b'{"a":1}')
    assert followed.query == {"from": "redirect"}
    assert [request.path for request in web.redirector.requests] == ["/follow", "/manual", "/error"]


FETCH_BODY = """
    const got = await fetch(`${config.url}/json`)
    result.json = [got.status, got.ok, got.headers.get('content-type'), got.headers.get('x-stub'), await got.json()]
    const failed = await fetch(`${config.url}/status/404`)
    result.failed = [failed.status, failed.ok, await failed.text()]
    const posted = await fetch(`${config.url}/echo`, {
        method: 'POST', headers: { 'X-Token': 'secret' }, body: JSON.stringify({ a: 1 }),
    })
    result.posted = posted.status
    const followed = await fetch(`${config.redirector}/follow`)
    result.followed = [followed.status, followed.redirected, followed.url, (await followed.json()).method]
    const manual = await fetch(`${config.redirector}/manual`, { redirect: 'manual' })
    result.manual = [manual.status, manual.headers.get('location')]
    try { await fetch(`${config.redirector}/error`, { redirect: 'error' }) } catch (error) { result.refused = error.name }
    const started = Date.now()
    try { await fetch(config.silent, { timeout: 100 }) } catch (error) { result.timeout = [error.name, Date.now() - started, error.message] }
"""


async def check_cache(plugin: JSPlugin, env: Setup, db: Db, web: Web) -> None:
    assert ok(await one(plugin))["properties"]["result"] == {
        "greeting": {"text": "hej"},
        "raw": "text",
        "missing": "fallback",
        "counts": [1, 2],
        "expired": True,
        "range": ["c", "b", "a"],
        "length": 3,
        "removed": 1,
        "popped": ["c"],
    }
    prefix = f"@plugin/{env.plugin_id}/{env.team.team_id}/"
    assert await env.redis.get(prefix + "count") == b"2"
    assert await env.redis.get(prefix + "raw") == b"text"
    assert 0 < await env.redis.ttl(prefix + "greeting") <= 50
    assert await env.redis.lrange(prefix + "letters", 0, -1) == [b"a"]


CACHE_BODY = """
    await cache.set('greeting', { text: 'hej' })
    await cache.set('raw', 'text', undefined, { jsonSerialize: false })
    result.expired = await cache.expire('greeting', 50)
    result.counts = [await cache.incr('count'), await cache.incr('count')]
    await cache.lpush('letters', ['a', 'b', 'c'])
    result.range = await cache.lrange('letters', 0, -1)
    result.length = await cache.llen('letters')
    result.removed = await cache.lrem('letters', 1, 'b')
    result.popped = await cache.lpop('letters', 1)
    result.greeting = await cache.get('greeting')
    result.raw = await cache.get('raw', null, { jsonSerialize: false })
    result.missing = await cache.get('nothing here', 'fallback')
"""


async def check_storage(plugin: JSPlugin, env: Setup, db: Db, web: Web) -> None:
    result = ok(await one(plugin))["properties"]["result"]
    assert result == {"kept": {"n": 1}, "gone": "default", "cursor": 16}
    rows = db.execute(
        "SELECT key, value FROM posthog_pluginstorage WHERE plugin_config_id = %s ORDER BY key",
        (env.config_id,),
    ).fetchall()
    assert rows == [("cursor", "16"), ("kept", '{"n":1}')]


STORAGE_BODY = """
    await storage.set('kept', { n: 1 })
    await storage.set('gone', 'soon')
    await storage.del('gone')
    await utils.cursor.init('cursor', 10)
    await utils.cursor.increment('cursor', 5)
    result.kept = await storage.get('kept')
    result.gone = await storage.get('gone', 'default')
    result.cursor = await utils.cursor.increment('cursor')
"""


async def check_jobs(plugin: JSPlugin, env: Setup, db: Db, web: Web) -> None:
    started = time.time()
    await plugin.run_task("runEveryHour")
    rows = db.execute(
        "SELECT type, payload, extract(epoch FROM run_at) FROM plugin_server_jobs"
        " WHERE plugin_config_id = %s ORDER BY id",
        (env.config_id,),
    ).fetchall()
    assert [(row[0], row[1]) for row in rows] == [
        ("remember", {"n": 1}),
        ("remember", {"n": 2}),
        ("remember", 3),
    ]
    assert abs(float(rows[0][2]) - started) < 60
    assert abs(float(rows[1][2]) - (started + 600)) < 60
    assert float(rows[2][2]) == 1893456000
    await plugin.run_job("remember", {"from": "the queue"})
    assert await plugin.meta.storage.get("job ran with") == {"from": "the queue"}


JOBS_BODY = """
    await jobs.remember({ n: 1 }).runNow()
    await jobs.remember({ n: 2 }).runIn(10, 'minutes')
    await jobs.remember(3).runAt(new Date('2030-01-01T00:00:00Z'))
"""


async def check_metrics(plugin: JSPlugin, env: Setup, db: Db, web: Web) -> None:
    await plugin.process_events([event(3), event(7), event(5)], frozenset())
    assert plugin.meta.metrics.snapshot_and_reset() == {"seen": 3, "biggest": 7, "smallest": 3}


async def check_geoip_and_capture(plugin: JSPlugin, env: Setup, db: Db, web: Web) -> None:
    result = ok(await one(plugin))["properties"]["result"]
    assert result == {"city": "Linköping", "country": "SE", "nowhere": None}
    (message,) = await env.redis.lrange(QUEUE, 0, -1)
    captured = event_from_task(decode_message(message))
    assert (captured["event"], captured["distinct_id"]) == ("from a plugin", "plugin user")
    assert captured["properties"]["city"] == "Linköping"


async def check_posthog_api(plugin: JSPlugin, env: Setup, db: Db, web: Web) -> None:
    result = ok(await one(plugin))["properties"]["result"]
    assert result["status"] == 200
    (request,) = web.service.requests
    assert request.path == "/echo/api/projects/@current/events"
    assert request.headers["authorization"] == "Bearer phx_personal"
    assert result["method"] == request.method


async def check_config_attachments_global(plugin: JSPlugin, env: Setup, db: Db, web: Web) -> None:
    outcomes = await plugin.process_events([event(1), event(2)], frozenset())
    assert [ok(outcome)["properties"]["result"] for outcome in outcomes] == [
        {"greeting": f"hej {web.service.url}", "names": ["Åsa", "Bo"], "file": "names.txt", "calls": 1},
        {"greeting": f"hej {web.service.url}", "names": ["Åsa", "Bo"], "file": "names.txt", "calls": 2},
    ]


async def check_console(plugin: JSPlugin, env: Setup, db: Db, web: Web) -> None:
    await one(plugin)
    await env.writer.flush()
    assert log_entries(db, env.config_id) == [
        ("CONSOLE", "INFO", "set up"),
        ("CONSOLE", "LOG", 'processing 0 {"a":[1]}'),
        ("CONSOLE", "WARN", "careful"),
        ("CONSOLE", "ERROR", "TypeError: bad"),
        ("CONSOLE", "DEBUG", "null true"),
    ]


async def check_retry_error(plugin: JSPlugin, env: Setup, db: Db, web: Web) -> None:
    with pytest.raises(RetryError, match="service answered 503 for 2 events"):
        await plugin.export_events([event(1), event(2)])
    with pytest.raises(RetryError, match="the global one"):
        await plugin.export_events([])
    (request,) = web.service.requests
    assert request.method == "POST" and len(request.body) > 100


async def check_create_buffer(plugin: JSPlugin, env: Setup, db: Db, web: Web) -> None:
    for number in range(3):
        ok(await one(plugin, event(number)))
    await plugin.teardown()  # flushes the third
    batches = [request.body.decode() for request in web.service.requests if request.path == "/echo"]
    assert sorted(batches) == [f'["{event(0)["uuid"]}","{event(1)["uuid"]}"]', f'["{event(2)["uuid"]}"]']


def meta_plugin(names: str, body: str) -> Variants:
    """A processEvent using `names` of meta that sets `event.properties.result`."""
    ts = f"""
        import {{ PluginEvent, PluginMeta }} from '@posthog/plugin-scaffold'
        export async function processEvent(event: PluginEvent, {{ {names} }}: PluginMeta): Promise<PluginEvent> {{
            const result: Record<string, unknown> = {{}}
            {body}
            event.properties = {{ ...event.properties, result }}
            return event
        }}
        """
    js = f"""
        exports.processEvent = async function (event, meta) {{
            const {{ {names} }} = meta
            const result = {{}}
            {body}
            event.properties = {{ ...event.properties, result }}
            return event
        }}
        """
    return Variants(ts, js)


EFFECTS: dict[str, tuple[Variants, Check]] = {
    "fetch": (
        Variants(
            "import fetch from 'node-fetch'\n" + meta_plugin("config", FETCH_BODY).ts,
            "const fetch = require('node-fetch')\n" + meta_plugin("config", FETCH_BODY).js,
        ),
        check_fetch,
    ),
    "cache": (meta_plugin("cache", CACHE_BODY), check_cache),
    "storage and cursor": (meta_plugin("storage, utils", STORAGE_BODY), check_storage),
    "geoip and capture": (
        meta_plugin(
            "geoip",
            """
            const location = await geoip.locate('89.160.20.129')
            Object.assign(result, { city: location.city.names.en, country: location.country.isoCode })
            result.nowhere = await geoip.locate('127.0.0.1')
            await posthog.capture('from a plugin', { distinct_id: 'plugin user', city: result.city })
            """,
        ),
        check_geoip_and_capture,
    ),
    "jobs": (
        Variants(
            f"""
            import {{ PluginMeta }} from '@posthog/plugin-scaffold'
            export const jobs = {{
                async remember(payload: unknown, {{ storage }}: PluginMeta) {{ await storage.set('job ran with', payload) }},
            }}
            export async function runEveryHour({{ jobs }}: PluginMeta): Promise<void> {{ {JOBS_BODY} }}
            """,
            f"""
            module.exports = {{
                jobs: {{ async remember(payload, {{ storage }}) {{ await storage.set('job ran with', payload) }} }},
                async runEveryHour({{ jobs }}) {{ {JOBS_BODY} }},
            }}
            """,
        ),
        check_jobs,
    ),
    "metrics": (
        Variants(
            """
            import { PluginEvent, PluginMeta } from '@posthog/plugin-scaffold'
            export const metrics: Record<string, string> = { seen: 'sum', biggest: 'max', smallest: 'min' }
            export function processEvent(event: PluginEvent, { metrics }: PluginMeta): PluginEvent {
                const number: number = event.properties.number
                metrics.seen.increment(1)
                metrics.biggest.max(number)
                metrics.smallest.min(number)
                return event
            }
            """,
            """
            exports.metrics = { seen: 'sum', biggest: 'max', smallest: 'min' }
            exports.processEvent = function (event, { metrics }) {
                metrics.seen.increment(1)
                metrics.biggest.max(event.properties.number)
                metrics.smallest.min(event.properties.number)
                return event
            }
            """,
        ),
        check_metrics,
    ),
    "posthog.api": (
        Variants(
            meta_plugin(
                "config",
                """
                const keys = { host: config.url, projectApiKey: 'phc_project', personalApiKey: 'phx_personal' }
                const response = await posthog.api.post('/echo/api/projects/@current/events', { ...keys, data: {} })
                Object.assign(result, { status: response.status, method: (await response.json()).method })
                """,
            ).ts,
            meta_plugin(
                "config",
                """
                const keys = { host: config.url, projectApiKey: 'phc_project', personalApiKey: 'phx_personal' }
                const response = await posthog.api.get('/echo/api/projects/@current/events', keys)
                Object.assign(result, { status: response.status, method: (await response.json()).method })
                """,
            ).js,
        ),
        check_posthog_api,
    ),
    "config, attachments, global": (
        Variants(
            """
            import { PluginEvent, PluginMeta } from '@posthog/plugin-scaffold'
            export function setupPlugin({ config, attachments, global }: PluginMeta): void {
                global.greeting = `hej ${config.url}`
                global.names = attachments.names.contents.toString().split('\\n')
                global.file = attachments.names.file_name
                global.calls = 0
            }
            export function processEvent(event: PluginEvent, { global }: PluginMeta): PluginEvent {
                global.calls += 1
                event.properties = { result: { ...global } }
                return event
            }
            """,
            """
            function setupPlugin(meta) {
                meta.global.greeting = 'hej ' + meta.config.url
                meta.global.names = meta.attachments.names.contents.toString('utf8').split('\\n')
                meta.global.file = meta.attachments.names.file_name
                meta.global.calls = 0
            }
            function processEvent(event, meta) {
                meta.global.calls += 1
                event.properties = { result: Object.assign({}, meta.global) }
                return event
            }
            """,
        ),
        check_config_attachments_global,
    ),
    "console": (
        Variants(
            """
            import { PluginEvent } from '@posthog/plugin-scaffold'
            export function setupPlugin(): void { console.info('set up') }
            export function processEvent(event: PluginEvent): PluginEvent {
                console.log('processing', event.properties.number, { a: [1] })
                console.warn('careful')
                console.error(new TypeError('bad'))
                console.debug(null, true)
                return event
            }
            """,
            """
            module.exports = {
                setupPlugin() { console.info('set up') },
                processEvent(event) {
                    console.log('processing', event.properties.number, { a: [1] })
                    console.warn('careful')
                    console.error(new TypeError('bad'))
                    console.debug(null, true)
                    return event
                },
            }
            """,
        ),
        check_console,
    ),
    "RetryError": (
        Variants(
            """
            import { PluginEvent, PluginMeta, RetryError } from '@posthog/plugin-scaffold'
            export async function exportEvents(events: PluginEvent[], { config }: PluginMeta): Promise<void> {
                if (events.length === 0) throw new globalThis.RetryError('the global one')
                const response = await fetch(`${config.url}/status/503`, { method: 'POST', body: JSON.stringify(events) })
                if (!response.ok) throw new RetryError(`service answered ${response.status} for ${events.length} events`)
            }
            """,
            """
            const { RetryError } = require('@posthog/plugin-scaffold')
            exports.exportEvents = async function (events, { config }) {
                if (events.length === 0) throw new globalThis.RetryError('the global one')
                const response = await fetch(config.url + '/status/503', { method: 'POST', body: JSON.stringify(events) })
                if (!response.ok) throw new RetryError(`service answered ${response.status} for ${events.length} events`)
            }
            """,
        ),
        check_retry_error,
    ),
    "createBuffer": (
        Variants(
            """
            import { PluginEvent, PluginMeta } from '@posthog/plugin-scaffold'
            import { createBuffer } from '@posthog/plugin-contrib'
            let buffer: ReturnType<typeof createBuffer>
            export function setupPlugin({ config }: PluginMeta): void {
                buffer = createBuffer({
                    limit: 2,
                    timeoutSeconds: 60,
                    onFlush: async (batch: string[]) => { await fetch(`${config.url}/echo`, { method: 'POST', body: JSON.stringify(batch) }) },
                })
            }
            export function processEvent(event: PluginEvent): PluginEvent { buffer.add(event.uuid); return event }
            export async function teardownPlugin(): Promise<void> { await buffer.flush() }
            """,
            """
            const { createBuffer } = require('@posthog/plugin-contrib')
            let buffer
            exports.setupPlugin = function ({ config }) {
                buffer = createBuffer({
                    limit: 2,
                    timeoutSeconds: 60,
                    onFlush: async (batch) => { await fetch(config.url + '/echo', { method: 'POST', body: JSON.stringify(batch) }) },
                })
            }
            exports.processEvent = function (event) { buffer.add(event.uuid); return event }
            exports.teardownPlugin = async function () { await buffer.flush() }
            """,
        ),
        check_create_buffer,
    ),
}


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize(("plugin", "check"), EFFECTS.values(), ids=EFFECTS.keys())
async def test_effects(
    load: Loader,  # noqa: F811 (the fixtures imported above)
    setup: Setup,  # noqa: F811
    clean_db: Db,
    web: Web,
    language: str,
    plugin: Variants,
    check: Check,
) -> None:
    loaded = await load_as(load, language, plugin, web, attachments={"names": ATTACHMENT})
    await check(loaded, setup, clean_db, web)


# ---------------------------------------------------------------------- modules that are refused

REFUSED = {
    "lodash": "Cannot import 'lodash'! This package is not provided by PostHog in plugins.",
}


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize(("module", "message"), REFUSED.items(), ids=REFUSED.keys())
async def test_refused_modules(load: Loader, language: str, module: str, message: str) -> None:  # noqa: F811
    source = Variants(
        f"import * as sdk from '{module}'\nexport function onEvent(): void {{ sdk.connect() }}",
        f"const sdk = require('{module}')\nexports.onEvent = function () {{ sdk.connect() }}",
    )
    with pytest.raises(JSError, match=f"^{message.replace('(', '[(]')}"):
        await load_as(load, language, source)
