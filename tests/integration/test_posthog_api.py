"""`posthog.api` against a loopback stub of PostHog's HTTP API, with the bot user's personal API key
provisioned in the real database; and `posthog.capture` through the real Redis queue."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from typing import Any

import httpx
import psycopg
import pytest
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from plugin_server.config import load_settings
from plugin_server.db.teams import CreatedTeam, create_organization_and_team
from plugin_server.ingestion.celery import PROCESS_EVENT_TASK, decode_message, event_from_task
from plugin_server.ingestion.celery_enqueuer import CeleryEnqueuer
from plugin_server.ingestion.enqueue import open_enqueuer
from plugin_server.plugins.egress import plugin_http_client
from plugin_server.plugins.meta.network import FetchError
from plugin_server.plugins.meta.posthog import PersonalApiKeys, PostHogApi, PostHogCapture
from tests.conftest import Counted
from tests.kafka_broker import read_topic, unique_topic
from tests.loopback import LoopbackService, loopback_plugin_http

Db = psycopg.Connection[Any]
QUEUE = "posthog-plugins-test"


@pytest.fixture
def stub() -> Iterator[LoopbackService]:
    """PostHog's API on 127.0.0.1: answers every request with `{"ok": true}`."""
    with LoopbackService(lambda _: (200, b'{"ok": true}')) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with loopback_plugin_http() as client:
        yield client


GIVEN_KEYS = {"projectApiKey": "phc_project", "personalApiKey": "phx_personal"}


@dataclass(frozen=True)
class Apis:
    """Makes `meta.posthog.api` of plugin configs as the plugin host builds it, sending to the stub."""

    team: CreatedTeam
    pool: AsyncConnectionPool[Any]
    http: httpx.AsyncClient
    stub: LoopbackService

    def __call__(
        self,
        keys: PersonalApiKeys | None = None,
        team: CreatedTeam | None = None,
        *,
        default_host: str | None = None,
    ) -> PostHogApi:
        """The api of a config of `team` (the test's team by default) in a worker whose key cache is
        `keys` (by default one of its own)."""
        team = team or self.team
        return PostHogApi(
            http=self.http,
            keys=PersonalApiKeys(self.pool) if keys is None else keys,
            team_api_token=team.api_token,
            organization_id=team.organization_id,
            default_host=default_host or self.stub.url,
        )


@pytest.fixture
def api_for(
    team: CreatedTeam, pool: AsyncConnectionPool[Any], http: httpx.AsyncClient, stub: LoopbackService
) -> Apis:
    return Apis(team, pool, http, stub)


def bot_users(db: Db) -> list[dict[str, Any]]:
    """Bot users with their organizations and personal API keys."""
    with db.cursor(row_factory=psycopg.rows.dict_row) as cursor:
        return cursor.execute(
            """SELECT u.id, u.email, m.organization_id::text AS organization_id, k.label, k.value
               FROM posthog_user u
               JOIN posthog_organizationmembership m ON m.user_id = u.id
               JOIN posthog_personalapikey k ON k.user_id = u.id
               ORDER BY u.id"""
        ).fetchall()


def count(db: Db, table: str) -> int:
    row = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0


# ---------------------------------------------------------------- requests


async def test_get_and_delete_send_data_as_query_parameters(api_for: Apis, stub: LoopbackService) -> None:
    api = api_for()
    data = {"limit": 10, "event": "$pageview"}

    response = await api.get("/api/event/", {"data": data, **GIVEN_KEYS})
    await api.delete("api/projects/@current/feature_flags/7", {"data": {"reason": "cleanup"}, **GIVEN_KEYS})

    assert response.status_code == 200 and response.json() == {"ok": True}
    get, delete = stub.requests
    assert (get.method, get.path) == ("GET", "/api/event/")
    assert get.query == {"limit": "10", "event": "$pageview", "token": "phc_project"}
    assert get.headers["authorization"] == "Bearer phx_personal"
    assert get.body == b""
    # The original dropped DELETE's data (its bug 6): here it is sent like GET's.
    assert (delete.method, delete.path) == ("DELETE", "/api/projects/@current/feature_flags/7")
    assert delete.query == {"reason": "cleanup", "token": "phc_project"}
    assert delete.headers["authorization"] == "Bearer phx_personal"


async def test_post_and_put_send_data_as_a_json_body(api_for: Apis, stub: LoopbackService) -> None:
    api = api_for()
    data = {"name": "flag", "filters": {"groups": [{"rollout_percentage": 50}]}}

    await api.post("/api/feature_flag/", {"data": data, **GIVEN_KEYS})
    await api.put("/api/feature_flag/3/", {"data": {"active": False}, **GIVEN_KEYS})

    post, put = stub.requests
    assert (post.method, post.path, post.query) == ("POST", "/api/feature_flag/", {"token": "phc_project"})
    assert json.loads(post.body) == data
    assert post.headers["content-type"] == "application/json"
    assert post.headers["authorization"] == "Bearer phx_personal"
    assert (put.method, put.path, put.query) == ("PUT", "/api/feature_flag/3/", {"token": "phc_project"})
    assert json.loads(put.body) == {"active": False}


async def test_the_host_option_replaces_the_default_host(api_for: Apis, stub: LoopbackService) -> None:
    api = api_for(default_host="http://127.0.0.1:9")  # discard port: nothing may go there

    await api.get("/api/event", {"host": stub.url + "/", **GIVEN_KEYS})

    [request] = stub.requests
    assert (request.path, request.query) == ("/api/event", {"token": "phc_project"})


async def test_a_network_failure_names_the_url_but_not_the_token(api_for: Apis) -> None:
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        host = f"http://127.0.0.1:{unused.getsockname()[1]}"
    with pytest.raises(FetchError) as raised:
        await api_for().get("/api/event", {"host": host, **GIVEN_KEYS})
    assert str(raised.value).startswith(f"request to {host}/api/event failed, reason: ")
    assert "phc_project" not in str(raised.value)


@pytest.mark.parametrize(
    "keys",
    [{"projectApiKey": "phc_project"}, {"personalApiKey": "phx_personal"}],
    ids=["project", "personal"],
)
async def test_giving_only_one_of_the_keys_raises(
    keys: dict[str, str], clean_db: Db, api_for: Apis, stub: LoopbackService
) -> None:
    with pytest.raises(ValueError, match="You must specify a personalApiKey if you specify a projectApiKey"):
        await api_for().get("/api/event", keys)

    assert stub.requests == []
    assert count(clean_db, "posthog_user") == 0


async def test_given_keys_need_no_bot_user(clean_db: Db, api_for: Apis) -> None:
    await api_for().get("/api/event", GIVEN_KEYS)

    assert count(clean_db, "posthog_user") == 0


@pytest.mark.parametrize(
    "host",
    [
        "http://127.0.0.1:{other}",  # another port
        "https://127.0.0.1:{port}",  # another scheme
        "http://127.0.0.1:{port}@localhost:{other}",  # the configured address as user info
        "http://localhost:{port}",  # another name, even for the same address
    ],
)
async def test_the_organization_key_goes_only_to_the_configured_host(
    clean_db: Db, api_for: Apis, stub: LoopbackService, host: str
) -> None:
    with (
        LoopbackService(lambda _: (200, b"{}")) as other,
        pytest.raises(ValueError, match="sends the organization's API key only to") as refused,
    ):
        await api_for().get("/api/event", {"host": host.format(port=stub.port, other=other.port)})

    assert stub.url in str(refused.value) and "projectApiKey and personalApiKey" in str(refused.value)
    assert stub.requests == [] and other.requests == []
    assert count(clean_db, "posthog_user") == 0  # not even a bot user made for it


async def test_another_host_with_the_plugins_own_keys_is_held_to_the_egress_policy(
    clean_db: Db, api_for: Apis, stub: LoopbackService
) -> None:
    """As the plugin host builds it: the configured host is reached on loopback without any allowance,
    another loopback host is refused with the egress error, as for fetch."""
    posthog_only = plugin_http_client(load_settings({}), trusted=[("127.0.0.1", stub.port)])
    with LoopbackService(lambda _: (200, b"{}")) as other:
        async with posthog_only as http:
            api = replace(api_for, http=http)()
            assert (await api.get("/api/event", GIVEN_KEYS)).status_code == 200
            with pytest.raises(FetchError, match=r"may not connect to 127\.0\.0\.1: it is a loopback"):
                await api.get("/api/event", {"host": other.url, **GIVEN_KEYS})

    assert other.requests == [] and [request.path for request in stub.requests] == ["/api/event"]


async def test_a_full_url_as_the_path_stays_on_the_configured_host(
    clean_db: Db, api_for: Apis, stub: LoopbackService
) -> None:
    await api_for().get("https://evil.stub.test/api/event")
    assert [request.path for request in stub.requests] == ["/https://evil.stub.test/api/event"]


async def test_a_redirect_away_from_the_posthog_host_loses_the_key(
    clean_db: Db, api_for: Apis, stub: LoopbackService
) -> None:
    with LoopbackService(lambda _: (307, b""), {"Location": f"{stub.url}/landed"}) as posthog:
        await api_for(default_host=posthog.url).post("/api/event", {"data": {"a": 1}})

    [asked] = posthog.requests
    [landed] = stub.requests
    assert asked.headers["authorization"].startswith("Bearer phx_")
    assert landed.path == "/landed" and "authorization" not in landed.headers


# ---------------------------------------------------------------- the bot user's key


async def test_without_keys_the_team_token_and_a_bot_users_key_are_used(
    clean_db: Db, team: CreatedTeam, counted: Counted, api_for: Apis, stub: LoopbackService
) -> None:
    pool, statements = counted
    api_for = replace(api_for, pool=pool)
    keys = PersonalApiKeys(pool)
    api = api_for(keys)

    await api.get("/api/event", {"data": {"limit": 1}})
    [bot] = bot_users(clean_db)
    assert bot["email"].endswith("@posthogbot.user")
    assert bot["organization_id"] == team.organization_id
    assert bot["label"] == "autogen" and bot["value"].startswith("phx_")
    [request] = stub.requests
    assert request.query == {"limit": "1", "token": team.api_token}
    assert request.headers["authorization"] == f"Bearer {bot['value']}"

    # The key is cached: later calls neither query nor create anything.
    statements.clear()
    await api.post("/api/event", {"data": {"x": 1}})
    await api_for(keys).delete("/api/event")
    assert statements == []
    assert {request.headers["authorization"] for request in stub.requests} == {f"Bearer {bot['value']}"}

    # Another worker (its own cache) finds the same bot user and key in the database.
    await api_for().get("/api/event")
    assert bot_users(clean_db) == [bot]
    assert stub.requests[-1].headers["authorization"] == f"Bearer {bot['value']}"


async def test_each_organization_gets_its_own_bot_user(
    clean_db: Db, team: CreatedTeam, pool: AsyncConnectionPool[Any], api_for: Apis, stub: LoopbackService
) -> None:
    other = create_organization_and_team(clean_db, organization_name="Other", team_name="Other project")
    keys = PersonalApiKeys(pool)

    await api_for(keys).get("/api/event")
    await api_for(keys, other).get("/api/event")
    await api_for(keys).get("/api/event")

    bots = bot_users(clean_db)
    assert [bot["organization_id"] for bot in bots] == [team.organization_id, other.organization_id]
    assert bots[0]["value"] != bots[1]["value"]
    assert [(request.query["token"], request.headers["authorization"]) for request in stub.requests] == [
        (team.api_token, f"Bearer {bots[0]['value']}"),
        (other.api_token, f"Bearer {bots[1]['value']}"),
        (team.api_token, f"Bearer {bots[0]['value']}"),
    ]


# ---------------------------------------------------------------- posthog.capture


async def captured(aredis: aioredis.Redis) -> dict[str, Any]:
    """The event of the one Celery message on the queue."""
    assert await aredis.llen(QUEUE) == 1
    message = await aredis.rpop(QUEUE)
    assert message is not None
    task = decode_message(message)
    assert task.name == PROCESS_EVENT_TASK
    return event_from_task(task)


async def test_capture_queues_a_celery_task_with_the_event(aredis: aioredis.Redis) -> None:
    enqueuer = CeleryEnqueuer(aredis, QUEUE)
    capture = PostHogCapture(team_id=7, plugin_name="my plugin", plugin_id=3, enqueuer=enqueuer)

    await capture.capture("hello", {"distinct_id": "someone", "answer": 42})
    event = await captured(aredis)
    assert (event["event"], event["distinct_id"], event["team_id"]) == ("hello", "someone", 7)
    assert event["properties"]["$lib"] == "posthog-plugin-server"
    assert event["properties"]["answer"] == 42
    assert event["properties"]["distinct_id"] == "someone"
    assert event["uuid"] and event["timestamp"]

    await capture.capture("no distinct id", {"timestamp": "2021-01-01T00:00:00Z"})
    event = await captured(aredis)
    assert (event["distinct_id"], event["team_id"]) == ("my plugin", 7)
    assert event["timestamp"] == "2021-01-01T00:00:00Z"
    assert "timestamp" not in event["properties"]

    nameless = PostHogCapture(team_id=7, plugin_name="", plugin_id=3, enqueuer=enqueuer)
    await nameless.capture("no name")
    assert (await captured(aredis))["distinct_id"] == "plugin-id-3"


async def test_concurrent_first_calls_create_one_bot_user(
    clean_db: Db, api_for: Apis, stub: LoopbackService
) -> None:
    """In one worker (parallel onEvent calls) and across workers (each with its own cache)."""
    one_worker, other_worker = api_for(), api_for()

    await asyncio.gather(*(api.get("/api/event") for api in [one_worker] * 3 + [other_worker] * 3))

    [bot] = bot_users(clean_db)
    assert {request.headers["authorization"] for request in stub.requests} == {f"Bearer {bot['value']}"}


async def test_capture_goes_through_the_servers_enqueuer_to_kafka_when_enabled(
    aredis: aioredis.Redis, kafka: str
) -> None:
    """With KAFKA_ENABLED a plugin's event is on the ingestion topic, like capture's, not on the list."""
    topic = unique_topic("plugin_capture")
    settings = load_settings(
        {}, KAFKA_ENABLED=True, KAFKA_HOSTS=kafka, KAFKA_CONSUMPTION_TOPIC=topic, KAFKA_FLUSH_FREQUENCY_MS=5
    )
    enqueuer = open_enqueuer(settings, aredis)
    try:
        await PostHogCapture(team_id=7, plugin_name="p", plugin_id=3, enqueuer=enqueuer).capture(
            "hi", {"a": 1}
        )
    finally:
        await enqueuer.close()
    (message,) = read_topic(kafka, topic, 1)
    value = json.loads(message.value() or b"")
    assert (value["team_id"], value["distinct_id"], json.loads(value["data"])["event"]) == (7, "p", "hi")
    assert await aredis.llen(QUEUE) == 0
