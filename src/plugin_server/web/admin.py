"""The operator API under /api/admin: the CLI's plugin and dead-letter operations over HTTP.

Every route needs `Authorization: Bearer <ADMIN_TOKEN>`. With ADMIN_TOKEN unset the API is off and
every route answers 403 saying so (not 404, so that a missing setting is not mistaken for a wrong
URL); a missing or wrong token gets 401. Both are answered by `OperatorGate` before any of the body
is read, and an authenticated body larger than ADMIN_MAX_BODY_BYTES gets 413. Changes to plugins
publish the reload message, as the CLI does, so running servers pick them up at once.

The plugin operations are the synchronous functions of `plugins.admin` that the CLI calls; they run
in a thread, on a connection of their own for the request (operator calls are rare, and this keeps
the async pool free for capture). Log entries are read where the workers write them
(`WebContext.reads`: Postgres, or ClickHouse with EVENT_STORE=clickhouse-kafka).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Annotated, Any, Self, TypeVar

import orjson
import psycopg
from fastapi import APIRouter, Depends, FastAPI, File, Form, HTTPException, Query, UploadFile, status
from fastapi import Path as FastApiPath
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, model_validator
from redis.exceptions import RedisError

from plugin_server.config import Settings
from plugin_server.dead_letters import open_dead_letters
from plugin_server.plugins import admin
from plugin_server.plugins.meta.logs import PluginLogEntry
from plugin_server.plugins.models import PluginAttachment
from plugin_server.reads import LogQuery
from plugin_server.web.context import WebContext, get_context
from plugin_server.web.error_answers import answer_errors_safely
from plugin_server.web.operator_gate import OPERATOR_PREFIX, OperatorGate, token_refusal

T = TypeVar("T")
# Ids, team ids and orders are Postgres `integer` columns: a number past them is refused with 422.
DbInt = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
ConfigId = Annotated[int, FastApiPath(ge=1, le=2**31 - 1, description="a plugin config id")]

_bearer = HTTPBearer(auto_error=False, scheme_name="ADMIN_TOKEN", description="the ADMIN_TOKEN setting")


async def require_admin_token(
    context: Annotated[WebContext, Depends(get_context)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """The token check again, for a router included without `OperatorGate` in front (the gate
    already refused what this refuses, before the body was read); it also names the security
    scheme on the OpenAPI page."""
    given = f"Bearer {credentials.credentials}" if credentials else None
    refusal = token_refusal(context.settings.ADMIN_TOKEN, given)
    if refusal is not None:
        code, reason = refusal
        headers = {"WWW-Authenticate": "Bearer"} if code == status.HTTP_401_UNAUTHORIZED else None
        raise HTTPException(code, reason, headers=headers)


router = APIRouter(prefix=OPERATOR_PREFIX, tags=["operator"], dependencies=[Depends(require_admin_token)])
Context = Annotated[WebContext, Depends(get_context)]


def include_operator_api(app: FastAPI, settings: Settings) -> None:
    """Serve the operator API from `app`, behind its gate (token first, body capped), its errors
    answered without echoing what cannot be encoded."""
    app.include_router(router)
    app.add_middleware(OperatorGate, settings=settings)
    answer_errors_safely(app)


# --- answers


class PluginConfigOut(BaseModel):
    """A plugin enabled (or once enabled) for a team."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    team_id: int | None
    plugin_id: int
    enabled: bool
    order: int
    config: dict[str, Any]
    error: Any = Field(
        None, description="the last error of this config (as the PostHog app shows it), or null"
    )
    updated_at: datetime | None


class PluginOut(BaseModel):
    """An installed plugin and its configs by team and order."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    organization_id: str | None
    is_global: bool
    origin: str = Field(description='where the code is: "archive", "source", a `file:` url or a remote url')
    archive_size: int | None
    error: Any = Field(None, description="the plugin's own error (e.g. it could not be loaded), or null")
    updated_at: datetime | None
    configs: list[PluginConfigOut]


class DeadLetterOut(BaseModel):
    reason: str | None = None
    message: str | None = Field(None, description="the queue message as it was received")
    failed_at: str | None = None
    consumer: str | None = None


class DeadLettersOut(BaseModel):
    total: int = Field(description="how many dead letters are stored")
    letters: list[DeadLetterOut] = Field(description="the newest ones, newest first")


class ReplayOut(BaseModel):
    replayed: int


class ReloadOut(BaseModel):
    subscribers: int = Field(description="how many server processes heard the reload message")


# --- requests


class InstallRequest(BaseModel):
    """Exactly one of `url`, `source` (with `name`) or `path`; archives are uploaded to /plugins/archive."""

    url: str | None = Field(None, description="http(s) url of a .zip / .tgz / .tar.gz plugin archive")
    source: str | None = Field(None, description="JavaScript source of a plugin's index.js")
    name: str | None = Field(None, description="plugin name, needed with `source`")
    path: str | None = Field(None, description="plugin folder or archive on the server's disk")
    local: bool = Field(False, description="with `path`: load the folder from there on every reload")
    organization_id: str | None = Field(None, description="needed when there are several organizations")

    @model_validator(mode="after")
    def _one_origin(self) -> Self:
        given = [name for name in ("url", "source", "path") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of url, source and path")
        if self.source is not None and not self.name:
            raise ValueError("a source plugin needs a name")
        if self.local and self.path is None:
            raise ValueError("local applies to a path only")
        return self


class EnableRequest(BaseModel):
    plugin: str = Field(description="plugin id or name")
    team_id: DbInt
    config: dict[str, Any] = Field(default_factory=dict, description="settings, merged into the current ones")
    order: DbInt | None = Field(None, description="position among the team's plugins (lower runs first)")


class ConfigPatch(BaseModel):
    """What to change; what is left out stays as it is."""

    enabled: bool | None = None
    config: dict[str, Any] | None = Field(None, description="settings, merged into the current ones")
    order: DbInt | None = Field(None, description="position among the team's plugins (lower runs first)")


class ReplayRequest(BaseModel):
    limit: int | None = Field(
        None, ge=1, le=2**63 - 1, description="replay at most this many, oldest first; null: all"
    )


# --- plugins


@router.get("/plugins", response_model=list[PluginOut])
async def get_plugins(context: Context) -> list[PluginOut]:
    """Every installed plugin with its configs and their errors."""
    plugins = await _in_database(context, admin.list_plugins)
    return [PluginOut.model_validate(plugin) for plugin in plugins]


@router.post("/plugins", response_model=PluginOut, status_code=status.HTTP_201_CREATED)
async def install(request: InstallRequest, context: Context) -> PluginOut:
    """Install (or replace the code of) a plugin from a url, source text or a path on the server."""

    def run(connection: admin.Connection) -> admin.InstalledPlugin:
        organization = request.organization_id
        if request.url is not None:
            plugin = admin.install_from_url(connection, request.url, organization_id=organization)
        elif request.source is not None:
            assert request.name is not None
            plugin = admin.install_source(
                connection, request.name, request.source, organization_id=organization
            )
        else:
            assert request.path is not None
            path = context.settings.BASE_DIR / request.path
            plugin = admin.install_plugin(connection, path, organization_id=organization, local=request.local)
        return admin.list_plugins(connection, plugin.id)[0]

    return await _changed(context, PluginOut.model_validate(await _in_database(context, run)))


@router.post("/plugins/archive", response_model=PluginOut, status_code=status.HTTP_201_CREATED)
async def install_archive(
    archive: Annotated[UploadFile, File(description="a .zip / .tgz / .tar.gz plugin archive")],
    context: Context,
    organization_id: Annotated[
        str | None, Form(description="needed when there are several organizations")
    ] = None,
) -> PluginOut:
    """Install (or replace the code of) a plugin from an uploaded archive."""
    data = await archive.read()
    name = admin.strip_archive_suffix(archive.filename or "plugin")

    def run(connection: admin.Connection) -> admin.InstalledPlugin:
        plugin = admin.install_archive(connection, data, name, organization_id=organization_id)
        return admin.list_plugins(connection, plugin.id)[0]

    return await _changed(context, PluginOut.model_validate(await _in_database(context, run)))


# --- plugin configs


@router.post("/plugin-configs", response_model=PluginConfigOut)
async def enable(request: EnableRequest, context: Context) -> PluginConfigOut:
    """Enable a plugin for a team, creating its config if needed (like `plugins enable`)."""

    def run(connection: admin.Connection) -> PluginConfigOut:
        plugin = admin.find_plugin(connection, request.plugin, team_id=request.team_id)
        row = admin.enable_plugin(connection, plugin, request.team_id, request.config, order=request.order)
        return PluginConfigOut.model_validate(admin.shown_config(connection, row))

    return await _changed(context, await _in_database(context, run))


@router.patch("/plugin-configs/{config_id}", response_model=PluginConfigOut)
async def update_config(config_id: ConfigId, patch: ConfigPatch, context: Context) -> PluginConfigOut:
    """Enable or disable a config, change its settings or its order."""

    def run(connection: admin.Connection) -> PluginConfigOut:
        row = admin.update_config(
            connection, config_id, enabled=patch.enabled, config=patch.config, order=patch.order
        )
        return PluginConfigOut.model_validate(admin.shown_config(connection, row))

    return await _changed(context, await _in_database(context, run))


@router.put("/plugin-configs/{config_id}/attachments/{key}", response_model=PluginConfigOut)
async def put_attachment(
    config_id: ConfigId,
    key: Annotated[str, FastApiPath(max_length=200, description="the attachment's key")],
    file: Annotated[UploadFile, File(description="the attachment's contents")],
    context: Context,
) -> PluginConfigOut:
    """Store an attachment setting of a config (e.g. a file a plugin reads), replacing that key's."""
    name = file.filename or key
    attachment = PluginAttachment(
        key=key,
        content_type=file.content_type or admin.guess_content_type(name),
        file_name=name,
        contents=await file.read(),
    )

    def run(connection: admin.Connection) -> PluginConfigOut:
        row = admin.set_attachment(connection, config_id, attachment)
        return PluginConfigOut.model_validate(admin.shown_config(connection, row))

    return await _changed(context, await _in_database(context, run))


@router.get("/plugin-configs/{config_id}/logs", response_model=list[PluginLogEntry])
async def get_logs(
    config_id: ConfigId,
    context: Context,
    limit: Annotated[int, Query(ge=1, le=10_000, description="how many entries")] = 100,
    after: Annotated[
        str | None,
        Query(description="an entry id: the entries after it, to follow the log (else the newest)"),
    ] = None,
) -> list[PluginLogEntry]:
    """A config's log entries, oldest first (like `plugins logs`)."""

    await _in_database(context, partial(admin.find_config, config_id=config_id))  # 404, not an empty list
    try:
        return await context.reads.logs.log_entries(LogQuery(config_id, limit=limit, after=after))
    except admin.AdminError as error:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(error)) from None


# --- dead letters and reload


@router.get("/dead-letters", response_model=DeadLettersOut)
async def get_dead_letters(
    context: Context, limit: Annotated[int, Query(ge=1, le=10_000, description="how many to show")] = 20
) -> DeadLettersOut:
    """Messages that could not be ingested, newest first (like `dead-letters list`)."""
    store = open_dead_letters(context.settings, context.redis)
    letters = await store.newest(limit)
    return DeadLettersOut(
        total=await store.count(),
        letters=[DeadLetterOut.model_validate(letter) for letter in letters],
    )


@router.post("/dead-letters/replay", response_model=ReplayOut)
async def replay(context: Context, request: ReplayRequest | None = None) -> ReplayOut:
    """Put dead letters back on the ingestion queue, oldest first (like `dead-letters replay`)."""
    limit = request.limit if request else None
    return ReplayOut(replayed=await open_dead_letters(context.settings, context.redis).replay(limit))


@router.post("/reload", response_model=ReloadOut)
async def reload(context: Context) -> ReloadOut:
    """Tell running servers to read the plugin configs in force again."""
    return ReloadOut(subscribers=await _publish_reload(context))


# --- helpers


async def _in_database(context: WebContext, action: Callable[[admin.Connection], T]) -> T:
    """Run a `plugins.admin` operation in a thread; its errors become 404 (not found), 400 (refused, or
    a value the database cannot hold) or 409 (a conflict). A database that is down is a 503 (the
    app's handler, `error_answers`)."""
    conninfo = context.pool.conninfo
    assert isinstance(conninfo, str), "the pool is opened with a fixed database url (db.postgres.open_pool)"

    def run() -> T:
        with psycopg.connect(conninfo, autocommit=True) as connection:
            return action(connection)

    try:
        return await asyncio.to_thread(run)
    except admin.NotFoundError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None
    except admin.AdminError as error:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(error)) from None
    except psycopg.DataError as error:  # too long, out of range, NUL in text or jsonb...
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, f"cannot store that: {error.diag.message_primary}"
        ) from None
    except (UnicodeEncodeError, orjson.JSONEncodeError) as error:  # text or JSON that Postgres cannot hold
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"cannot store that: {error}") from None
    except psycopg.IntegrityError as error:  # e.g. what the request names was deleted meanwhile
        raise HTTPException(status.HTTP_409_CONFLICT, error.diag.message_primary or str(error)) from None


async def _changed(context: WebContext, answer: T) -> T:
    """After a saved change: tell running servers, then answer."""
    try:
        await _publish_reload(context)
    except RedisError as error:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"saved, but could not tell running servers to reload ({error}); POST /api/admin/reload to retry",
        ) from None
    return answer


async def _publish_reload(context: WebContext) -> int:
    return int(
        await context.redis.publish(context.settings.PLUGINS_RELOAD_PUBSUB_CHANNEL, admin.RELOAD_MESSAGE)
    )
