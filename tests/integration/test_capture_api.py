"""The capture API on real Postgres and Redis (and a real Kafka-protocol broker): what clients send,
what lands in the ingestion queue, and what is refused."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from plugin_server.config import load_settings
from plugin_server.db.teams import CreatedTeam
from plugin_server.ingestion.celery import decode_message, event_from_task
from plugin_server.ingestion.enqueue import open_enqueuer
from plugin_server.reads.postgres import postgres_reads
from plugin_server.services.metrics import get_metrics
from plugin_server.web.app import create_app
from plugin_server.web.context import WebContext
from plugin_server.web.health import WorkerStatus
from tests.kafka_broker import free_port, read_topic, unique_topic
from tests.unit.web.lz import lz64, lz64_literals

QUEUE = "posthog-plugins"


@asynccontextmanager
async def api(
    pool: AsyncConnectionPool[Any],
    redis: aioredis.Redis,
    *,
    workers: WorkerStatus | None = None,
    peer: str = "127.0.0.1",
    **settings: Any,
) -> AsyncIterator[httpx.AsyncClient]:
    config = load_settings({}, **settings)
    enqueuer = open_enqueuer(config, redis)
    app = create_app(WebContext(config, pool, redis, enqueuer, workers, reads=postgres_reads(pool.conninfo)))
    transport = httpx.ASGITransport(app=app, client=(peer, 50000))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client
    finally:
        await enqueuer.close()


async def queued(redis: aioredis.Redis) -> list[dict[str, Any]]:
    """The raw events on the Celery list, oldest first, as the worker will read them."""
    messages = await redis.lrange(QUEUE, 0, -1)
    return [event_from_task(decode_message(message)) for message in reversed(messages)]


def event(name: str, distinct_id: str = "user-1", **properties: Any) -> dict[str, Any]:
    return {"event": name, "distinct_id": distinct_id, "properties": properties}


async def test_a_json_event_is_queued_as_posthog_capture_queued_it(
    pool: AsyncConnectionPool[Any], aredis: aioredis.Redis, team: CreatedTeam
) -> None:
    async with api(pool, aredis) as client:
        body = {
            **event("$pageview", plan="pro"),
            "api_key": team.api_token,
            "timestamp": "2021-11-28T10:00:00Z",
        }
        response = await client.post("/capture/", json=body, headers={"Origin": "https://example.com"})
    assert response.status_code == 200
    assert response.json() == {"status": 1}
    assert response.headers["access-control-allow-origin"] == "https://example.com"
    (raw,) = await queued(aredis)
    assert raw["event"] == "$pageview"
    assert raw["distinct_id"] == "user-1"
    assert raw["team_id"] == team.team_id
    assert raw["ip"] == "127.0.0.1"
    assert raw["site_url"] == "http://testserver"
    assert raw["properties"] == {"plan": "pro"}
    assert raw["timestamp"] == "2021-11-28T10:00:00Z"
    assert raw["now"].endswith("+00:00")
    assert raw["sent_at"] is None
    assert uuid.UUID(raw["uuid"])


async def test_every_encoding_and_path_of_the_sdks(
    pool: AsyncConnectionPool[Any], aredis: aioredis.Redis, team: CreatedTeam
) -> None:
    token = team.api_token
    as_json = json.dumps([event("lz", emoji="😀")], ensure_ascii=False)
    async with api(pool, aredis) as client:
        requests = [
            # posthog-python / posthog-node: {"batch": [...]} gzip with Content-Encoding
            client.post(
                "/batch/",
                content=gzip.compress(json.dumps({"batch": [event("batch")], "api_key": token}).encode()),
                headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
            ),
            # posthog-js: gzip-js in the query, token per event
            client.post(
                "/e/?compression=gzip-js&_=1638093600000",
                content=gzip.compress(json.dumps([event("gzip-js", token=token)]).encode()),
                headers={"Content-Type": "text/plain"},
            ),
            # posthog-js: lz64 in a form body
            client.post(
                "/e/",
                data={"data": lz64(as_json), "compression": "lz64", "token": token},
            ),
            # older posthog-js: base64 `data` in a form
            client.post(
                "/track",
                data={"data": base64.b64encode(json.dumps(event("form", token=token)).encode()).decode()},
            ),
            # GET with data= (image beacons)
            client.get(
                "/i/v0/e/",
                params={"data": base64.b64encode(json.dumps(event("get")).encode()).decode(), "token": token},
            ),
            client.post("/capture", json={**event("capture"), "api_key": token}),
            # older posthog-js: people updates to /engage, session recording snapshots to /s
            client.post("/engage/", json={**event("$identify"), "$set": {"plan": "pro"}, "api_key": token}),
            client.post("/s/", json=[event("$snapshot", token=token, **{"$session_id": "s1"})]),
        ]
        for request in requests:
            response = await request
            assert response.status_code == 200, response.text
    events = await queued(aredis)
    names = [raw["event"] for raw in events]
    assert names == ["batch", "gzip-js", "lz", "form", "get", "capture", "$identify", "$snapshot"]
    assert events[6]["$set"] == {"plan": "pro"}
    assert events[2]["properties"]["emoji"] == "😀"
    assert events[1]["sent_at"] == "2021-11-28T10:00:00+00:00"
    assert {raw["team_id"] for raw in events} == {team.team_id}
    assert len({raw["uuid"] for raw in events}) == len(events)


async def test_a_batch_keeps_its_order_and_counts_as_received(
    pool: AsyncConnectionPool[Any], aredis: aioredis.Redis, team: CreatedTeam
) -> None:
    before = _received("capture")
    async with api(pool, aredis) as client:
        batch = [event(f"e{number}") for number in range(50)]
        response = await client.post("/batch", json={"batch": batch, "api_key": team.api_token})
    assert response.status_code == 200
    assert [raw["event"] for raw in await queued(aredis)] == [f"e{number}" for number in range(50)]
    assert _received("capture") == before + 50


async def test_refusals_queue_nothing(
    pool: AsyncConnectionPool[Any], aredis: aioredis.Redis, team: CreatedTeam
) -> None:
    token = team.api_token
    async with api(pool, aredis, CAPTURE_MAX_BODY_BYTES=2000) as client:
        cases = [
            (await client.post("/capture", json=event("x")), 401, "missing_api_key"),
            (
                await client.post("/capture", json={**event("x"), "api_key": "phc_nope"}),
                401,
                "invalid_api_key",
            ),
            (
                await client.post("/capture", content=b"{oops", headers={"Content-Type": "application/json"}),
                400,
                "invalid_payload",
            ),
            (await client.post("/capture", content=b""), 400, "no_data"),
            (await client.post("/batch", json={"batch": [], "api_key": "phc_nope"}), 401, "invalid_api_key"),
            (
                await client.post(
                    "/batch", json={"batch": [event("ok"), {"distinct_id": "x"}], "api_key": token}
                ),
                400,
                "required",
            ),
            (
                await client.post(
                    "/batch", json={"batch": [event("big", blob="x" * 3000)], "api_key": token}
                ),
                413,
                "payload_too_large",
            ),
            (
                await client.post(
                    "/batch",
                    content=gzip.compress(
                        json.dumps({"batch": [event("x" * 5000)], "api_key": token}).encode()
                    ),
                    headers={"Content-Encoding": "gzip"},
                ),
                413,
                "payload_too_large",
            ),
        ]
    for response, status, code in cases:
        assert response.status_code == status, response.text
        body = response.json()
        assert body["code"] == code
        assert body["detail"]
    assert await aredis.llen(QUEUE) == 0


async def test_forwarded_for_is_honoured_only_from_trusted_proxies(
    pool: AsyncConnectionPool[Any], aredis: aioredis.Redis, team: CreatedTeam
) -> None:
    body = {**event("x"), "api_key": team.api_token}
    headers = {"X-Forwarded-For": "198.51.100.7, 10.1.2.3"}
    async with api(pool, aredis, peer="10.0.0.1", TRUSTED_PROXIES="10.0.0.0/8") as client:
        assert (await client.post("/capture", json=body, headers=headers)).status_code == 200
    async with api(pool, aredis, peer="192.0.2.1", TRUSTED_PROXIES="10.0.0.0/8") as client:
        assert (await client.post("/capture", json=body, headers=headers)).status_code == 200
    assert [raw["ip"] for raw in await queued(aredis)] == ["198.51.100.7", "192.0.2.1"]


async def test_kafka_mode_puts_events_on_the_ingestion_topic(
    pool: AsyncConnectionPool[Any], aredis: aioredis.Redis, team: CreatedTeam, kafka: str
) -> None:
    topic = unique_topic("events")
    settings = {"KAFKA_ENABLED": True, "KAFKA_HOSTS": kafka, "KAFKA_CONSUMPTION_TOPIC": topic}
    async with api(pool, aredis, KAFKA_FLUSH_FREQUENCY_MS=5, **settings) as client:
        body = {"batch": [event("k1"), event("k2", "user-2")], "api_key": team.api_token}
        assert (await client.post("/batch", json=body)).status_code == 200
        ready = await client.get("/_ready")
    values = [json.loads(message.value() or b"") for message in read_topic(kafka, topic, 2)]
    assert sorted(json.loads(value["data"])["event"] for value in values) == ["k1", "k2"]
    assert {value["team_id"] for value in values} == {team.team_id}
    assert await aredis.llen(QUEUE) == 0
    assert ready.status_code == 200
    assert ready.json()["checks"]["kafka"] == {"ok": True}


async def test_ready_checks_every_dependency(
    pool: AsyncConnectionPool[Any], aredis: aioredis.Redis, team: CreatedTeam
) -> None:
    workers = WorkerStatus()
    workers.publish(expected=2, alive=2, consuming=2)
    async with api(pool, aredis, workers=workers) as client:
        health = await client.get("/_health")
        ready = await client.get("/_ready")
        workers.publish(expected=2, alive=2, consuming=1)
        one_stuck = await client.get("/_ready")
    assert health.status_code == 200
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "failed": [],
        "checks": {
            "database": {"ok": True},
            "redis": {"ok": True},
            "workers": {"ok": True, "expected": 2, "alive": 2, "consuming": 2},
            "sources": {"ok": True, "celery": {"depth": None}},  # not sampled yet
        },
    }
    assert one_stuck.status_code == 503
    assert one_stuck.json()["failed"] == ["workers"]
    assert one_stuck.json()["checks"]["workers"]["error"] == "1 of 2 workers are not consuming"


async def test_ready_reports_each_sources_backlog_and_fails_past_the_kafka_lag_allowed(
    pool: AsyncConnectionPool[Any], aredis: aioredis.Redis, kafka: str
) -> None:
    workers = WorkerStatus()
    workers.publish(expected=1, alive=1, consuming=1, kafka_lag=1000)
    workers.queue_sampled(7)
    settings = {"KAFKA_ENABLED": True, "KAFKA_HOSTS": kafka, "KAFKA_MAX_LAG_READY": 1000}
    async with api(pool, aredis, workers=workers, **settings) as client:
        at_the_limit = await client.get("/_ready")
        workers.publish(expected=1, alive=1, consuming=1, kafka_lag=1001)
        behind = await client.get("/_ready")
    assert at_the_limit.status_code == 200
    assert at_the_limit.json()["checks"]["sources"] == {
        "ok": True,
        "celery": {"depth": 7},
        "kafka": {"lag": 1000, "max_lag_ready": 1000},
    }
    assert behind.status_code == 503 and behind.json()["failed"] == ["sources"]
    assert (
        behind.json()["checks"]["sources"]["error"]
        == "Kafka consumer lag 1001 is above KAFKA_MAX_LAG_READY (1000)"
    )


async def test_ready_names_what_is_down_and_capture_answers_503(
    pool: AsyncConnectionPool[Any], team: CreatedTeam
) -> None:
    nothing_listens = aioredis.Redis(port=free_port(), socket_connect_timeout=0.5)
    kafka_down = {"KAFKA_ENABLED": True, "KAFKA_HOSTS": f"127.0.0.1:{free_port()}"}
    async with api(pool, nothing_listens, **kafka_down) as client:
        ready = await client.get("/_ready")
    async with api(pool, nothing_listens) as client:
        capture = await client.post("/capture", json={**event("x"), "api_key": team.api_token})
    await nothing_listens.aclose()
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable"
    assert ready.json()["failed"] == ["redis", "kafka"]
    assert ready.json()["checks"]["database"] == {"ok": True}
    assert ready.json()["checks"]["redis"]["error"]
    assert "did not answer" in ready.json()["checks"]["kafka"]["error"]
    assert capture.status_code == 503
    assert capture.json()["type"] == "server_error"


def _received(source: str) -> float:
    value = get_metrics().registry.get_sample_value("plugin_server_events_received_total", {"source": source})
    return value or 0.0


async def test_health_answers_at_once_while_a_large_body_decodes(
    pool: AsyncConnectionPool[Any], aredis: aioredis.Redis, team: CreatedTeam
) -> None:
    """Decoding happens in a thread: the event loop goes on answering while it runs."""
    events = [{**event("e", n=i), "api_key": team.api_token} for i in range(10_000)]
    body = lz64_literals(json.dumps(events))  # slow to decode for its size
    # Time enough to decode on a busy machine: this is about the event loop, not the decode limit.
    async with api(pool, aredis, CAPTURE_DECODE_TIMEOUT=60) as client:
        capture = asyncio.create_task(client.post("/e?compression=lz64", content=body))
        began = time.monotonic()
        latencies = []
        while not capture.done():
            started = time.monotonic()
            assert (await client.get("/_health")).status_code == 200
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(0.01)
        answer = await capture
        assert answer.status_code == 200, answer.text
        decoding = time.monotonic() - began
    assert len(latencies) >= 5, "the decoding was too quick to watch"
    # A blocked event loop would answer once, after the whole decode; other processes on a busy
    # machine may still delay one answer now and then.
    assert max(latencies) < decoding / 3, (decoding, latencies)
    assert await aredis.llen(QUEUE) == 10_000


async def test_the_fastapi_app_serves_capture_with_the_same_endpoint(
    pool: AsyncConnectionPool[Any], aredis: aioredis.Redis, team: CreatedTeam
) -> None:
    """The FrontDoor sends capture requests straight to the endpoint; the FastAPI app, which documents
    the routes, answers them the same way, and refuses other methods."""
    config = load_settings({})
    enqueuer = open_enqueuer(config, aredis)
    front = create_app(WebContext(config, pool, aredis, enqueuer, reads=postgres_reads(pool.conninfo)))
    transport = httpx.ASGITransport(app=front.api, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        captured = await client.post("/e/", json={**event("direct"), "api_key": team.api_token})
        preflight = await client.options("/e/", headers={"Origin": "https://example.com"})
        schema = (await client.get("/openapi.json")).json()
    async with api(pool, aredis) as client:
        put = await client.put("/e/", json={**event("put"), "api_key": team.api_token})
    await enqueuer.close()
    assert captured.status_code == 200 and captured.json() == {"status": 1}
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://example.com"
    assert preflight.headers["access-control-allow-methods"] == "GET, POST, OPTIONS"
    assert "post" in schema["paths"]["/batch"]
    assert put.status_code == 405
    assert [raw["event"] for raw in await queued(aredis)] == ["direct"]


async def test_a_client_that_leaves_mid_body_queues_nothing_and_gets_no_answer(
    pool: AsyncConnectionPool[Any], aredis: aioredis.Redis, team: CreatedTeam
) -> None:
    config = load_settings({})
    enqueuer = open_enqueuer(config, aredis)
    front = create_app(WebContext(config, pool, aredis, enqueuer, reads=postgres_reads(pool.conninfo)))
    body = json.dumps({**event("half"), "api_key": team.api_token}).encode()
    messages = [
        {"type": "http.request", "body": body[:10], "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/e/",
        "scheme": "http",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 50000),
    }
    await front(scope, receive, send)
    await enqueuer.close()
    assert sent == []
    assert await aredis.llen(QUEUE) == 0
