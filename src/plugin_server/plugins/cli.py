"""`plugin-server plugins ...`: install, enable, disable and inspect plugins without the PostHog web app."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import psycopg
import redis
import typer

from plugin_server.cli_support import database_url, load_settings_or_exit, read_stored, redis_url
from plugin_server.config import Settings
from plugin_server.db.migrate import migrate as apply_migrations
from plugin_server.plugins.admin import (
    AdminError,
    InstalledPlugin,
    disable_plugin,
    enable_plugin,
    find_config,
    find_plugin,
    install_from_url,
    install_plugin,
    list_attachments,
    list_plugins,
    publish_reload,
    read_attachment,
)
from plugin_server.plugins.meta.logs import PluginLogEntry
from plugin_server.plugins.models import PluginRow
from plugin_server.plugins.settings_schema import SERVER_KEYS, check_settings, setting_fields
from plugin_server.reads import LogQuery, Reads

FOLLOW_INTERVAL = 1.0  # seconds between polls of `logs --follow`

plugins_app = typer.Typer(
    help="Install, enable, disable and inspect plugins without the PostHog web app.", no_args_is_help=True
)


@plugins_app.command("install")
def install(
    path: Annotated[
        str, typer.Argument(help="Plugin folder, a .zip / .tgz / .tar.gz archive, or an http(s) url of one.")
    ],
    organization: Annotated[
        str | None, typer.Option(help="Organization id; needed when there are several organizations.")
    ] = None,
    local: Annotated[
        bool,
        typer.Option("--local", help="Load the folder from its path on every reload instead of storing it."),
    ] = False,
) -> None:
    """Install a plugin folder or archive (again: replace its code)."""
    settings = _settings()
    with _connection(settings) as connection, _admin_errors():
        if path.startswith(("http://", "https://")) and not local:
            plugin = install_from_url(connection, path, organization_id=organization)
        else:
            plugin = install_plugin(connection, Path(path), organization_id=organization, local=local)
    typer.echo(f"installed plugin {plugin.name} (id {plugin.id})")
    _notify(settings)


@plugins_app.command("list")
def list_command() -> None:
    """List plugins and their configs in each team."""
    with _connection(_settings()) as connection:
        plugins = list_plugins(connection)
    if not plugins:
        typer.echo("no plugins installed")
    for plugin in plugins:
        typer.echo(_describe(plugin))


@plugins_app.command("enable")
def enable(
    plugin: Annotated[str, typer.Argument(help="Plugin id or name.")],
    team: Annotated[int, typer.Option(help="Team id.")],
    config: Annotated[
        str | None,
        typer.Option(
            help='Settings as a JSON object, e.g. \'{"greeting": "hi"}\'; merged into the current ones.'
        ),
    ] = None,
    attachment: Annotated[
        list[str] | None, typer.Option(help="An attachment as KEY=FILE; repeat for more.")
    ] = None,
    order: Annotated[
        int | None, typer.Option(help="Position among the team's plugins (lower runs first).")
    ] = None,
) -> None:
    """Enable a plugin for a team, with settings and attachments."""
    values = _json_object(config)
    paths = dict(_key_and_path(text) for text in attachment or [])
    settings = _settings()
    with _connection(settings) as connection, _admin_errors():
        files = {key: read_attachment(key, path) for key, path in paths.items()}
        found = find_plugin(connection, plugin, team_id=team)
        _check_settings(connection, found, team, values, set(files))
        row = enable_plugin(connection, found, team, values, files, order)
    typer.echo(f"enabled plugin {found.name} for team {team} (config {row.id}, order {row.order})")
    _notify(settings)


@plugins_app.command("disable")
def disable(
    plugin: Annotated[str, typer.Argument(help="Plugin id or name.")],
    team: Annotated[int, typer.Option(help="Team id.")],
) -> None:
    """Disable a plugin for a team (its settings are kept)."""
    settings = _settings()
    with _connection(settings) as connection, _admin_errors():
        found = find_plugin(connection, plugin, team_id=team)
        disable_plugin(connection, found, team)
    typer.echo(f"disabled plugin {found.name} for team {team}")
    _notify(settings)


@plugins_app.command("logs")
def logs(
    config_id: Annotated[int, typer.Argument(help="Plugin config id (see `plugins list`).")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new entries until Ctrl-C.")
    ] = False,
    limit: Annotated[int, typer.Option(min=1, help="How many of the newest entries to show.")] = 100,
) -> None:
    """Print a plugin config's log entries, oldest first (from Postgres, or ClickHouse with
    EVENT_STORE=clickhouse-kafka)."""

    async def show(reads: Reads) -> None:
        entries = await reads.logs.log_entries(LogQuery(config_id, limit=limit))
        _print_logs(entries)
        last = entries[-1] if entries else None
        while follow:
            after = None if last is None else last.id
            new = await reads.logs.log_entries(LogQuery(config_id, limit=limit, after=after))
            _print_logs(new)
            last = new[-1] if new else last
            if len(new) < limit:
                await asyncio.sleep(FOLLOW_INTERVAL)

    settings = _settings()
    with database_url(settings) as url, contextlib.suppress(KeyboardInterrupt):
        read_stored(settings, url, show)


def _settings() -> Settings:
    return load_settings_or_exit()


@contextlib.contextmanager
def _connection(settings: Settings) -> Iterator[psycopg.Connection[Any]]:
    with database_url(settings) as url:
        if settings.AUTO_MIGRATE:
            apply_migrations(url)
        with psycopg.connect(url, autocommit=True) as connection:
            yield connection


@contextlib.contextmanager
def _admin_errors() -> Iterator[None]:
    try:
        yield
    except AdminError as error:
        typer.echo(f"plugin-server: {error}", err=True)
        raise typer.Exit(1) from None


def _notify(settings: Settings) -> None:
    """Publish the reload message, so that running servers pick the change up now."""
    url = redis_url(settings)
    if url is None:
        typer.echo(
            "no Redis configured and no embedded server running: servers load it when they start", err=True
        )
        return
    try:
        with redis.Redis.from_url(url, socket_timeout=5) as client:
            publish_reload(client, settings.PLUGINS_RELOAD_PUBSUB_CHANNEL)
    except redis.RedisError as error:
        typer.echo(f"saved, but could not tell running servers to reload ({error})", err=True)
        raise typer.Exit(1) from None


def _json_object(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError as error:
        raise typer.BadParameter(f"not JSON: {error}", param_hint="--config") from None
    if not isinstance(value, dict):
        raise typer.BadParameter("must be a JSON object", param_hint="--config")
    return value


def _key_and_path(text: str) -> tuple[str, Path]:
    key, separator, path = text.partition("=")
    if not (separator and key and path):
        raise typer.BadParameter(f"{text!r} is not KEY=FILE", param_hint="--attachment")
    return key, Path(path)


def _check_settings(
    connection: psycopg.Connection[Any], plugin: PluginRow, team: int, values: dict[str, Any], files: set[str]
) -> None:
    """Refuse settings that plugin.json does not allow (when it declares any), with every problem named;
    what is already stored for the team counts (e.g. a required setting set before). Settings it does
    not declare are stored, with a warning."""
    fields = setting_fields(plugin.config_schema)
    if not fields:
        return
    declared = {field.key for field in fields} | SERVER_KEYS
    for key in values.keys() - declared:
        typer.echo(
            f"plugin-server: warning: {key!r} is not a setting in the plugin.json of {plugin.name}", err=True
        )
    [installed] = list_plugins(connection, plugin.id)
    listed = next((config for config in installed.configs if config.team_id == team), None)
    current = find_config(connection, listed.id) if listed else None  # listed: with its secrets masked
    stored = {item.key for item in list_attachments(connection, current.id)} if current else set()
    given = {**values, **dict.fromkeys(files, "file")}
    check_settings(fields, given, current.config if current else {}, stored, undeclared=True)


def _describe(plugin: InstalledPlugin) -> str:
    origin = f"archive ({plugin.archive_size} bytes)" if plugin.origin == "archive" else plugin.origin
    owner = "global" if plugin.is_global else f"organization {plugin.organization_id}"
    lines = [f"{plugin.id}  {plugin.name}  [{origin}, {owner}]"]
    if plugin.error:
        lines.append(f"    plugin error: {json.dumps(plugin.error)}")
    for config in plugin.configs:
        state = "enabled" if config.enabled else "disabled"
        line = f"    team {config.team_id}: config {config.id}, {state}, order {config.order}"
        if config.error:
            line += f", error: {json.dumps(config.error)}"
        lines.append(line)
    return "\n".join(lines)


def _print_logs(entries: list[PluginLogEntry]) -> None:
    for entry in entries:
        typer.echo(f"{entry.timestamp.isoformat()} {entry.source} {entry.type} {entry.message}")
