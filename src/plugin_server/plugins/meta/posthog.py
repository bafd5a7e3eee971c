"""`posthog.capture` (events back into the ingestion queue) and `posthog.api` (PostHog's HTTP API)."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from psycopg_pool import AsyncConnectionPool

from plugin_server import __version__
from plugin_server.ingestion.enqueue import CapturedEvent, EventEnqueuer
from plugin_server.ingestion.uuidt import uuidt
from plugin_server.plugins.meta.network import fetch_failed
from plugin_server.plugins.models import PluginConfigInForce

BOT_EMAIL_DOMAIN = "posthogbot.user"
KEY_CACHE_SECONDS = 30.0

DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: httpx.URL) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL, with the scheme's default port filled in."""
    return url.scheme, url.host, url.port or DEFAULT_PORTS.get(url.scheme, 0)


class PostHogCapture:
    """`posthog.capture(event, properties)`: the event enters ingestion like any other (plugins
    included), through the server's one enqueuer (the Celery list, or the Kafka topic with
    KAFKA_ENABLED), as the config's team's."""

    def __init__(self, *, team_id: int, plugin_name: str, plugin_id: int, enqueuer: EventEnqueuer) -> None:
        self._team_id = team_id
        self._default_distinct_id = plugin_name or f"plugin-id-{plugin_id}"
        self._enqueuer = enqueuer

    async def capture(self, event: str, properties: dict[str, Any] | None = None) -> None:
        if not isinstance(event, str) or not event:
            raise TypeError("posthog.capture needs an event name")
        others = dict(properties or {})
        timestamp = others.pop("timestamp", None) or datetime.now(UTC).isoformat().replace("+00:00", "Z")
        distinct_id = others.pop("distinct_id", None) or self._default_distinct_id
        event_uuid = uuidt()
        data = {
            "event": event,
            "timestamp": timestamp,
            "properties": {
                "$lib": "posthog-plugin-server",
                "$lib_version": __version__,
                "distinct_id": distinct_id,
                **others,
            },
            "uuid": event_uuid,
        }
        captured = CapturedEvent(
            distinct_id=str(distinct_id),
            ip=None,
            site_url=None,
            data=data,
            team_id=self._team_id,
            now=timestamp,
            sent_at=timestamp,
            uuid=event_uuid,
        )
        await self._enqueuer.enqueue([captured])


def plugin_capture(config: PluginConfigInForce, enqueuer: EventEnqueuer) -> PostHogCapture:
    """`posthog.capture` for a plugin config: its events enter ingestion as its team's."""
    return PostHogCapture(
        team_id=config.config.team_id or 0,
        plugin_name=config.plugin.name,
        plugin_id=config.plugin.id,
        enqueuer=enqueuer,
    )


class PersonalApiKeys:
    """The personal API key that `posthog.api` uses when a plugin gives none: one bot user per
    organization (`<random>@posthogbot.user`) with an `autogen` key, created on first use."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self._pool = pool
        self._cache: dict[str, tuple[str, float]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def for_organization(self, organization_id: str) -> str:
        key = self._cached(organization_id)
        if key is not None:
            return key
        # Concurrent first calls (onEvent runs in parallel) must not each create a bot user: one
        # lookup per organization at a time here, and across processes the advisory lock below.
        async with self._locks.setdefault(organization_id, asyncio.Lock()):
            key = self._cached(organization_id) or await self._find_or_create(organization_id)
        return key

    def _cached(self, organization_id: str) -> str | None:
        cached = self._cache.get(organization_id)
        if cached and time.monotonic() - cached[1] < KEY_CACHE_SECONDS:
            return cached[0]
        return None

    async def _find_or_create(self, organization_id: str) -> str:
        async with self._pool.connection() as connection, connection.transaction():
            await connection.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"plugin-server:bot-user:{organization_id}",)
            )
            cursor = await connection.execute(
                """SELECT u.id, k.value FROM posthog_user u
                   JOIN posthog_organizationmembership m ON m.user_id = u.id AND m.organization_id = %s
                   LEFT JOIN posthog_personalapikey k ON k.user_id = u.id
                   WHERE u.email LIKE %s ORDER BY u.id LIMIT 1""",
                (organization_id, f"%@{BOT_EMAIL_DOMAIN}"),
            )
            row = await cursor.fetchone()
            user_id = row["id"] if row else await self._create_bot(connection, organization_id)
            key = row["value"] if row and row["value"] else await self._create_key(connection, user_id)
        self._cache[organization_id] = (key, time.monotonic())
        return key

    async def _create_bot(self, connection: Any, organization_id: str) -> int:
        cursor = await connection.execute(
            """INSERT INTO posthog_user (uuid, password, first_name, email, distinct_id)
               VALUES (%s, %s, 'Plugins API User [Bot]', %s, %s) RETURNING id""",
            (
                str(uuid.uuid4()),
                secrets.token_hex(16),
                f"{secrets.randbelow(10**8)}@{BOT_EMAIL_DOMAIN}",
                secrets.token_hex(16),
            ),
        )
        user_id: int = (await cursor.fetchone())["id"]
        await connection.execute(
            "INSERT INTO posthog_organizationmembership (id, organization_id, user_id, level) VALUES (%s, %s, %s, 1)",
            (str(uuid.uuid4()), organization_id, user_id),
        )
        return user_id

    async def _create_key(self, connection: Any, user_id: int) -> str:
        value = f"phx_{secrets.token_hex(16)}"
        await connection.execute(
            "INSERT INTO posthog_personalapikey (id, user_id, label, value) VALUES (%s, %s, 'autogen', %s)",
            (secrets.token_hex(16), user_id, value),
        )
        return value


class PostHogApi:
    """`posthog.api.get/post/put/delete(path, {data, host, projectApiKey, personalApiKey})`.

    Without keys it sends the team's token and the organization's bot key, and then only to the
    configured PostHog host (`default_host`, POSTHOG_API_HOST): a plugin may name another `host` only
    with keys of its own. Cross-origin redirects lose the Authorization header (httpx drops it).
    """

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        keys: PersonalApiKeys,
        team_api_token: str,
        organization_id: str,
        default_host: str,
    ) -> None:
        self._http = http
        self._keys = keys
        self._team_api_token = team_api_token
        self._organization_id = organization_id
        self._default_host = default_host
        self._origin = origin(httpx.URL(default_host))

    async def get(self, path: str, options: dict[str, Any] | None = None) -> httpx.Response:
        return await self._request("GET", path, options)

    async def post(self, path: str, options: dict[str, Any] | None = None) -> httpx.Response:
        return await self._request("POST", path, options)

    async def put(self, path: str, options: dict[str, Any] | None = None) -> httpx.Response:
        return await self._request("PUT", path, options)

    async def delete(self, path: str, options: dict[str, Any] | None = None) -> httpx.Response:
        return await self._request("DELETE", path, options)

    async def _request(self, method: str, path: str, options: dict[str, Any] | None) -> httpx.Response:
        options = options or {}
        project_key, personal_key = options.get("projectApiKey"), options.get("personalApiKey")
        if bool(project_key) != bool(personal_key):
            raise ValueError(
                "You must specify a personalApiKey if you specify a projectApiKey and vice-versa!"
            )
        host = str(options.get("host") or self._default_host).rstrip("/")
        url = httpx.URL(f"{host}/{path.lstrip('/')}")
        if not project_key:
            if origin(url) != self._origin:
                raise ValueError(
                    f"posthog.api sends the organization's API key only to {self._default_host} "
                    f"(POSTHOG_API_HOST), not to {url.scheme}://{url.netloc.decode('ascii')}; "
                    "pass projectApiKey and personalApiKey to call another host"
                )
            project_key = self._team_api_token
            personal_key = await self._keys.for_organization(self._organization_id)
        data = options.get("data") or {}
        # GET and DELETE send data as query parameters (the original dropped it for DELETE: a bug).
        params = {**data, "token": project_key} if method in ("GET", "DELETE") else {"token": project_key}
        body = None if method in ("GET", "DELETE") else orjson.dumps(data)
        try:
            return await self._http.request(
                method,
                url,
                params=params,
                content=body,
                headers={"Authorization": f"Bearer {personal_key}", "Content-Type": "application/json"},
            )
        except httpx.HTTPError as error:
            raise fetch_failed(str(url), error) from None
