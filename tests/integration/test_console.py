"""The operator's console (/console) over HTTP on the real Postgres and Redis: login, session cookie,
CSRF, and each page doing its job. The browser test (tests/e2e/test_console_browser.py) drives it in
Chromium."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from plugin_server.config import Settings, load_settings
from plugin_server.db.teams import CreatedTeam
from plugin_server.ingestion.celery import PROCESS_EVENT_TASK, encode_task
from plugin_server.ingestion.enqueue import open_enqueuer
from plugin_server.ingestion.redis_queue import ReliableQueue
from plugin_server.plugins.archive import pack_zip, read_folder
from plugin_server.topology import open_reads
from plugin_server.web.app import create_app
from plugin_server.web.console.auth import SESSION_COOKIE, new_session_cookie, read_session
from plugin_server.web.context import WebContext

Db = psycopg.Connection[Any]
TOKEN = "console-admin-token"
QUEUE = "posthog-plugins"
PLUGINS = Path(__file__).parents[1] / "assets" / "plugins"
SCHEMA = [
    {"key": "greeting", "name": "Greeting", "type": "string", "default": "hello"},
    {"key": "mode", "name": "Mode", "type": "choice", "choices": ["fast", "careful"], "required": True},
    {"key": "mapping", "name": "Mapping", "type": "json"},
    {"key": "api_key", "name": "API key", "type": "string", "secret": True, "required": True},
    {"key": "words", "name": "Words", "type": "attachment"},
]


@pytest.fixture
async def client_for(
    pool: AsyncConnectionPool[Any], aredis: aioredis.Redis, database_url: str
) -> AsyncIterator[Any]:
    """Makes an HTTP client of the whole web app (as served), on the test database and Redis."""
    async with contextlib.AsyncExitStack() as clients:

        async def make(settings: Settings) -> httpx.AsyncClient:
            reads = await clients.enter_async_context(open_reads(settings, database_url))
            app = create_app(WebContext(settings, pool, aredis, open_enqueuer(settings, aredis), reads=reads))
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://console.test")
            return await clients.enter_async_context(client)

        yield make


@pytest.fixture
async def anonymous(client_for: Any, team: CreatedTeam) -> httpx.AsyncClient:
    client: httpx.AsyncClient = await client_for(load_settings({}, ADMIN_TOKEN=TOKEN))
    return client


@pytest.fixture
async def console(anonymous: httpx.AsyncClient) -> httpx.AsyncClient:
    """A logged-in client; its `csrf` header is the session's token, as htmx sends it."""
    answer = await anonymous.post("/console/login", data={"token": TOKEN, "next": "/console/teams"})
    assert answer.status_code == 303, answer.text
    page = await anonymous.get("/console/teams")
    anonymous.headers["X-CSRF-Token"] = csrf_of(page.text)
    return anonymous


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


async def test_console_is_off_without_admin_token_and_absent_when_disabled(client_for: Any) -> None:
    off = await client_for(load_settings({}))
    answer = await off.get("/console/login")
    assert answer.status_code == 403
    assert "Set <code>ADMIN_TOKEN</code>" in answer.text
    assert (await off.get("/console/")).status_code == 403

    disabled = await client_for(load_settings({}, ADMIN_TOKEN=TOKEN, CONSOLE_ENABLED="false"))
    assert (await disabled.get("/console/login")).status_code == 404
    assert (await disabled.get("/console/static/htmx.min.js")).status_code == 404


async def test_login_sets_a_strict_http_only_session_cookie(anonymous: httpx.AsyncClient) -> None:
    answer = await anonymous.get("/console/plugins")
    assert (answer.status_code, answer.headers["location"]) == (303, "/console/login?next=/console/plugins")
    htmx = await anonymous.get("/console/plugins", headers={"HX-Request": "true"})
    assert (htmx.status_code, htmx.headers["hx-redirect"]) == (401, "/console/login?next=/console/plugins")

    started = time.monotonic()
    wrong = await anonymous.post("/console/login", data={"token": "guess", "next": "/console/plugins"})
    assert time.monotonic() - started >= 1  # one guess a second
    assert wrong.status_code == 401
    assert "That is not the admin token" in wrong.text
    assert SESSION_COOKIE not in wrong.cookies

    # `next` may only lead within the console
    elsewhere = await anonymous.post("/console/login", data={"token": TOKEN, "next": "//evil.example/x"})
    assert elsewhere.headers["location"] == "/console/"
    answer = await anonymous.post("/console/login", data={"token": TOKEN, "next": "/console/plugins"})
    assert (answer.status_code, answer.headers["location"]) == (303, "/console/plugins")
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    for attribute in ("HttpOnly", "SameSite=strict", "Path=/console", "Max-Age=43200"):
        assert attribute.lower() in cookie.lower()
    page = await anonymous.get("/console/plugins")
    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"

    logout = await anonymous.post("/console/logout", data={"csrf_token": csrf_of(page.text)})
    assert logout.status_code == 303
    assert (await anonymous.get("/console/plugins")).status_code == 303


def test_session_cookie_is_signed_by_the_admin_token_and_expires() -> None:
    cookie = new_session_cookie(TOKEN, now=1_000_000)
    session = read_session(TOKEN, cookie, now=1_000_000 + 60)
    assert session is not None
    assert read_session("another-token", cookie, now=1_000_060) is None  # a changed ADMIN_TOKEN ends it
    assert read_session(TOKEN, cookie, now=1_000_000 + 12 * 3600) is None  # expired
    issued, nonce, signature = cookie.split(".")
    assert read_session(TOKEN, f"{int(issued) + 100}.{nonce}.{signature}", now=1_000_060) is None
    assert read_session(TOKEN, "garbage", now=1_000_060) is None
    other = read_session(TOKEN, new_session_cookie(TOKEN, now=1_000_000), now=1_000_060)
    assert other is not None and other.csrf_token != session.csrf_token


async def test_changes_need_the_csrf_token(console: httpx.AsyncClient, clean_db: Db) -> None:
    token = console.headers.pop("X-CSRF-Token")
    refused = await console.post("/console/teams", data={"name": "Sneaky"})
    assert refused.status_code == 403
    refused = await console.post("/console/teams", data={"name": "Sneaky", "csrf_token": "forged"})
    assert refused.status_code == 403
    assert clean_db.execute("SELECT count(*) FROM posthog_team").fetchone() == (1,)

    answer = await console.post("/console/teams", data={"name": "Web shop", "csrf_token": token})
    assert (answer.status_code, answer.headers["location"]) == (303, "/console/teams")
    page = await console.get("/console/teams")
    assert "created team 3 (Web shop)" in page.text
    assert "created team" not in (await console.get("/console/teams")).text  # the notice shows once
    [(api_token,)] = clean_db.execute("SELECT api_token FROM posthog_team WHERE name = 'Web shop'").fetchall()
    assert f'data-copy="{api_token}"' in page.text


async def test_install_enable_and_configure_from_the_settings_form(
    console: httpx.AsyncClient, clean_db: Db, aredis: aioredis.Redis
) -> None:
    archive = pack_zip(read_folder(PLUGINS / "hello-python"))
    answer = await console.post(
        "/console/plugins/install", data={"how": "archive"}, files={"archive": ("hello-python.zip", archive)}
    )
    assert answer.status_code == 303
    assert "installed hello-python" in (await console.get("/console/plugins")).text
    source = "export function processEvent(event) { return event }"
    answer = await console.post(
        "/console/plugins/install", data={"how": "source", "name": "s", "source": source}
    )
    missing = await console.post("/console/plugins/install", data={"how": "path", "path": "no/such-plugin"})
    assert missing.status_code == 303
    assert "no/such-plugin does not exist" in (await console.get("/console/plugins")).text
    [(plugin_id,)] = clean_db.execute("SELECT id FROM posthog_plugin WHERE name = 's'").fetchall()
    clean_db.execute(
        "UPDATE posthog_plugin SET config_schema = %s WHERE id = %s",
        (psycopg.types.json.Jsonb(SCHEMA), plugin_id),
    )

    async with aredis.pubsub() as reloads:
        await reloads.subscribe("reload-plugins")
        assert (await reloads.get_message(timeout=5))["type"] == "subscribe"  # type: ignore[index]
        answer = await console.post("/console/plugins/enable", data={"plugin_id": plugin_id, "team_id": 2})
        assert answer.status_code == 303
        assert (await reloads.get_message(ignore_subscribe_messages=True, timeout=5))["data"] == b"reload!"  # type: ignore[index]
    where = answer.headers["location"]
    config_id = int(where.rsplit("/", 1)[1])
    page = await console.get(where)
    assert page.status_code == 200
    for shown in (
        'name="greeting" value="hello"',
        '<option value="careful"',
        'name="mapping"',
        'type="password" name="api_key"',
        'type="file" name="words"',
        "secret: unset",
    ):
        assert shown in page.text

    # every problem named at once, nothing stored
    bad = await console.post(
        f"{where}/settings", data={"mode": "reckless", "mapping": "{nope", "api_key": ""}
    )
    notice = (await console.get(where)).text
    assert bad.status_code == 303
    assert "Mode (mode) must be one of fast, careful, not &#39;reckless&#39;" in notice
    assert "Mapping (mapping) is not valid JSON" in notice
    assert "API key (api_key) is required" in notice
    assert clean_db.execute("SELECT config FROM posthog_pluginconfig").fetchone() == ({},)

    good = await console.post(
        f"{where}/settings",
        data={"greeting": "hej", "mode": "fast", "mapping": '{"a": 1}', "api_key": "sk-very-secret"},
        files={"words": ("words.txt", b"one\ntwo")},
    )
    assert good.status_code == 303
    page = (await console.get(where)).text
    assert "settings saved" in page
    assert "sk-very-secret" not in page  # a secret is never sent back
    assert "secret: set" in page
    assert "stored: words.txt (7 bytes)" in page
    # an empty secret box keeps the secret
    await console.post(f"{where}/settings", data={"greeting": "hi", "mode": "careful", "api_key": ""})
    [(config,)] = clean_db.execute(
        "SELECT config FROM posthog_pluginconfig WHERE id = %s", (config_id,)
    ).fetchall()
    assert config == {"greeting": "hi", "mode": "careful", "mapping": '{"a": 1}', "api_key": "sk-very-secret"}
    assert clean_db.execute("SELECT key, contents FROM posthog_pluginattachment").fetchall() == [
        ("words", b"one\ntwo")
    ]

    # the operator API and the CLI list the secret as set, not its value
    listed = await console.get("/api/admin/plugins", headers={"Authorization": f"Bearer {TOKEN}"})
    [listed_config] = next(plugin for plugin in listed.json() if plugin["id"] == plugin_id)["configs"]
    assert listed_config["config"]["api_key"] == "(set)"
    assert listed_config["config"]["greeting"] == "hi"

    await console.post(f"{where}/state", data={"enabled": "false"})
    await console.post(f"{where}/state", data={"order": "7", "back": "/console/plugins"})
    assert clean_db.execute('SELECT enabled, "order" FROM posthog_pluginconfig').fetchone() == (False, 7)
    assert "disabled" in (await console.get(where)).text


async def test_config_page_shows_the_last_error_and_filters_the_log(
    console: httpx.AsyncClient, clean_db: Db
) -> None:
    source = "export function processEvent(event) { return event }"
    await console.post("/console/plugins/install", data={"how": "source", "name": "s", "source": source})
    answer = await console.post("/console/plugins/enable", data={"plugin_id": 1, "team_id": 2})
    where = answer.headers["location"]
    error = {
        "message": "boom",
        "time": "2026-01-01T00:00:00Z",
        "name": "TypeError",
        "stack": "TypeError: boom\n    at processEvent (index.js:3:7)",
    }
    clean_db.execute("UPDATE posthog_pluginconfig SET error = %s", (psycopg.types.json.Jsonb(error),))
    lines = [
        ("INFO", "started"),
        ("ERROR", "could not reach the webhook"),
        ("LOG", "sent 3 events"),
        ("ERROR", "100% broken"),
    ]
    for second, (kind, message) in enumerate(lines):
        clean_db.execute(
            """INSERT INTO posthog_pluginlogentry (id, team_id, plugin_id, plugin_config_id, timestamp, source,
                   type, message, instance_id)
               VALUES (gen_random_uuid(), 2, 1, 1, %s, 'CONSOLE', %s, %s, gen_random_uuid())""",
            (datetime(2026, 1, 1, 0, 0, second, tzinfo=UTC), kind, message),
        )
    page = (await console.get(where)).text
    assert "TypeError</b>: boom" in page
    assert "at processEvent (index.js:3:7)" in page

    def messages(html: str) -> list[str]:
        return re.findall(r'<span class="message">([^<]*)</span>', html)

    logs = f"{where}/logs"
    assert messages((await console.get(logs)).text) == [message for _, message in lines]
    errors = (await console.get(logs, params={"level": "ERROR"})).text
    assert messages(errors) == ["could not reach the webhook", "100% broken"]
    assert messages((await console.get(logs, params={"q": "WEBHOOK"})).text) == [
        "could not reach the webhook"
    ]
    assert messages((await console.get(logs, params={"q": "0%"})).text) == ["100% broken"]  # % is literal
    # the follower asks for what comes after the last line shown, with the same filters
    follow = re.search(r'hx-get="([^"]+)"', errors)
    assert follow
    url = follow.group(1).replace("&amp;", "&")
    assert "level=ERROR" in url
    assert messages((await console.get(url)).text) == []
    clean_db.execute(
        """INSERT INTO posthog_pluginlogentry (id, team_id, plugin_id, plugin_config_id, timestamp, source,
               type, message, instance_id)
           VALUES (gen_random_uuid(), 2, 1, 1, now(), 'CONSOLE', 'ERROR', 'new failure', gen_random_uuid())"""
    )
    assert messages((await console.get(url)).text) == ["new failure"]
    assert (await console.get(logs, params={"after": "nope"})).status_code == 400


async def test_status_decodes_dead_letters_and_replays_them(
    console: httpx.AsyncClient, aredis: aioredis.Redis
) -> None:
    data = '{"event": "signed up", "properties": {"plan": "pro"}}'
    message = encode_task(
        PROCESS_EVENT_TASK,
        ["user-7", "1.2.3.4", "http://x", data, 2, "2026-01-01T00:00:00Z", None],
        queue=QUEUE,
    )
    await aredis.lpush(QUEUE, message, b"not a message")
    queue = ReliableQueue(aredis, QUEUE, "c1", visibility_timeout=30)
    batch = await queue.claim(10, 0)
    assert batch is not None
    await queue.ack(batch, [(raw, "team 2 is gone") for raw in batch.messages])

    page = (await console.get("/console/")).text
    assert "<b>signed up</b> from <code>user-7</code> (team 2)" in page
    assert "&#34;plan&#34;: &#34;pro&#34;" in page
    assert "unreadable message" in page and "not a message" in page
    assert "team 2 is gone" in page
    assert re.search(r'<p class="big">2</p><p class="hint">stored</p>', page)

    answer = await console.post("/console/dead-letters/replay", data={"limit": "1"})
    assert answer.status_code == 303
    assert "1 dead letters put back on the queue" in (await console.get("/console/")).text
    await console.post("/console/dead-letters/replay", data={"limit": ""})
    assert await aredis.llen(f"{QUEUE}:dead-letter") == 0
    assert await aredis.lrange(QUEUE, 0, -1) == [b"not a message", message]

    live = await console.get("/console/status/live")
    assert 'id="queue-depth">2<' in live.text
    series = (await console.get("/console/series", params={"plugin_config_id": 1})).json()
    assert set(series) >= {"t", "received_per_s", "ingested_per_s", "queue_depth", "calls_per_s", "mean_ms"}


async def test_team_page_shows_events_and_persons_searchable_by_distinct_id(
    console: httpx.AsyncClient, clean_db: Db
) -> None:
    for distinct_id, event in (("alice", "$pageview"), ("bob", "signed up"), ("al_x", "bought")):
        person = clean_db.execute(
            "INSERT INTO posthog_person (team_id, uuid, properties) VALUES (2, gen_random_uuid(), %s) RETURNING id",
            (psycopg.types.json.Jsonb({"name": distinct_id}),),
        ).fetchone()
        assert person is not None
        clean_db.execute(
            "INSERT INTO posthog_persondistinctid (team_id, person_id, distinct_id) VALUES (2, %s, %s)",
            (person[0], distinct_id),
        )
        clean_db.execute(
            "INSERT INTO posthog_event (team_id, event, distinct_id, properties) VALUES (2, %s, %s, '{}')",
            (event, distinct_id),
        )
    page = (await console.get("/console/teams/2")).text
    for shown in (
        "<b>$pageview</b>",
        "<b>signed up</b>",
        "<code>bob</code>",
        "&#34;name&#34;: &#34;alice&#34;",
    ):
        assert shown in page
    found = (
        await console.get("/console/teams/2", params={"distinct_id": "al_"}, headers={"HX-Request": "true"})
    ).text
    assert "<b>bought</b>" in found and "<b>$pageview</b>" not in found  # _ is literal, a prefix match
    assert "<html" not in found  # a fragment for htmx
    assert (await console.get("/console/teams/99")).status_code == 404


async def test_docs_and_redoc_load_their_assets_from_the_server(anonymous: httpx.AsyncClient) -> None:
    for page, assets in (
        ("/docs", ("swagger-ui-bundle.js", "swagger-ui.css")),
        ("/redoc", ("redoc.standalone.js",)),
    ):
        html = (await anonymous.get(page)).text
        assert "cdn." not in html and "fonts.googleapis" not in html
        for asset in assets:
            assert f'"/docs-assets/{asset}"' in html
            served = await anonymous.get(f"/docs-assets/{asset}")
            assert served.status_code == 200 and len(served.content) > 100_000
    for asset in ("htmx.min.js", "uPlot.iife.min.js", "uPlot.min.css", "console.js", "console.css"):
        assert (await anonymous.get(f"/console/static/{asset}")).status_code == 200
