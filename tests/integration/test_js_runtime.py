"""The JavaScript plugin runtime (V8 through mini-racer) with small plugins, on the real Redis and
Postgres: export shapes, per-event outcomes of a batch, the meta API from JavaScript, console, fetch
against a loopback stub, RetryError, require, runaway loops and memory bombs, and what a plugin can see."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from plugin_server.db.teams import CreatedTeam
from plugin_server.ingestion.celery import decode_message, event_from_task
from plugin_server.ingestion.celery_enqueuer import CeleryEnqueuer
from plugin_server.ingestion.teams import TeamManager
from plugin_server.jobs.queue import JobQueue
from plugin_server.plugin_api import RetryError
from plugin_server.plugins.instance import EventOutcome, PluginError, PluginTimeout, capabilities
from plugin_server.plugins.js.modules import PluginModules
from plugin_server.plugins.js.runtime import FetchError, JSError, JSHeapLimitError, JSPlugin, MemoryLimits
from plugin_server.plugins.js.transpile import get_transpiler
from plugin_server.plugins.meta.api import Meta
from plugin_server.plugins.meta.build import MetaFactory
from plugin_server.plugins.meta.errors import IllegalOperationError
from plugin_server.plugins.meta.logs import PluginLogger, PluginLogWriter
from plugin_server.plugins.meta.metrics import PluginMetrics, declared_metrics
from plugin_server.plugins.meta.network import resolve_addresses
from plugin_server.plugins.meta.posthog import PersonalApiKeys
from plugin_server.plugins.models import PluginAttachment, PluginConfigInForce, PluginConfigRow, PluginRow
from plugin_server.plugins.services import PluginServices
from plugin_server.plugins.tracking import CallTracker, HungMarks
from plugin_server.services.geoip import GeoIP
from tests.integration.test_plugin_logs import insert_plugin_config
from tests.js_support import literal_requires
from tests.loopback import LoopbackService, Request, loopback_plugin_http

Db = psycopg.Connection[Any]
QUEUE = "posthog-plugins-js-test"
TIMEOUT = 1.0
HEAP_LIMIT_MB = 32
ARRAY_BUFFER_LIMIT_MB = 64
GEOIP_DATABASE = Path(__file__).parents[1] / "assets" / "GeoLite2-City-Test.mmdb"


# ---------------------------------------------------------------------- a loopback HTTP service


def _service_answer(request: Request) -> tuple[int, bytes]:
    """`/json` answers JSON, `/echo` returns the request, `/status/N` answers status N."""
    if request.path.startswith("/echo"):
        echoed = {"method": request.method, "body": request.body.decode(), "headers": request.headers}
        return 200, json.dumps(echoed).encode()
    if request.path.startswith("/status/"):
        return int(request.path.rsplit("/", 1)[1]), b"no"
    return 200, b'{"hello": "w\\u00f6rld", "n": 1}'


@pytest.fixture(scope="module")
def service() -> Iterator[LoopbackService]:
    with LoopbackService(_service_answer, {"X-Stub": "yes"}) as stub:
        yield stub


# ---------------------------------------------------------------------- plugins with a real meta


@dataclass
class Setup:
    """One plugin config's services, its meta made by the server's MetaFactory."""

    plugin_id: int
    config_id: int
    team: CreatedTeam
    pool: AsyncConnectionPool[Any]
    redis: aioredis.Redis
    writer: PluginLogWriter
    http: httpx.AsyncClient

    async def meta(self, config: dict[str, Any], attachments: dict[str, PluginAttachment]) -> Meta:
        team_id = self.team.team_id
        logger = PluginLogger(
            self.writer,
            team_id=team_id,
            plugin_id=self.plugin_id,
            plugin_config_id=self.config_id,
            instance_id=str(uuid.uuid4()),
        )
        services = PluginServices(
            pool=self.pool,
            redis=self.redis,
            http=self.http,
            posthog_http=self.http,
            connect_guard=resolve_addresses,
            logs=self.writer,
            jobs=JobQueue(self.pool),
            geoip=GeoIP.from_file(GEOIP_DATABASE),
            teams=TeamManager(self.pool),
            tracker=CallTracker(None),
            hung=HungMarks(self.redis),
            enqueuer=CeleryEnqueuer(self.redis, QUEUE),
            api_keys=PersonalApiKeys(self.pool),
        )
        in_force = PluginConfigInForce(
            PluginConfigRow(self.config_id, team_id, self.plugin_id, enabled=True, order=0, config=config),
            PluginRow(self.plugin_id, self.team.organization_id, "js test"),
            attachments,
        )
        return await MetaFactory(services, posthog_host="http://127.0.0.1:9")(in_force, logger)


Loader = Callable[..., Awaitable[JSPlugin]]


@pytest.fixture
async def setup(
    clean_db: Db, team: CreatedTeam, pool: AsyncConnectionPool[Any], aredis: aioredis.Redis
) -> AsyncIterator[Setup]:
    plugin_id, config_id = insert_plugin_config(clean_db, team, name="js test")
    clean_db.execute("DELETE FROM plugin_server_jobs WHERE plugin_config_id = %s", (config_id,))
    await aredis.delete(QUEUE)
    async with loopback_plugin_http() as http:
        yield Setup(
            plugin_id, config_id, team, pool, aredis, PluginLogWriter(pool, flush_interval=3600), http
        )


@pytest.fixture
async def load(setup: Setup) -> AsyncIterator[Loader]:
    """Load and set up a plugin from source: transpiled (guards included), or run as given."""
    loaded: list[JSPlugin] = []

    async def load_plugin(
        source: str,
        *,
        transpile: bool = True,
        config: dict[str, Any] | None = None,
        attachments: dict[str, PluginAttachment] | None = None,
        file_name: str = "index.ts",
        set_up: bool = True,
    ) -> JSPlugin:
        transpiler = get_transpiler()
        code = await transpiler.transpile_async(source, file_name) if transpile else source
        meta = await setup.meta(config or {}, attachments or {})
        plugin = await JSPlugin.load(
            PluginModules.single(code, file_name, requires=literal_requires(code)),
            meta,
            plugin_config_id=setup.config_id,
            timeout=TIMEOUT,
            memory=MemoryLimits(HEAP_LIMIT_MB, ARRAY_BUFFER_LIMIT_MB),
            http=setup.http,
            guards_name=transpiler.guards_name,
        )
        loaded.append(plugin)
        # as instances.InstanceFactory does once the instance exists
        meta.metrics = PluginMetrics(declared_metrics(plugin.metrics, plugin.methods))
        if set_up:
            await plugin.setup()
        return plugin

    yield load_plugin
    for plugin in loaded:
        await plugin.teardown()


def event(number: int = 0, **changes: Any) -> dict[str, Any]:
    return {
        "event": "$pageview",
        "distinct_id": f"person {number}",
        "team_id": 2,
        "uuid": str(uuid.UUID(int=number + 1)),
        "properties": {"number": number},
        **changes,
    }


async def one(plugin: JSPlugin, given: dict[str, Any] | None = None) -> Any:
    (outcome,) = await plugin.process_events([given or event()], frozenset())
    return outcome


def ok(outcome: EventOutcome) -> dict[str, Any]:
    """The event a plugin returned (not a drop, not an error)."""
    assert isinstance(outcome, dict), outcome
    return outcome


def log_entries(db: Db, config_id: int) -> list[tuple[str, str, str]]:
    rows = db.execute(
        "SELECT source, type, message FROM posthog_pluginlogentry WHERE plugin_config_id = %s ORDER BY timestamp",
        (config_id,),
    ).fetchall()
    return [(row[0], row[1], row[2]) for row in rows]


# ---------------------------------------------------------------------- exports


MARK = "event.properties.processed = 'hell yes'; return event"


@pytest.mark.parametrize(
    ("source", "transpile"),
    [
        (f"module.exports = {{ processEvent(event) {{ {MARK} }} }}", False),
        (f"exports.processEvent = function (event) {{ {MARK} }}", False),
        (f"function processEvent(event) {{ {MARK} }}", False),  # no exports: top-level functions
        (f"export function processEvent(event: any) {{ {MARK} }}", True),
        (f"const plugin = {{ processEvent: (event: any) => {{ {MARK} }} }}\nexport default plugin", True),
        (f"export default {{ async processEvent(event) {{ {MARK} }} }}", True),
    ],
    ids=["module.exports", "exports.x", "top-level", "export function", "export default", "async default"],
)
async def test_export_shapes(load: Loader, source: str, transpile: bool) -> None:
    plugin = await load(source, transpile=transpile)
    assert plugin.methods == {"processEvent"}
    assert (await one(plugin))["properties"] == {"number": 0, "processed": "hell yes"}


async def test_top_level_functions_count_only_when_nothing_is_exported(load: Loader) -> None:
    plugin = await load(
        "function processEvent(event) { return null }\nmodule.exports = { onEvent() {} }", transpile=False
    )
    assert plugin.methods == {"onEvent"}


async def test_capabilities_and_unknown_exports(load: Loader) -> None:
    plugin = await load(
        """
        export function setupPlugin() {}
        export function teardownPlugin() {}
        export function onEvent() {}
        export async function exportEvents() {}
        export function runEveryMinute() {}
        export function runEveryDay() {}
        export function runEveryWeek() {}
        export const jobs = { sendIt() {}, notAJob: 3 }
        export const metrics = { seen: 'SUM', top: 'max' }
        export const schedule = { hourly: [] }
        export const webHooks = 'legacy'
        """
    )
    assert capabilities(plugin) == {
        "methods": ["setupPlugin", "teardownPlugin", "onEvent", "exportEvents"],
        "scheduled_tasks": ["runEveryMinute", "runEveryDay"],
        "jobs": ["sendIt"],
    }
    assert plugin.metrics == {"seen": "sum", "top": "max"}


async def test_invalid_metric_types_fail_the_load(load: Loader) -> None:
    with pytest.raises(IllegalOperationError, match="Invalid types received: avg"):
        await load("export const metrics = { speed: 'avg' }")


async def test_process_event_batch_only(load: Loader) -> None:
    plugin = await load(
        """
        export function processEventBatch(events) {
            return events.map((event) => ({ ...event, properties: { ...event.properties, batched: events.length } }))
        }
        """
    )
    assert plugin.methods == {"processEvent"}
    outcomes = await plugin.process_events([event(1), event(2)], frozenset())
    assert [ok(outcome)["properties"]["batched"] for outcome in outcomes] == [1, 1]  # one event at a time


async def test_module_errors_fail_the_load(load: Loader) -> None:
    with pytest.raises(JSError, match="config is broken") as raised:
        await load("throw new TypeError('config is broken')")
    assert raised.value.name == "TypeError"
    assert raised.value.stack is not None and "index.ts" in raised.value.stack


# ---------------------------------------------------------------------- one batch, many outcomes


async def test_each_event_of_a_batch_has_its_own_outcome(load: Loader) -> None:
    plugin = await load(
        """
        export function processEvent(event) {
            switch (event.properties.number) {
                case 0: return null
                case 1: return undefined
                case 2: throw new RangeError('too far')
                case 3: throw 'a string'
                case 4: return 'garbage'
                case 5: return () => 1
                case 6: { const loop: any = {}; loop.self = loop; event.properties.loop = loop; return event }
                case 7: return { ...event, team_id: 3 }
                case 8: return { ...event, uuid: 'not a uuid' }
                default: event.properties.seen = true; return event
            }
        }
        """
    )
    outcomes = await plugin.process_events([event(number) for number in range(10)], frozenset())
    assert outcomes[0] is None and outcomes[1] is None
    assert isinstance(outcomes[2], JSError) and outcomes[2].name == "RangeError"
    assert str(outcomes[2]) == "too far"
    assert isinstance(outcomes[3], JSError) and str(outcomes[3]) == "a string"
    assert isinstance(outcomes[4], PluginError) and "returned str" in str(outcomes[4])
    assert isinstance(outcomes[5], JSError) and "function" in str(outcomes[5])
    assert isinstance(outcomes[6], JSError) and "circular" in str(outcomes[6])
    assert isinstance(outcomes[7], PluginError) and "team_id" in str(outcomes[7])
    assert isinstance(outcomes[8], PluginError) and "uuid" in str(outcomes[8])
    assert ok(outcomes[9])["properties"] == {"number": 9, "seen": True}


async def test_large_and_non_ascii_events(load: Loader) -> None:
    plugin = await load(
        """
        export function processEvent(event) {
            event.properties.length = event.properties.text.length
            event.properties.echo = event.properties.text.slice(0, 12)
            return event
        }
        """
    )
    text = "ünïcode 😀 " + "x" * 300_000
    outcomes = await plugin.process_events(
        [event(number, properties={"text": text}) for number in range(3)], frozenset()
    )
    for outcome in outcomes:
        assert ok(outcome)["properties"]["length"] == len(text.encode("utf-16-le")) // 2
        assert ok(outcome)["properties"]["echo"] == text[:11]
        assert ok(outcome)["properties"]["text"] == text


async def test_hung_events_are_not_given_to_the_plugin(load: Loader) -> None:
    plugin = await load(
        "export async function processEvent(event, meta) { await meta.cache.incr('calls'); return event }"
    )
    first, second = event(1), event(2)
    outcomes = await plugin.process_events([first, second], frozenset({second["uuid"]}))
    assert outcomes[0] == first
    assert isinstance(outcomes[1], PluginTimeout)
    assert await plugin.meta.cache.get("calls") == 1


async def test_a_persons_events_stay_in_order(load: Loader) -> None:
    plugin = await load(
        """
        export async function processEvent(event, { global }) {
            await new Promise((resolve) => setTimeout(resolve, 20 - event.properties.number))
            global.seen = [...(global.seen || []), event.properties.number]
            event.properties.seen = global.seen
            return event
        }
        """
    )
    events = [{**event(number), "distinct_id": "same person"} for number in range(5)]
    outcomes = await plugin.process_events(events, frozenset())
    assert ok(outcomes[-1])["properties"]["seen"] == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------------- meta from JavaScript


async def test_cache_round_trips(load: Loader, setup: Setup) -> None:
    plugin = await load(
        """
        export async function processEvent(event, { cache }) {
            await cache.set('object', { a: [1, 2] })
            await cache.set('raw', 'text', undefined, { jsonSerialize: false })
            await cache.set('short', 1, 60)
            const counted = [await cache.incr('counter'), await cache.incr('counter')]
            await cache.lpush('list', ['a', 'b', 'c'])
            event.properties.cache = {
                object: await cache.get('object'),
                raw: await cache.get('raw', null, { jsonSerialize: false }),
                missing: await cache.get('missing', 'fallback'),
                counted,
                expire: await cache.expire('short', 100),
                range: await cache.lrange('list', 0, -1),
                length: await cache.llen('list'),
                removed: await cache.lrem('list', 1, 'b'),
                popped: await cache.lpop('list', 1),
            }
            try {
                await cache.lpush('list', { not: 'a list' })
            } catch (error) {
                event.properties.cache.error = `${error.name}: ${error.message}`
            }
            return event
        }
        """
    )
    assert (await one(plugin))["properties"]["cache"] == {
        "object": {"a": [1, 2]},
        "raw": "text",
        "missing": "fallback",
        "counted": [1, 2],
        "expire": True,
        "range": ["c", "b", "a"],
        "length": 3,
        "removed": 1,
        "popped": ["c"],
        "error": "TypeError: cache.lpush expects a string value or an array of strings",
    }
    prefix = f"@plugin/{setup.plugin_id}/{setup.team.team_id}/"
    assert await setup.redis.get(prefix + "counter") == b"2"
    assert 0 < await setup.redis.ttl(prefix + "short") <= 100


async def test_storage_and_cursor(load: Loader, setup: Setup, clean_db: Db) -> None:
    plugin = await load(
        """
        export async function setupPlugin({ storage, utils }) {
            await storage.set('kept', { n: 1 })
            await storage.set('gone', 'soon')
            await storage.del('gone')
            await utils.cursor.init('cursor', 10)
            await utils.cursor.increment('cursor', 5)
        }
        export async function processEvent(event, { storage, utils }) {
            event.properties.kept = await storage.get('kept')
            event.properties.gone = await storage.get('gone', 'default')
            event.properties.cursor = await utils.cursor.increment('cursor')
            return event
        }
        """
    )
    properties = (await one(plugin))["properties"]
    assert (properties["kept"], properties["gone"], properties["cursor"]) == ({"n": 1}, "default", 16)
    rows = clean_db.execute(
        "SELECT key, value FROM posthog_pluginstorage WHERE plugin_config_id = %s ORDER BY key",
        (setup.config_id,),
    ).fetchall()
    assert rows == [("cursor", "16"), ("kept", '{"n":1}')]


async def test_jobs_are_queued_and_run(load: Loader, setup: Setup, clean_db: Db) -> None:
    plugin = await load(
        """
        export const jobs = {
            async remember(payload, { storage }) { await storage.set('job ran with', payload) },
        }
        export async function runEveryHour({ jobs }) {
            await jobs.remember({ when: 'now' }).runNow()
            await jobs.remember({ when: 'later' }).runIn(2, 'hours')
            await jobs.remember('at').runAt(new Date('2030-01-01T00:00:00Z'))
            try {
                await jobs.remember(1).runIn(1, 'fortnight')
            } catch (error) {
                await jobs.remember(error.message).runNow()
            }
        }
        """
    )
    started = time.time()
    await plugin.run_task("runEveryHour")
    rows = clean_db.execute(
        "SELECT type, payload, extract(epoch FROM run_at) FROM plugin_server_jobs WHERE plugin_config_id = %s ORDER BY id",
        (setup.config_id,),
    ).fetchall()
    assert [(row[0], row[1]) for row in rows] == [
        ("remember", {"when": "now"}),
        ("remember", {"when": "later"}),
        ("remember", "at"),
        ("remember", "Unknown time unit: fortnights"),
    ]
    assert abs(float(rows[1][2]) - (started + 7200)) < 60
    assert float(rows[2][2]) == 1893456000
    await plugin.run_job("remember", {"from": "the queue", "share": "100%d"})
    assert await plugin.meta.storage.get("job ran with") == {"from": "the queue", "share": "100%d"}
    with pytest.raises(PluginError, match="no job 'forget'"):
        await plugin.run_job("forget", None)


async def test_metrics(load: Loader) -> None:
    plugin = await load(
        """
        export const metrics = { seen: 'sum', biggest: 'max' }
        export function processEvent(event, { metrics }) {
            metrics.seen.increment(2)
            metrics.biggest.max(event.properties.number)
            try { metrics.unknown.increment(1) } catch (error) { event.properties.unknown = error.message }
            try { metrics.seen.increment('1') } catch (error) { event.properties.text = error.message }
            return event
        }
        """
    )
    outcomes = await plugin.process_events([event(3), event(7)], frozenset())
    assert ok(outcomes[0])["properties"]["unknown"] == "Invalid metric name"
    assert ok(outcomes[0])["properties"]["text"] == "Only numbers are allowed for operations on metrics"
    assert plugin.meta.metrics.snapshot_and_reset() == {"seen": 4, "biggest": 7}


async def test_geoip_and_capture(load: Loader, setup: Setup) -> None:
    plugin = await load(
        """
        export async function processEvent(event, { geoip }) {
            const location = await geoip.locate('89.160.20.129')
            event.properties.city = location.city.names.en
            event.properties.nowhere = await geoip.locate('127.0.0.1')
            await posthog.capture('from a plugin', { distinct_id: 'plugin user', answer: 42 })
            return event
        }
        """
    )
    properties = (await one(plugin))["properties"]
    assert (properties["city"], properties["nowhere"]) == ("Linköping", None)
    (message,) = await setup.redis.lrange(QUEUE, 0, -1)
    captured = event_from_task(decode_message(message))
    assert captured["event"] == "from a plugin"
    assert captured["properties"]["answer"] == 42 and captured["distinct_id"] == "plugin user"


async def test_console_goes_to_the_plugin_logs(load: Loader, setup: Setup, clean_db: Db) -> None:
    plugin = await load(
        """
        export async function setupPlugin() { console.info('set up', { with: ['an', 'object'] }, 3, null) }
        export async function processEvent(event) {
            console.log('processing', event.properties.number)
            await new Promise((resolve) => setTimeout(resolve, 1))
            console.warn('after a timer')
            console.error(new RangeError('bad'))
            console.debug(undefined, true, 10n)
            return event
        }
        """
    )
    await one(plugin)
    await setup.writer.flush()
    assert log_entries(clean_db, setup.config_id) == [
        ("CONSOLE", "INFO", 'set up {"with":["an","object"]} 3 null'),
        ("CONSOLE", "LOG", "processing 0"),
        ("CONSOLE", "WARN", "after a timer"),
        ("CONSOLE", "ERROR", "RangeError: bad"),
        ("CONSOLE", "DEBUG", "undefined true 10n"),
    ]


async def test_attachments_are_buffers(load: Loader) -> None:
    attachment = PluginAttachment(
        "filters", "application/json", "filters.json", '{"drop": ["ünïcode"]}'.encode()
    )
    plugin = await load(
        """
        export function processEvent(event, { attachments }) {
            const filters = attachments.filters
            event.properties.attachment = {
                parsed: JSON.parse(filters.contents),
                text: filters.contents.toString(),
                base64: filters.contents.toString('base64'),
                isBuffer: Buffer.isBuffer(filters.contents),
                name: filters.file_name,
                type: filters.content_type,
            }
            return event
        }
        """,
        attachments={"filters": attachment},
    )
    assert (await one(plugin))["properties"]["attachment"] == {
        "parsed": {"drop": ["ünïcode"]},
        "text": '{"drop": ["ünïcode"]}',
        "base64": "eyJkcm9wIjogWyLDvG7Dr2NvZGUiXX0=",
        "isBuffer": True,
        "name": "filters.json",
        "type": "application/json",
    }


async def test_text_helpers(load: Loader) -> None:
    plugin = await load(
        """
        export function processEvent(event) {
            const bytes = new TextEncoder().encode('h€llo 😀')
            const decoder = new TextDecoder()
            event.properties.text = {
                bytes: Array.from(bytes),
                back: decoder.decode(bytes),
                streamed: decoder.decode(bytes.subarray(0, 2), { stream: true }) + decoder.decode(bytes.subarray(2)),
                invalid: new TextDecoder().decode(new Uint8Array([0x61, 0xff, 0xe2, 0x82, 0x62])),
                btoa: btoa('hello'),
                atob: atob('aGVsbG8='),
                hex: Buffer.from('ff00', 'hex').toString('base64'),
                latin1: Buffer.from([0xe9]).toString('latin1'),
                concat: Buffer.concat([Buffer.from('a'), Buffer.from('b')]).toString(),
                json: JSON.stringify(Buffer.from('hi')),
            }
            try { btoa('€') } catch (error) { event.properties.text.btoaError = error.name }
            try { new TextDecoder('utf-8', { fatal: true }).decode(new Uint8Array([0xff])) } catch (error) {
                event.properties.text.fatal = error.name
            }
            return event
        }
        """
    )
    assert (await one(plugin))["properties"]["text"] == {
        "bytes": [104, 226, 130, 172, 108, 108, 111, 32, 240, 159, 152, 128],
        "back": "h€llo 😀",
        "streamed": "h€llo 😀",
        "invalid": "a\ufffd\ufffdb",
        "btoa": "aGVsbG8=",
        "atob": "hello",
        "hex": "/wA=",
        "latin1": "é",
        "concat": "ab",
        "json": '{"type":"Buffer","data":[104,105]}',
        "btoaError": "InvalidCharacterError",
        "fatal": "TypeError",
    }


async def test_timers(load: Loader) -> None:
    plugin = await load(
        """
        export async function processEvent(event) {
            const fired: string[] = []
            const cancelled = setTimeout(() => fired.push('cancelled'), 5)
            clearTimeout(cancelled)
            let ticks = 0
            await new Promise<void>((resolve) => {
                const interval = setInterval(() => { if (++ticks === 3) { clearInterval(interval); resolve() } }, 1)
            })
            await new Promise((resolve) => setTimeout(resolve, 10, 'argument'))
            queueMicrotask(() => fired.push('microtask'))
            await null
            event.properties.timers = { fired, ticks }
            return event
        }
        """
    )
    assert (await one(plugin))["properties"]["timers"] == {"fired": ["microtask"], "ticks": 3}


# ---------------------------------------------------------------------- fetch, RetryError, require


async def test_fetch(load: Loader, service: LoopbackService) -> None:
    plugin = await load(
        """
        import fetchModule from 'node-fetch'
        export async function processEvent(event, { config }) {
            const got = await fetch(`${config.url}/json`)
            const posted = await fetchModule(`${config.url}/echo`, {
                method: 'post', headers: { 'X-Token': 'secret' }, body: JSON.stringify({ a: 1 }),
            })
            const failed = await fetch(`${config.url}/status/503`)
            event.properties.fetched = {
                status: got.status, ok: got.ok, type: got.headers.get('content-type'), stub: got.headers.get('X-STUB'),
                json: await got.json(),
                echo: await posted.json(),
                failed: [failed.status, failed.ok, await failed.text()],
            }
            try {
                await fetch('http://127.0.0.1:9/nothing-listens-here')
            } catch (error) {
                event.properties.fetched.error = error.name
            }
            try {
                await fetch('file:///etc/passwd')
            } catch (error) {
                event.properties.fetched.file = error.message
            }
            return event
        }
        """,
        config={"url": service.url},
    )
    fetched = (await one(plugin))["properties"]["fetched"]
    echo = fetched.pop("echo")
    assert fetched == {
        "status": 200,
        "ok": True,
        "type": "application/json",
        "stub": "yes",
        "json": {"hello": "wörld", "n": 1},
        "failed": [503, False, "no"],
        "error": FetchError.__name__,
        "file": "Only absolute http(s) URLs are supported, not 'file:///etc/passwd'",
    }
    assert echo["method"] == "POST" and echo["body"] == '{"a":1}' and echo["headers"]["x-token"] == "secret"


async def test_retry_error_from_export_events(load: Loader, service: LoopbackService) -> None:
    plugin = await load(
        """
        import { RetryError } from '@posthog/plugin-scaffold'
        export async function exportEvents(events, { config }) {
            const response = await fetch(`${config.url}/status/500`, { method: 'POST', body: JSON.stringify(events) })
            if (!response.ok) {
                throw new RetryError(`service answered ${response.status} for ${events.length} events`)
            }
        }
        """,
        config={"url": service.url},
    )
    with pytest.raises(RetryError, match="service answered 500 for 2 events"):
        await plugin.export_events([event(1), event(2)])
    global_retry = await load("export async function exportEvents() { throw new RetryError('global') }")
    with pytest.raises(RetryError, match="global"):
        await global_retry.export_events([event()])


async def test_posthog_api(load: Loader, service: LoopbackService) -> None:
    plugin = await load(
        """
        export async function processEvent(event, { config }) {
            const keys = { host: config.url, projectApiKey: 'phc_project', personalApiKey: 'phx_personal' }
            const response = await posthog.api.post('/echo/api/projects/@current/events', { ...keys, data: { a: 1 } })
            event.properties.api = { status: response.status, echo: await response.json() }
            return event
        }
        """,
        config={"url": service.url},
    )
    api = ok(await one(plugin))["properties"]["api"]
    assert api["status"] == 200 and api["echo"]["method"] == "POST"
    assert json.loads(api["echo"]["body"]) == {"a": 1}
    assert api["echo"]["headers"]["authorization"] == "Bearer phx_personal"


async def test_posthog_api_network_failure_names_the_url(load: Loader) -> None:
    plugin = await load(
        """
        export async function processEvent(event) {
            const keys = { host: 'http://127.0.0.1:9', projectApiKey: 'phc_project', personalApiKey: 'phx_personal' }
            try {
                await posthog.api.get('/api/projects/@current/events', keys)
            } catch (error) {
                const { FetchError } = require('node-fetch')
                event.properties.failed = `${error instanceof FetchError} ${error.name}: ${error.message}`
            }
            return event
        }
        """
    )
    failed = ok(await one(plugin))["properties"]["failed"]
    assert failed.startswith(
        "true FetchError: request to http://127.0.0.1:9/api/projects/@current/events failed"
    )


@pytest.mark.parametrize(
    ("module", "message"),
    [
        ("left-pad", "Cannot import 'left-pad'! This package is not provided by PostHog in plugins."),
        ("fs", "Cannot import 'fs'! This package is not provided by PostHog in plugins."),
    ],
)
async def test_require_allow_list(load: Loader, module: str, message: str) -> None:
    with pytest.raises(JSError, match=message.replace("(", r"\(").replace(")", r"\)")):
        await load(f"import thing from '{module}'\nexport function processEvent(e) {{ return thing(e) }}")


# ---------------------------------------------------------------------- runaway code and memory


@pytest.mark.parametrize("transpile", [True, False], ids=["guarded", "unguarded"])
async def test_a_sync_endless_loop_stops_only_its_event(load: Loader, transpile: bool) -> None:
    plugin = await load(
        """
        exports.processEvent = function (event) {
            if (event.properties.number === 1) { while (true) {} }
            event.properties.done = true
            return event
        }
        """,
        transpile=transpile,
    )
    started = time.monotonic()
    outcomes = await plugin.process_events([event(0), event(1), event(2)], frozenset())
    elapsed = time.monotonic() - started
    assert ok(outcomes[0])["properties"]["done"] and ok(outcomes[2])["properties"]["done"]
    if transpile:  # the transpiler's guard: an error at TASK_TIMEOUT
        assert isinstance(outcomes[1], JSError) and "looping for 1 second" in str(outcomes[1])
        assert elapsed < TIMEOUT + 0.5
    else:  # the runtime terminates the script a little later, so that guards act first
        assert isinstance(outcomes[1], PluginTimeout)
        assert elapsed < TIMEOUT + 1.5
    assert (await one(plugin, event(3)))["properties"]["done"]  # same isolate, still usable


async def test_an_endless_loop_after_an_await(load: Loader) -> None:
    """Guarded, the loop throws in its event; unguarded (code from `new Function`), V8 cannot stop it,
    so the isolate is closed and the next call builds a new one (running setupPlugin again)."""
    plugin = await load(
        """
        const spin = new Function('while (true) {}')
        export async function setupPlugin({ cache }) { await cache.incr('setups') }
        export async function processEvent(event, { cache }) {
            await cache.get('anything')
            if (event.properties.number === 1) { while (true) {} }
            if (event.properties.number === 2) { spin() }
            event.properties.done = true
            return event
        }
        """
    )
    outcomes = await plugin.process_events([event(0), event(1)], frozenset())
    assert ok(outcomes[0])["properties"]["done"]
    assert isinstance(outcomes[1], JSError) and "looping" in str(outcomes[1])
    started = time.monotonic()
    outcomes = await plugin.process_events([event(0), event(2)], frozenset())
    assert all(isinstance(outcome, PluginTimeout) for outcome in outcomes)
    assert time.monotonic() - started < 2 * TIMEOUT + 3
    assert (await one(plugin, event(3)))["properties"]["done"]
    assert await plugin.meta.cache.get("setups") == 2


async def test_a_runaway_timer_callback_is_stopped(load: Loader) -> None:
    plugin = await load(
        """
        const spin = new Function('while (true) {}')
        export function setupPlugin() { setTimeout(spin, 0) }
        export function processEvent(event) { event.properties.done = true; return event }
        """
    )
    started = time.monotonic()
    assert ok(await one(plugin))["properties"]["done"]
    assert time.monotonic() - started < TIMEOUT + 2.5
    assert ok(await one(plugin))["properties"]["done"]


async def test_an_async_call_times_out(load: Loader) -> None:
    plugin = await load("export async function onEvent() { await new Promise(() => {}) }")
    started = time.monotonic()
    with pytest.raises(
        PluginTimeout, match=r"^Script execution timed out after (running|promise waited) for 1 second"
    ):
        await plugin.on_event(event())
    assert time.monotonic() - started < TIMEOUT + 0.5


async def test_a_memory_bomb_costs_its_isolate(load: Loader) -> None:
    plugin = await load(
        """
        export async function setupPlugin({ cache }) { await cache.incr('setups') }
        export function processEvent(event) {
            if (event.properties.number === 1) {
                const hoard = []
                for (;;) hoard.push({ index: hoard.length, text: 'x'.repeat(64) + hoard.length })
            }
            return event
        }
        """
    )
    outcomes = await plugin.process_events([event(0), event(1)], frozenset())
    assert all(isinstance(outcome, JSHeapLimitError) for outcome in outcomes)
    assert await one(plugin, event(2)) == event(2)
    assert await plugin.meta.cache.get("setups") == 2


# ---------------------------------------------------------------------- ArrayBuffer memory (memory.js)

MB = 1024 * 1024
# Ways plugin code can make a backing store, each past the 64 MB budget (`half` is a global of the plugin).
ALLOCATIONS = {
    "ArrayBuffer": "new ArrayBuffer(100 * MB)",
    "SharedArrayBuffer": "new SharedArrayBuffer(100 * MB)",
    "resizable ArrayBuffer": "new ArrayBuffer(1, { maxByteLength: 100 * MB })",
    "Uint8Array length": "new Uint8Array(100 * MB)",
    "Float64Array length": "new Float64Array(100 * MB / 8)",
    "constructor of an instance": "new (new Uint8Array(1).constructor)(100 * MB)",
    "prototype constructor": "new (Object.getPrototypeOf(Uint8Array.prototype).constructor === Uint8Array ? null : Uint8Array.prototype.constructor)(100 * MB)",
    "subclass": "new (class extends Uint8Array {})(100 * MB)",
    "Reflect.construct": "Reflect.construct(Uint8Array, [100 * MB], Object)",
    "from array-like": "Uint8Array.from({ length: 100 * MB })",
    "array-like": "new Uint8Array({ length: 100 * MB })",
    "iterable": "(half = new Uint8Array(63 * MB), new Uint8Array((function* () { for (let i = 0; i < 2 * MB; i++) yield 1 })()))",
    "copy of a typed array": "(half = new Uint8Array(40 * MB), new Uint8Array(half))",
    "slice": "(half = new Uint8Array(40 * MB), half.slice())",
    "map": "(half = new Uint8Array(40 * MB), half.map((x) => x))",
    "toReversed": "(half = new Uint8Array(40 * MB), half.toReversed())",
    "ArrayBuffer slice": "(half = new ArrayBuffer(40 * MB), half.slice(0))",
    "transfer": "new ArrayBuffer(1).transfer(100 * MB)",
    "Buffer.alloc": "Buffer.alloc(100 * MB)",
    "fromHex": "(half = new Uint8Array(62 * MB), Uint8Array.fromHex('00'.repeat(4 * MB)))",
}


@pytest.mark.parametrize("expression", ALLOCATIONS.values(), ids=ALLOCATIONS.keys())
async def test_array_buffer_memory_is_bounded(load: Loader, expression: str) -> None:
    plugin = await load(
        f"""
        const MB = 1024 * 1024
        let kept: any
        let half: any
        export async function setupPlugin({{ cache }}) {{ await cache.incr('setups') }}
        export function processEvent(event) {{
            if (event.properties.number === 1) kept = {expression}
            event.properties.kept = kept !== undefined
            return event
        }}
        """
    )
    outcomes = await plugin.process_events([event(0), event(1)], frozenset())
    for outcome in outcomes:
        assert isinstance(outcome, JSHeapLimitError), outcome
        assert "ran out of ArrayBuffer memory (more than 64 MB)" in str(outcome)
    # The isolate was discarded with what it held; the next call builds a new one.
    assert ok(await one(plugin, event(2)))["properties"]["kept"] is False
    assert await plugin.meta.cache.get("setups") == 2


async def test_a_plugin_that_hoards_buffers_bit_by_bit_loses_its_isolate(load: Loader) -> None:
    plugin = await load(
        """
        const hoard: Uint8Array[] = []
        export function processEvent(event) {
            hoard.push(new Uint8Array(8 * 1024 * 1024).fill(1))
            event.properties.hoarded = hoard.length
            return event
        }
        """
    )
    outcomes = await plugin.process_events([event(number) for number in range(4)], frozenset())
    assert [ok(outcome)["properties"]["hoarded"] for outcome in outcomes] == [1, 2, 3, 4]
    outcomes = await plugin.process_events([event(number) for number in range(8)], frozenset())
    assert all(isinstance(outcome, JSHeapLimitError) for outcome in outcomes)
    assert ok(await one(plugin))["properties"]["hoarded"] == 1


async def test_buffers_a_plugin_lets_go_of_are_given_back(load: Loader) -> None:
    plugin = await load(
        """
        export function processEvent(event) {
            const scratch = new Uint8Array(16 * 1024 * 1024).fill(7)
            event.properties.sum = scratch[0] + scratch[scratch.length - 1]
            return event
        }
        """
    )
    # 64 events x 16 MB of garbage in batches of 2: sixteen times the budget, never more than 32 MB alive.
    for batch in range(32):
        outcomes = await plugin.process_events([event(batch), event(batch + 100)], frozenset())
        assert [ok(outcome)["properties"]["sum"] for outcome in outcomes] == [14, 14]


async def test_a_refused_allocation_that_the_plugin_catches_still_costs_the_isolate_when_it_is_too_big(
    load: Loader,
) -> None:
    plugin = await load(
        """
        export function processEvent(event) {
            try { new Uint8Array(2 ** 31) } catch (error) { event.properties.caught = String(error) }
            return event
        }
        """
    )
    (outcome,) = await plugin.process_events([event()], frozenset())
    assert isinstance(outcome, JSHeapLimitError)
    assert "WebAssembly" not in str(await one_globals(load))


async def test_collecting_garbage_cannot_freeze_the_worker(load: Loader) -> None:
    # Not transpiled, so no loop guards: after the script, a promise continuation spins forever while
    # the plugin holds more than half its budget, which makes the runtime collect garbage next.
    plugin = await load(
        """
        let kept
        function processEvent(event) {
            kept = new Uint8Array(40 * 1024 * 1024)
            Promise.resolve().then(() => { for (;;) {} })
            return event
        }
        module.exports = { processEvent }
        """,
        transpile=False,
    )
    started = time.monotonic()
    (outcome,) = await plugin.process_events([event()], frozenset())
    assert isinstance(outcome, PluginTimeout | dict), outcome
    assert time.monotonic() - started < 3 * TIMEOUT + 5


async def one_globals(load: Loader) -> Any:
    plugin = await load(
        "export function processEvent(event) { event.properties.wasm = typeof WebAssembly; return event }"
    )
    return ok(await one(plugin))["properties"]["wasm"]


# ---------------------------------------------------------------------- what a plugin can see


async def test_a_plugin_cannot_reach_the_host(load: Loader) -> None:
    plugin = await load(
        """
        export function processEvent(event) {
            const seen: any = {}
            const fs = 'fs'  // a literal name that is not provided would refuse the plugin at load
            try { seen.fs = typeof require(fs) } catch (error) { seen.fs = error.message }
            seen.process = typeof process
            seen.globals = Object.getOwnPropertyNames(globalThis).filter((name) => !/^[A-Z]/.test(name)).sort()
            const entry = seen.globals.find((name) => name.startsWith('__pluginServer_'))
            seen.entry = Object.keys(globalThis[entry]).sort()
            seen.functionSource = globalThis[entry].run.toString().includes('[native code]')
            event.properties.seen = seen
            return event
        }
        """
    )
    seen = (await one(plugin))["properties"]["seen"]
    assert seen["fs"] == "Cannot import 'fs'! This package is not provided by PostHog in plugins."
    assert seen["process"] == "undefined"
    globals_ = [name for name in seen["globals"] if not name.startswith("__pluginServer_")]
    assert globals_ == sorted(
        [
            "__timer_manager",  # mini-racer's, emptied
            "gc",  # V8's (--expose-gc), emptied by memory.js
            "atob",
            "btoa",
            "clearImmediate",
            "clearInterval",
            "clearTimeout",
            "console",
            "decodeURI",
            "decodeURIComponent",
            "encodeURI",
            "encodeURIComponent",
            "escape",
            "eval",
            "fetch",
            "globalThis",
            "isFinite",
            "isNaN",
            "parseFloat",
            "parseInt",
            "posthog",
            "queueMicrotask",
            "setImmediate",
            "setInterval",
            "setTimeout",
            "undefined",
            "unescape",
        ]
    )
    # The runtime's entry points are plain JavaScript: calling them only talks to this plugin's isolate.
    assert seen["entry"] == ["collectGarbage", "define", "load", "memoryStillOver", "poll", "run"]
    assert seen["functionSource"] is False


async def test_a_plugin_breaking_its_runtime_costs_only_its_isolate(load: Loader) -> None:
    plugin = await load(
        """
        export function processEvent(event) {
            if (event.properties.number === 1) { Array.prototype.join = () => 'not JSON' }
            return event
        }
        """
    )
    (broken,) = await plugin.process_events([event(1)], frozenset())
    assert isinstance(broken, PluginError) and "broke its JavaScript runtime" in str(broken)
    assert await one(plugin, event(2)) == event(2)


async def test_calls_of_one_plugin_run_concurrently(load: Loader) -> None:
    plugin = await load(
        """
        export async function processEvent(event, { cache }) {
            await new Promise((resolve) => setTimeout(resolve, 200))
            return event
        }
        export async function onEvent(event, { cache }) {
            await new Promise((resolve) => setTimeout(resolve, 200))
            await cache.incr('onEvent')
        }
        """
    )
    started = time.monotonic()
    await asyncio.gather(
        plugin.process_events([event(number) for number in range(20)], frozenset()),
        *(plugin.on_event(event(number)) for number in range(5)),
    )
    assert time.monotonic() - started < 0.6
    assert await plugin.meta.cache.get("onEvent") == 5


async def test_teardown(load: Loader) -> None:
    plugin = await load(
        """
        export async function teardownPlugin({ cache }) { await cache.set('torn down', true) }
        export function onEvent() {}
        """
    )
    await plugin.teardown()
    assert await plugin.meta.cache.get("torn down") is True
    with pytest.raises(PluginError, match="torn down"):
        await plugin.on_event(event())


async def test_many_events_awaiting_host_calls_share_exchanges(load: Loader) -> None:
    plugin = await load(
        """
        export async function processEvent(event, { cache }) {
            event.properties.count = await cache.incr(`count ${event.distinct_id}`)
            event.properties.again = await cache.get(`count ${event.distinct_id}`)
            return event
        }
        """
    )
    started = time.monotonic()
    outcomes = await plugin.process_events([event(number % 50) for number in range(500)], frozenset())
    elapsed = time.monotonic() - started
    assert sorted(ok(outcome)["properties"]["count"] for outcome in outcomes) == sorted(
        count for _ in range(50) for count in range(1, 11)
    )
    assert elapsed < 5  # 1000 Redis calls, exchanged with the isolate in a few batches
