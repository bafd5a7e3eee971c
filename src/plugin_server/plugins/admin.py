"""Installing and configuring plugins without the PostHog web app (for the CLI, later an HTTP admin API).

Each change runs in its own transaction (`connection.transaction()`): on an autocommit connection it is
committed when the function returns. The caller then calls `publish_reload` so that running servers
read the configs in force again.
"""

from __future__ import annotations

import mimetypes
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import redis
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from plugin_server.plugins.archive import ArchiveError, pack_zip, read_folder
from plugin_server.plugins.loader import PluginLoadError, resolve_plugin_code
from plugin_server.plugins.meta.logs import LogSource, LogType, PluginLogEntry
from plugin_server.plugins.models import PluginConfigRow, PluginRow
from plugin_server.plugins.rows import CONFIG_COLUMNS, PLUGIN_COLUMNS, config_from_row, plugin_from_row

Connection = psycopg.Connection[Any]
RELOAD_MESSAGE = "reload!"  # what PostHog's web app publishes; the server does not read it
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")


class AdminError(Exception):
    """The operation cannot be done as asked; the message says why, for the operator."""


@dataclass(frozen=True, slots=True)
class InstalledPlugin:
    """A plugin as `list_plugins` shows it: where its code is, and its config in each team."""

    id: int
    name: str
    organization_id: str | None
    is_global: bool
    origin: str  # "archive", "source", a `file:` url or a remote url, in the loader's order
    archive_size: int | None
    error: Any
    updated_at: datetime | None
    configs: tuple[PluginConfigRow, ...]


def install_plugin(
    connection: Connection,
    path_or_archive: Path,
    *,
    organization_id: str | None = None,
    local: bool = False,
) -> PluginRow:
    """Install a plugin folder or archive (.zip, .tgz, .tar.gz) for an organization; return its row.

    A folder is stored as a zip archive, so the server never needs the path again; with `local` it is
    stored as an absolute `file:` url instead (for developing a plugin). The plugin is loaded once
    first, so a broken plugin is refused. Name and config schema come from plugin.json (the name
    falls back to the folder or file name). Without `organization_id` the only organization is used.
    Installing a name again in the same organization replaces that plugin's code.
    """
    archive, url = _plugin_code(path_or_archive, local)
    candidate = PluginRow(
        id=0, organization_id=organization_id, name=path_or_archive.name, url=url, archive=archive
    )
    try:
        plugin_json = resolve_plugin_code(candidate, Path.cwd()).plugin_json
    except PluginLoadError as error:
        raise AdminError(f"{path_or_archive} is not a loadable plugin: {error}") from error
    name = plugin_json.get("name") or _strip_suffix(path_or_archive.name)
    description = plugin_json.get("description")
    values = {
        "name": str(name)[:200],
        "description": description if isinstance(description, str) else None,
        "plugin_type": "local" if local else "custom",
        "url": url,
        "archive": archive,
        "config_schema": Jsonb(plugin_json.get("config", [])),
    }
    with connection.transaction(), connection.cursor(row_factory=dict_row) as cursor:
        values["organization_id"] = _organization(cursor, organization_id)
        existing = cursor.execute(
            "SELECT id FROM posthog_plugin WHERE name = %(name)s AND organization_id = %(organization_id)s "
            "ORDER BY id LIMIT 1 FOR UPDATE",
            values,
        ).fetchone()
        if existing:
            row = cursor.execute(
                f"""UPDATE posthog_plugin SET description = %(description)s, plugin_type = %(plugin_type)s,
                        url = %(url)s, archive = %(archive)s, source = NULL, config_schema = %(config_schema)s,
                        error = NULL, updated_at = now()
                    WHERE id = %(id)s RETURNING {PLUGIN_COLUMNS}""",
                {**values, "id": existing["id"]},
            ).fetchone()
        else:
            row = cursor.execute(
                f"""INSERT INTO posthog_plugin
                        (organization_id, name, description, plugin_type, url, archive, config_schema)
                    VALUES (%(organization_id)s, %(name)s, %(description)s, %(plugin_type)s, %(url)s,
                            %(archive)s, %(config_schema)s)
                    RETURNING {PLUGIN_COLUMNS}""",
                values,
            ).fetchone()
    assert row is not None
    return plugin_from_row(row)


def find_plugin(connection: Connection, reference: str, *, team_id: int | None = None) -> PluginRow:
    """The plugin with this id (all digits) or name; with `team_id`, only among plugins that team may use."""
    query = f"SELECT {PLUGIN_COLUMNS} FROM posthog_plugin WHERE "
    query += "id = %(id)s" if reference.isdigit() else "name = %(name)s"
    if team_id is not None:
        query += """ AND (is_global OR organization_id =
                         (SELECT organization_id FROM posthog_team WHERE id = %(team_id)s))"""
    with connection.cursor(row_factory=dict_row) as cursor:
        rows = cursor.execute(
            query + " ORDER BY id",
            {"id": int(reference) if reference.isdigit() else None, "name": reference, "team_id": team_id},
        ).fetchall()
        if not rows and team_id is not None and not _team_exists(cursor, team_id):
            raise AdminError(f"no team {team_id}")
    where = "" if team_id is None else f" available to team {team_id}"
    if not rows:
        raise AdminError(f"no plugin {reference!r}{where}")
    if len(rows) > 1:
        ids = ", ".join(str(row["id"]) for row in rows)
        raise AdminError(f"several plugins named {reference!r}{where} (ids {ids}): give the id")
    return plugin_from_row(rows[0])


def list_plugins(connection: Connection) -> list[InstalledPlugin]:
    """Every plugin by id, with its configs by team and order."""
    with connection.cursor(row_factory=dict_row) as cursor:
        plugins = cursor.execute(
            """SELECT id, COALESCE(name, '') AS name, organization_id, is_global, url, plugin_type,
                      archive IS NOT NULL AS has_archive, octet_length(archive) AS archive_size, error, updated_at
               FROM posthog_plugin ORDER BY id"""
        ).fetchall()
        configs = cursor.execute(
            f'SELECT {CONFIG_COLUMNS} FROM posthog_pluginconfig ORDER BY team_id, "order", id'
        ).fetchall()
    by_plugin: dict[int, list[PluginConfigRow]] = {}
    for row in configs:
        by_plugin.setdefault(row["plugin_id"], []).append(config_from_row(row))
    return [
        InstalledPlugin(
            id=row["id"],
            name=row["name"],
            organization_id=None if row["organization_id"] is None else str(row["organization_id"]),
            is_global=row["is_global"],
            origin=_origin(row),
            archive_size=row["archive_size"],
            error=row["error"],
            updated_at=row["updated_at"],
            configs=tuple(by_plugin.get(row["id"], ())),
        )
        for row in plugins
    ]


def enable_plugin(
    connection: Connection,
    plugin: PluginRow,
    team_id: int,
    config: Mapping[str, Any] | None = None,
    attachments: Mapping[str, Path] | None = None,
    order: int | None = None,
) -> PluginConfigRow:
    """Enable the plugin for the team, creating its config if needed; return the config row.

    `config` is merged into the existing config (keys not given keep their value), so enabling again
    after a disable keeps the settings. Attachments replace those with the same key; their content
    type is guessed from the file name. A new config runs after the team's other plugins unless
    `order` is given; an existing one keeps its order unless `order` is given.
    """
    files = {key: _read_attachment(path) for key, path in (attachments or {}).items()}
    with connection.transaction(), connection.cursor(row_factory=dict_row) as cursor:
        team = cursor.execute("SELECT organization_id FROM posthog_team WHERE id = %s", (team_id,)).fetchone()
        if team is None:
            raise AdminError(f"no team {team_id}")
        if not plugin.is_global and plugin.organization_id != str(team["organization_id"]):
            raise AdminError(
                f"plugin {plugin.name} (id {plugin.id}) belongs to another organization than team {team_id}"
            )
        values = {
            "team_id": team_id,
            "plugin_id": plugin.id,
            "config": Jsonb(dict(config or {})),
            "order": order,
        }
        existing = cursor.execute(
            "SELECT id FROM posthog_pluginconfig WHERE team_id = %(team_id)s AND plugin_id = %(plugin_id)s "
            "ORDER BY id LIMIT 1 FOR UPDATE",
            values,
        ).fetchone()
        if existing:
            row = cursor.execute(
                f"""UPDATE posthog_pluginconfig SET enabled = true, config = config || %(config)s,
                        "order" = COALESCE(%(order)s, "order"), updated_at = now()
                    WHERE id = %(id)s RETURNING {CONFIG_COLUMNS}""",
                {**values, "id": existing["id"]},
            ).fetchone()
        else:
            row = cursor.execute(
                f"""INSERT INTO posthog_pluginconfig (team_id, plugin_id, enabled, "order", config)
                    VALUES (%(team_id)s, %(plugin_id)s, true,
                            COALESCE(%(order)s, (SELECT COALESCE(MAX("order") + 1, 0)
                                                 FROM posthog_pluginconfig WHERE team_id = %(team_id)s)),
                            %(config)s)
                    RETURNING {CONFIG_COLUMNS}""",
                values,
            ).fetchone()
        assert row is not None
        if files:
            cursor.execute(
                "DELETE FROM posthog_pluginattachment WHERE plugin_config_id = %s AND key = ANY(%s)",
                (row["id"], list(files)),
            )
            cursor.executemany(
                """INSERT INTO posthog_pluginattachment
                       (plugin_config_id, team_id, key, content_type, file_name, file_size, contents)
                   VALUES (%s, %s, %s, %s, %s, %s, %s)""",
                [
                    (row["id"], team_id, key, content_type, file_name, len(contents), contents)
                    for key, (content_type, file_name, contents) in files.items()
                ],
            )
    return config_from_row(row)


def disable_plugin(connection: Connection, plugin: PluginRow, team_id: int) -> list[PluginConfigRow]:
    """Disable the plugin for the team (every config of that pair); return the configs changed."""
    with connection.transaction(), connection.cursor(row_factory=dict_row) as cursor:
        rows = cursor.execute(
            f"""UPDATE posthog_pluginconfig SET enabled = false, updated_at = now()
                WHERE team_id = %s AND plugin_id = %s RETURNING {CONFIG_COLUMNS}""",
            (team_id, plugin.id),
        ).fetchall()
    if not rows:
        raise AdminError(f"plugin {plugin.name} (id {plugin.id}) is not configured for team {team_id}")
    return [config_from_row(row) for row in rows]


def read_logs(
    connection: Connection, plugin_config_id: int, *, limit: int = 100, after: PluginLogEntry | None = None
) -> list[PluginLogEntry]:
    """Log entries of a plugin config, oldest first: the newest `limit`, or the first `limit` after `after`.

    Entries are ordered by (timestamp, id); an entry written later with an older timestamp than
    `after` is not returned by a later call.
    """
    columns = "id, team_id, plugin_id, plugin_config_id, timestamp, source, type, message, instance_id"
    with connection.cursor(row_factory=dict_row) as cursor:
        if after is None:
            rows = cursor.execute(
                f"""SELECT * FROM (SELECT {columns} FROM posthog_pluginlogentry WHERE plugin_config_id = %s
                                   ORDER BY timestamp DESC, id DESC LIMIT %s) newest
                    ORDER BY timestamp, id""",
                (plugin_config_id, limit),
            ).fetchall()
        else:
            rows = cursor.execute(
                f"""SELECT {columns} FROM posthog_pluginlogentry
                    WHERE plugin_config_id = %s AND (timestamp, id) > (%s, %s)
                    ORDER BY timestamp, id LIMIT %s""",
                (plugin_config_id, after.timestamp, uuid.UUID(after.id), limit),
            ).fetchall()
    return [
        PluginLogEntry(
            **{
                **row,
                "id": str(row["id"]),
                "instance_id": str(row["instance_id"]),
                "source": LogSource(row["source"]),
                "type": LogType(row["type"]),
            }
        )
        for row in rows
    ]


def publish_reload(client: redis.Redis, channel: str) -> int:
    """Tell running servers to read the configs in force again; return how many subscribers heard it."""
    return int(client.publish(channel, RELOAD_MESSAGE))


def _plugin_code(path: Path, local: bool) -> tuple[bytes | None, str | None]:
    """(archive, url) to store for a folder or an archive file."""
    if local:
        if not path.is_dir():
            raise AdminError(f"{path} is not a folder: only a folder can be installed as a local plugin")
        return None, f"file:{path.resolve()}"
    if path.is_dir():
        try:
            return pack_zip(read_folder(path)), None
        except ArchiveError as error:
            raise AdminError(str(error)) from error
    if path.is_file():
        return path.read_bytes(), None
    raise AdminError(f"{path} does not exist")


def _organization(cursor: psycopg.Cursor[dict[str, Any]], organization_id: str | None) -> str:
    if organization_id is not None:
        try:
            wanted = uuid.UUID(organization_id)
        except ValueError:
            raise AdminError(f"{organization_id!r} is not an organization id (a UUID)") from None
        if cursor.execute("SELECT 1 FROM posthog_organization WHERE id = %s", (wanted,)).fetchone() is None:
            raise AdminError(f"no organization {organization_id}")
        return str(wanted)
    rows = cursor.execute("SELECT id FROM posthog_organization ORDER BY created_at LIMIT 2").fetchall()
    if len(rows) != 1:
        found = "no organization yet (create a team first)" if not rows else "several organizations"
        raise AdminError(f"{found}: give the organization id")
    return str(rows[0]["id"])


def _team_exists(cursor: psycopg.Cursor[dict[str, Any]], team_id: int) -> bool:
    return cursor.execute("SELECT 1 FROM posthog_team WHERE id = %s", (team_id,)).fetchone() is not None


def _read_attachment(path: Path) -> tuple[str, str, bytes]:
    """(content type, file name, contents) of an attachment file."""
    try:
        contents = path.read_bytes()
    except OSError as error:
        raise AdminError(f"cannot read attachment {path}: {error.strerror}") from None
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return content_type, path.name, contents


def _origin(row: dict[str, Any]) -> str:
    url = row["url"] or ""
    if url.startswith("file:"):
        return url
    if row["has_archive"]:
        return "archive"
    if row["plugin_type"] == "source":
        return "source"
    return url or "remote"


def _strip_suffix(name: str) -> str:
    for suffix in ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name
