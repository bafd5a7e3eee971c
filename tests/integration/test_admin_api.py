"""The operator API (/api/admin) on the real Postgres and Redis, and a real server picking up its changes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI
from psycopg_pool import AsyncConnectionPool

from plugin_server.config import Settings, load_settings
from plugin_server.db.teams import CreatedTeam
from plugin_server.ingestion.enqueue import open_enqueuer
from plugin_server.ingestion.redis_queue import ReliableQueue
from plugin_server.ingestion.uuidt import uuidt
from plugin_server.plugins.archive import pack_zip, read_folder
from plugin_server.reads.postgres import postgres_reads
from plugin_server.web.admin import include_operator_api
from plugin_server.web.context import WebContext
from tests.e2e.server import celery_app, running_server, send_event, wait_for_count
from tests.loopback import LoopbackService

Db = psycopg.Connection[Any]
TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PLUGINS = Path(__file__).parents[1] / "assets" / "plugins"
QUEUE = "posthog-plugins"
SOURCE_PLUGIN = "function processEvent(event) { event.properties.from_source = true; return event }"

# Every route, with a body that would be valid, so that only the token decides the answer.
ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/api/admin/plugins", {}),
    ("POST", "/api/admin/plugins", {"json": {"source": SOURCE_PLUGIN, "name": "s"}}),
    ("POST", "/api/admin/plugins/archive", {"files": {"archive": ("p.zip", b"zip")}}),
    ("POST", "/api/admin/plugin-configs", {"json": {"plugin": "s", "team_id": 2}}),
    ("PATCH", "/api/admin/plugin-configs/1", {"json": {"enabled": False}}),
    ("PUT", "/api/admin/plugin-configs/1/attachments/words", {"files": {"file": ("w.txt", b"w")}}),
    ("GET", "/api/admin/plugin-configs/1/logs", {}),
    ("GET", "/api/admin/dead-letters", {}),
    ("POST", "/api/admin/dead-letters/replay", {"json": {}}),
    ("POST", "/api/admin/reload", {}),
]


def settings(**overrides: Any) -> Settings:
    return load_settings({}, ADMIN_TOKEN=TOKEN, **overrides)


@pytest.fixture
async def client_for(
    pool: AsyncConnectionPool[Any], aredis: aioredis.Redis, database_url: str
) -> AsyncIterator[Any]:
    """Makes an HTTP client of an app with the admin router, on the test database and Redis."""
    clients: list[httpx.AsyncClient] = []

    def make(app_settings: Settings) -> httpx.AsyncClient:
        app = FastAPI()
        app.state.context = WebContext(
            settings=app_settings,
            pool=pool,
            redis=aredis,
            enqueuer=open_enqueuer(app_settings, aredis),
            reads=postgres_reads(database_url),
        )
        include_operator_api(app, app_settings)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin")
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
async def api(client_for: Any, team: CreatedTeam) -> httpx.AsyncClient:
    client: httpx.AsyncClient = client_for(settings())
    return client


@pytest.fixture
async def reloads(aredis: aioredis.Redis) -> AsyncIterator[aioredis.client.PubSub]:
    """A subscriber to the reload channel, like a running worker."""
    async with aredis.pubsub() as pubsub:
        await pubsub.subscribe("reload-plugins")
        assert (await pubsub.get_message(timeout=5))["type"] == "subscribe"  # type: ignore[index]
        yield pubsub


async def reload_messages(pubsub: aioredis.client.PubSub) -> list[bytes]:
    messages = []
    while message := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2):
        messages.append(message["data"])
    return messages


def zipped(name: str) -> bytes:
    return pack_zip(read_folder(PLUGINS / name))


async def upload(api: httpx.AsyncClient, name: str = "hello-python") -> dict[str, Any]:
    answer = await api.post(
        "/api/admin/plugins/archive",
        files={"archive": (f"{name}.zip", zipped(name), "application/zip")},
        headers=AUTH,
    )
    assert answer.status_code == 201, answer.text
    plugin: dict[str, Any] = answer.json()
    return plugin


async def enable(api: httpx.AsyncClient, plugin: str, **body: Any) -> dict[str, Any]:
    answer = await api.post(
        "/api/admin/plugin-configs", json={"plugin": plugin, "team_id": 2, **body}, headers=AUTH
    )
    assert answer.status_code == 200, answer.text
    config: dict[str, Any] = answer.json()
    return config


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}],
    ids=["no token", "wrong token", "other scheme", "no scheme"],
)
async def test_every_route_refuses_a_missing_or_wrong_token(
    api: httpx.AsyncClient, method: str, path: str, body: dict[str, Any], headers: dict[str, str]
) -> None:
    answer = await api.request(method, path, headers=headers, **body)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer <ADMIN_TOKEN>" in answer.json()["detail"]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
async def test_without_admin_token_setting_the_api_is_off(
    client_for: Any, method: str, path: str, body: dict[str, Any]
) -> None:
    for token in (None, ""):
        api = client_for(load_settings({}, ADMIN_TOKEN=token))
        answer = await api.request(method, path, headers=AUTH, **body)
        assert answer.status_code == 403
        assert answer.json() == {"detail": "the operator API is off: set ADMIN_TOKEN to turn it on"}


async def test_install_archive_enable_configure_and_list(
    api: httpx.AsyncClient, clean_db: Db, reloads: aioredis.client.PubSub
) -> None:
    plugin = await upload(api)
    assert plugin["name"] == "hello-python"
    assert (plugin["origin"], plugin["configs"], plugin["error"]) == ("archive", [], None)
    assert await reload_messages(reloads) == [b"reload!"]

    config = await enable(api, "hello-python", config={"greeting": "hej"}, order=3)
    assert (config["enabled"], config["order"], config["config"]) == (True, 3, {"greeting": "hej"})
    assert await reload_messages(reloads) == [b"reload!"]

    patch = {"enabled": False, "config": {"extra": "x"}, "order": 1}
    answer = await api.patch(f"/api/admin/plugin-configs/{config['id']}", json=patch, headers=AUTH)
    assert answer.status_code == 200, answer.text
    changed = answer.json()
    assert (changed["enabled"], changed["order"]) == (False, 1)
    assert changed["config"] == {"greeting": "hej", "extra": "x"}  # merged, as the CLI does
    assert await reload_messages(reloads) == [b"reload!"]
    answer = await api.patch(
        f"/api/admin/plugin-configs/{config['id']}", json={"enabled": True}, headers=AUTH
    )
    assert (answer.json()["enabled"], answer.json()["order"]) == (True, 1)

    error = {"message": "boom", "time": "2026-01-01T00:00:00Z"}
    clean_db.execute(
        "UPDATE posthog_pluginconfig SET error = %s WHERE id = %s", (json.dumps(error), config["id"])
    )
    answer = await api.get("/api/admin/plugins", headers=AUTH)
    assert answer.status_code == 200
    [listed] = answer.json()
    assert (listed["id"], listed["name"], listed["origin"]) == (plugin["id"], "hello-python", "archive")
    [listed_config] = listed["configs"]
    assert listed_config["id"] == config["id"]
    assert listed_config["error"] == error
    assert listed_config["config"] == {"greeting": "hej", "extra": "x"}
    stored = clean_db.execute("SELECT enabled, config FROM posthog_pluginconfig").fetchall()
    assert stored == [(True, {"greeting": "hej", "extra": "x"})]


async def test_install_from_url_source_and_path(api: httpx.AsyncClient, clean_db: Db, tmp_path: Path) -> None:
    archive = zipped("hello-js")
    with LoopbackService(lambda request: (200, archive)) as service:
        answer = await api.post(
            "/api/admin/plugins", json={"url": f"{service.url}/hello-js.zip"}, headers=AUTH
        )
    assert answer.status_code == 201, answer.text
    assert (answer.json()["name"], answer.json()["origin"]) == ("hello-js", "archive")
    assert [request.path for request in service.requests] == ["/hello-js.zip"]

    answer = await api.post(
        "/api/admin/plugins", json={"source": SOURCE_PLUGIN, "name": "from-source"}, headers=AUTH
    )
    assert answer.status_code == 201, answer.text
    assert (answer.json()["name"], answer.json()["origin"]) == ("from-source", "source")

    folder = PLUGINS / "hello-python"
    answer = await api.post("/api/admin/plugins", json={"path": str(folder), "local": True}, headers=AUTH)
    assert answer.status_code == 201, answer.text
    assert answer.json()["origin"] == f"file:{folder.resolve()}"

    (tmp_path / "archived.zip").write_bytes(zipped("hello-python"))
    answer = await api.post("/api/admin/plugins", json={"path": str(tmp_path / "archived.zip")}, headers=AUTH)
    assert answer.status_code == 201, answer.text
    assert answer.json()["origin"] == "archive"  # same name: replaces the local install's code

    rows = clean_db.execute(
        "SELECT name, plugin_type, url, archive IS NOT NULL, source IS NOT NULL FROM posthog_plugin ORDER BY id"
    ).fetchall()
    assert rows == [
        ("hello-js", "custom", f"{service.url}/hello-js.zip", True, False),
        ("from-source", "source", None, False, True),
        ("hello-python", "custom", None, True, False),
    ]


async def test_bad_install_and_config_requests_are_refused_clearly(
    api: httpx.AsyncClient, clean_db: Db, tmp_path: Path
) -> None:
    both = await api.post(
        "/api/admin/plugins", json={"url": "https://x/p.zip", "source": "s", "name": "n"}, headers=AUTH
    )
    assert both.status_code == 422
    assert "exactly one of url, source and path" in both.text
    nameless = await api.post("/api/admin/plugins", json={"source": SOURCE_PLUGIN}, headers=AUTH)
    assert nameless.status_code == 422
    assert "needs a name" in nameless.text

    broken = await api.post(
        "/api/admin/plugins/archive", files={"archive": ("broken.zip", b"not an archive")}, headers=AUTH
    )
    assert broken.status_code == 400
    assert "is not a loadable plugin" in broken.json()["detail"]
    missing = await api.post("/api/admin/plugins", json={"path": str(tmp_path / "nothing")}, headers=AUTH)
    assert missing.status_code == 404
    with LoopbackService(lambda request: (404, b"{}")) as service:
        gone = await api.post("/api/admin/plugins", json={"url": f"{service.url}/p.zip"}, headers=AUTH)
    assert gone.status_code == 400
    assert "HTTP 404" in gone.json()["detail"]

    unknown_plugin = await api.post(
        "/api/admin/plugin-configs", json={"plugin": "nope", "team_id": 2}, headers=AUTH
    )
    assert (unknown_plugin.status_code, unknown_plugin.json()["detail"]) == (
        404,
        "no plugin 'nope' available to team 2",
    )
    await upload(api)
    unknown_team = await api.post(
        "/api/admin/plugin-configs", json={"plugin": "hello-python", "team_id": 99}, headers=AUTH
    )
    assert (unknown_team.status_code, unknown_team.json()["detail"]) == (404, "no team 99")
    unknown_config = await api.patch("/api/admin/plugin-configs/99", json={"enabled": True}, headers=AUTH)
    assert (unknown_config.status_code, unknown_config.json()["detail"]) == (404, "no plugin config 99")
    assert clean_db.execute("SELECT count(*) FROM posthog_pluginconfig").fetchone() == (0,)


async def test_attachment_upload(api: httpx.AsyncClient, clean_db: Db) -> None:
    await upload(api)
    config = await enable(api, "hello-python")
    path = f"/api/admin/plugin-configs/{config['id']}/attachments/words"
    for contents in (b"first", b"second"):
        answer = await api.put(path, files={"file": ("words.txt", contents, "text/plain")}, headers=AUTH)
        assert answer.status_code == 200, answer.text
    rows = clean_db.execute(
        "SELECT key, content_type, file_name, file_size, contents FROM posthog_pluginattachment"
    ).fetchall()
    assert rows == [("words", "text/plain", "words.txt", 6, b"second")]
    answer = await api.put(
        "/api/admin/plugin-configs/99/attachments/words", files={"file": ("w.txt", b"w")}, headers=AUTH
    )
    assert answer.status_code == 404


async def test_logs_newest_and_after(api: httpx.AsyncClient, clean_db: Db) -> None:
    plugin = await upload(api)
    config = await enable(api, "hello-python")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    ids = [str(uuidt()) for _ in range(5)]
    for number, entry_id in enumerate(ids):
        clean_db.execute(
            """INSERT INTO posthog_pluginlogentry
                   (id, team_id, plugin_id, plugin_config_id, timestamp, source, type, message, instance_id)
               VALUES (%s, 2, %s, %s, %s, 'CONSOLE', 'LOG', %s, %s)""",
            (
                entry_id,
                plugin["id"],
                config["id"],
                start + timedelta(seconds=number),
                f"line {number}",
                ids[0],
            ),
        )
    path = f"/api/admin/plugin-configs/{config['id']}/logs"
    newest = await api.get(path, params={"limit": 2}, headers=AUTH)
    assert newest.status_code == 200
    assert [entry["message"] for entry in newest.json()] == ["line 3", "line 4"]
    assert newest.json()[0]["source"] == "CONSOLE"
    after = await api.get(path, params={"after": ids[1], "limit": 2}, headers=AUTH)
    assert [entry["message"] for entry in after.json()] == ["line 2", "line 3"]
    assert (await api.get(path, params={"after": "nope"}, headers=AUTH)).status_code == 400
    assert (await api.get(path, params={"limit": 0}, headers=AUTH)).status_code == 422
    assert (await api.get("/api/admin/plugin-configs/99/logs", headers=AUTH)).status_code == 404


async def test_dead_letters_list_and_replay(api: httpx.AsyncClient, aredis: aioredis.Redis) -> None:
    await aredis.lpush(QUEUE, b"one", b"two", b"three")
    queue = ReliableQueue(aredis, QUEUE, "c1", visibility_timeout=30)
    batch = await queue.claim(10, 0)
    assert batch is not None
    await queue.ack(batch, [(message, f"bad {message.decode()}") for message in batch.messages])

    answer = await api.get("/api/admin/dead-letters", params={"limit": 2}, headers=AUTH)
    assert answer.status_code == 200
    listed = answer.json()
    assert listed["total"] == 3
    assert [(letter["message"], letter["reason"], letter["consumer"]) for letter in listed["letters"]] == [
        ("three", "bad three", "c1"),
        ("two", "bad two", "c1"),
    ]

    one = await api.post("/api/admin/dead-letters/replay", json={"limit": 1}, headers=AUTH)
    assert one.json() == {"replayed": 1}
    assert await aredis.lrange(QUEUE, 0, -1) == [b"one"]
    rest = await api.post("/api/admin/dead-letters/replay", headers=AUTH)
    assert rest.json() == {"replayed": 2}
    assert await aredis.lrange(QUEUE, 0, -1) == [b"three", b"two", b"one"]  # oldest at the right end
    assert (await api.get("/api/admin/dead-letters", headers=AUTH)).json() == {"total": 0, "letters": []}
    assert (
        await api.post("/api/admin/dead-letters/replay", json={"limit": 0}, headers=AUTH)
    ).status_code == 422


async def test_reload_publishes_to_subscribers(
    api: httpx.AsyncClient, reloads: aioredis.client.PubSub
) -> None:
    answer = await api.post("/api/admin/reload", headers=AUTH)
    assert answer.json() == {"subscribers": 1}
    assert await reload_messages(reloads) == [b"reload!"]


async def test_openapi_page_shows_the_models(api: httpx.AsyncClient) -> None:
    schema = (await api.get("/openapi.json")).json()
    assert {"PluginOut", "PluginConfigOut", "InstallRequest", "ConfigPatch", "DeadLettersOut"} <= set(
        schema["components"]["schemas"]
    )
    assert schema["components"]["securitySchemes"]["ADMIN_TOKEN"]["scheme"] == "bearer"


@pytest.fixture
def server_env(database_url: str, redis_url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "WORKER_CONCURRENCY": "1",
        "DISABLE_WEB": "1",
    }


async def test_an_install_through_the_api_is_picked_up_by_a_running_server(
    api: httpx.AsyncClient,
    aredis: aioredis.Redis,
    clean_db: Db,
    tmp_path: Path,
    server_env: dict[str, str],
    database_url: str,
    redis_url: str,
) -> None:
    """The worker loads no plugin at start; the API's install and enable reach it by the reload message."""
    app = celery_app(redis_url)
    with running_server(tmp_path, server_env) as server:
        await asyncio.to_thread(server.wait_for_log, "plugins loaded: 0 configs")
        async with asyncio.timeout(30):  # the worker listens for reloads
            while not (await aredis.pubsub_numsub("reload-plugins"))[0][1]:
                await asyncio.sleep(0.1)
        await upload(api)
        await enable(api, "hello-python", config={"greeting": "from the api"})
        await asyncio.to_thread(server.wait_for_log, "plugins loaded: 1 configs")
        assert "reloading plugins" in server.log()
        send_event(app, team_id=2, distinct_id="d", event="greeted")
        assert (
            await asyncio.to_thread(wait_for_count, database_url, "SELECT count(*) FROM posthog_event", 1)
            == 1
        )
    [(properties,)] = clean_db.execute("SELECT properties FROM posthog_event").fetchall()
    assert properties["greeting"] == "from the api"


async def test_answers_never_carry_a_secret_setting(
    api: httpx.AsyncClient, clean_db: Db, tmp_path: Path
) -> None:
    folder = tmp_path / "secretive"
    folder.mkdir()
    schema = [{"key": "api_key", "name": "API key", "type": "string", "secret": True}, {"key": "region"}]
    (folder / "plugin.json").write_text(
        json.dumps({"name": "secretive", "main": "index.js", "config": schema})
    )
    (folder / "index.js").write_text("export function processEvent(event) { return event }\n")
    installed = await api.post("/api/admin/plugins", json={"path": str(folder)}, headers=AUTH)
    assert installed.status_code == 201, installed.text
    given = {"plugin": "secretive", "team_id": 2, "config": {"api_key": "sk-secret", "region": "eu"}}
    enabled = await api.post("/api/admin/plugin-configs", json=given, headers=AUTH)
    changed = await api.patch(
        f"/api/admin/plugin-configs/{enabled.json()['id']}",
        json={"config": {"api_key": "sk-other"}},
        headers=AUTH,
    )
    listed = await api.get("/api/admin/plugins", headers=AUTH)
    for answer in (enabled, changed, listed):
        assert answer.status_code == 200, answer.text
        assert "sk-" not in answer.text
    assert enabled.json()["config"] == {"api_key": "(set)", "region": "eu"}
    stored = clean_db.execute("SELECT config FROM posthog_pluginconfig").fetchone()
    assert stored == ({"api_key": "sk-other", "region": "eu"},)  # kept, only not shown
