"""Installing and configuring plugins without the PostHog web app (for the CLI and the operator API).

Each change runs in its own transaction (`connection.transaction()`): on an autocommit connection it is
committed when the function returns. The caller then calls `publish_reload` so that running servers
read the configs in force again. The functions are synchronous (the CLI and scripts call them
directly); the operator API runs them in a thread.
"""

from __future__ import annotations

import mimetypes
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
from psycopg.rows import class_row, dict_row
from psycopg.types.json import Jsonb

from plugin_server.plugins.archive import DEFAULT_LIMITS, ArchiveError, pack_zip, read_folder
from plugin_server.plugins.loader import PluginLoadError, resolve_plugin_code
from plugin_server.plugins.models import PluginAttachment, PluginConfigRow, PluginRow
from plugin_server.plugins.rows import CONFIG_COLUMNS, PLUGIN_COLUMNS, config_from_row, plugin_from_row

Connection = psycopg.Connection[Any]
RELOAD_MESSAGE = "reload!"  # what PostHog's web app publishes; the server does not read it
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")
DOWNLOAD_TIMEOUT = 60.0  # seconds for downloading a plugin archive from a url
# One statement for every change of an existing config: what is None is left as it is, `config` is merged.
_UPDATE_CONFIG = f"""UPDATE posthog_pluginconfig SET enabled = COALESCE(%(enabled)s, enabled),
        config = config || %(config)s, "order" = COALESCE(%(order)s, "order"), updated_at = now()
    WHERE id = %(id)s RETURNING {CONFIG_COLUMNS}"""


class AdminError(Exception):
    """The operation cannot be done as asked; the message says why, for the operator."""


class NotFoundError(AdminError):
    """A team, plugin or plugin config named in the request does not exist."""


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
    stored as an absolute `file:` url instead (for developing a plugin). See `store_plugin` for the rest.
    """
    archive, url = _plugin_code(path_or_archive, local)
    candidate = PluginRow(
        id=0,
        organization_id=organization_id,
        name=strip_archive_suffix(path_or_archive.name),
        plugin_type="local" if local else "custom",
        url=url,
        archive=archive,
    )
    return store_plugin(connection, candidate, str(path_or_archive))


def install_from_url(connection: Connection, url: str, *, organization_id: str | None = None) -> PluginRow:
    """Download a plugin archive (.zip, .tgz, .tar.gz) from an http(s) url and install it; the url is kept
    in the plugin's row, as PostHog keeps it for plugins installed from a repository."""
    if not url.startswith(("http://", "https://")):
        raise AdminError(f"{url!r} is not an http(s) url")
    name = strip_archive_suffix(url.rstrip("/").rsplit("/", 1)[-1]) or "plugin"
    return install_archive(connection, _download(url), name, organization_id=organization_id, url=url)


def install_archive(
    connection: Connection,
    archive: bytes,
    name: str,
    *,
    organization_id: str | None = None,
    url: str | None = None,
) -> PluginRow:
    """Install an archive's bytes (zip or tgz); `name` is used when plugin.json has none."""
    candidate = PluginRow(
        id=0, organization_id=organization_id, name=name, plugin_type="custom", url=url, archive=archive
    )
    return store_plugin(connection, candidate, url or name)


def install_source(
    connection: Connection, name: str, source: str, *, organization_id: str | None = None
) -> PluginRow:
    """Install JavaScript source text (the plugin's index.js) as a `source` plugin named `name`."""
    candidate = PluginRow(
        id=0, organization_id=organization_id, name=name, plugin_type="source", source=source
    )
    return store_plugin(connection, candidate, f"source of {name}")


def store_plugin(connection: Connection, candidate: PluginRow, label: str) -> PluginRow:
    """Store the code of `candidate` (archive, url, source and plugin_type) for its organization.

    The plugin is loaded once first, so a broken plugin is refused (`label` names it in the error).
    Name and config schema come from plugin.json (the name falls back to the candidate's). Without an
    organization id the only organization is used. Installing a name again in the same organization
    replaces that plugin's code.
    """
    try:
        plugin_json = resolve_plugin_code(candidate, Path.cwd()).plugin_json
    except PluginLoadError as error:
        raise AdminError(f"{label} is not a loadable plugin: {error}") from error
    name = plugin_json.get("name") or candidate.name
    description = plugin_json.get("description")
    values = {
        "name": str(name)[:200],
        "description": description if isinstance(description, str) else None,
        "plugin_type": candidate.plugin_type,
        "url": candidate.url,
        "archive": candidate.archive,
        "source": candidate.source,
        "config_schema": Jsonb(plugin_json.get("config", [])),
    }
    with connection.transaction(), connection.cursor(row_factory=dict_row) as cursor:
        values["organization_id"] = _organization(cursor, candidate.organization_id)
        existing = cursor.execute(
            "SELECT id FROM posthog_plugin WHERE name = %(name)s AND organization_id = %(organization_id)s "
            "ORDER BY id LIMIT 1 FOR UPDATE",
            values,
        ).fetchone()
        if existing:
            row = cursor.execute(
                f"""UPDATE posthog_plugin SET description = %(description)s, plugin_type = %(plugin_type)s,
                        url = %(url)s, archive = %(archive)s, source = %(source)s,
                        config_schema = %(config_schema)s, error = NULL, updated_at = now()
                    WHERE id = %(id)s RETURNING {PLUGIN_COLUMNS}""",
                {**values, "id": existing["id"]},
            ).fetchone()
        else:
            row = cursor.execute(
                f"""INSERT INTO posthog_plugin
                        (organization_id, name, description, plugin_type, url, archive, source, config_schema)
                    VALUES (%(organization_id)s, %(name)s, %(description)s, %(plugin_type)s, %(url)s,
                            %(archive)s, %(source)s, %(config_schema)s)
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
            raise NotFoundError(f"no team {team_id}")
    where = "" if team_id is None else f" available to team {team_id}"
    if not rows:
        raise NotFoundError(f"no plugin {reference!r}{where}")
    if len(rows) > 1:
        ids = ", ".join(str(row["id"]) for row in rows)
        raise AdminError(f"several plugins named {reference!r}{where} (ids {ids}): give the id")
    return plugin_from_row(rows[0])


def shown_config(connection: Connection, config: PluginConfigRow) -> PluginConfigRow:
    """`config` as the operator API and the CLI show it: secret settings as "(set)" or "(unset)"."""
    from plugin_server.plugins.settings_schema import masked, setting_fields  # it imports AdminError

    row = connection.execute(
        "SELECT config_schema FROM posthog_plugin WHERE id = %s", (config.plugin_id,)
    ).fetchone()
    fields = setting_fields(row[0]) if row is not None else []
    return replace(config, config=masked(fields, config.config))


def list_plugins(connection: Connection, plugin_id: int | None = None) -> list[InstalledPlugin]:
    """Every plugin by id (or just the one with `plugin_id`), with its configs by team and order.

    The value of a setting that plugin.json declares secret is shown as "(set)" or "(unset)", never
    itself: this is what the operator API and the CLI show."""
    from plugin_server.plugins.settings_schema import masked, setting_fields  # it imports AdminError

    only = {"plugin_id": plugin_id}
    with connection.cursor(row_factory=dict_row) as cursor:
        plugins = cursor.execute(
            """SELECT id, COALESCE(name, '') AS name, organization_id, is_global, url, plugin_type,
                      octet_length(archive) AS archive_size, error, updated_at, config_schema
               FROM posthog_plugin WHERE %(plugin_id)s::int IS NULL OR id = %(plugin_id)s ORDER BY id""",
            only,
        ).fetchall()
        configs = cursor.execute(
            f"""SELECT {CONFIG_COLUMNS} FROM posthog_pluginconfig
                WHERE %(plugin_id)s::int IS NULL OR plugin_id = %(plugin_id)s ORDER BY team_id, "order", id""",
            only,
        ).fetchall()
    fields = {row["id"]: setting_fields(row["config_schema"]) for row in plugins}
    by_plugin: dict[int, list[PluginConfigRow]] = {}
    for row in configs:
        config = config_from_row(row)
        shown = replace(config, config=masked(fields.get(row["plugin_id"], []), config.config))
        by_plugin.setdefault(row["plugin_id"], []).append(shown)
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
    attachments: Mapping[str, PluginAttachment] | None = None,
    order: int | None = None,
) -> PluginConfigRow:
    """Enable the plugin for the team, creating its config if needed; return the config row.

    `config` is merged into the existing config (keys not given keep their value), so enabling again
    after a disable keeps the settings. Attachments (by key) replace those with the same key. A new
    config runs after the team's other plugins unless `order` is given; an existing one keeps its
    order unless `order` is given.
    """
    with connection.transaction(), connection.cursor(row_factory=dict_row) as cursor:
        team = cursor.execute("SELECT organization_id FROM posthog_team WHERE id = %s", (team_id,)).fetchone()
        if team is None:
            raise NotFoundError(f"no team {team_id}")
        if not plugin.is_global and plugin.organization_id != str(team["organization_id"]):
            raise AdminError(
                f"plugin {plugin.name} (id {plugin.id}) belongs to another organization than team {team_id}"
            )
        values = {
            "team_id": team_id,
            "plugin_id": plugin.id,
            "enabled": True,
            "config": Jsonb(dict(config or {})),
            "order": order,
        }
        existing = cursor.execute(
            "SELECT id FROM posthog_pluginconfig WHERE team_id = %(team_id)s AND plugin_id = %(plugin_id)s "
            "ORDER BY id LIMIT 1 FOR UPDATE",
            values,
        ).fetchone()
        if existing:
            row = cursor.execute(_UPDATE_CONFIG, {**values, "id": existing["id"]}).fetchone()
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
        _store_attachments(cursor, row["id"], team_id, attachments or {})
    return config_from_row(row)


def find_config(connection: Connection, config_id: int) -> PluginConfigRow:
    """The plugin config with this id."""
    with connection.cursor(row_factory=dict_row) as cursor:
        row = cursor.execute(
            f"SELECT {CONFIG_COLUMNS} FROM posthog_pluginconfig WHERE id = %s", (config_id,)
        ).fetchone()
    if row is None:
        raise NotFoundError(f"no plugin config {config_id}")
    return config_from_row(row)


def update_config(
    connection: Connection,
    config_id: int,
    *,
    enabled: bool | None = None,
    config: Mapping[str, Any] | None = None,
    order: int | None = None,
) -> PluginConfigRow:
    """Change a plugin config: enable or disable it, merge settings into its config, move it in the
    team's order. What is None stays as it is."""
    values = {"id": config_id, "enabled": enabled, "config": Jsonb(dict(config or {})), "order": order}
    with connection.transaction(), connection.cursor(row_factory=dict_row) as cursor:
        row = cursor.execute(_UPDATE_CONFIG, values).fetchone()
    if row is None:
        raise NotFoundError(f"no plugin config {config_id}")
    return config_from_row(row)


def set_attachment(connection: Connection, config_id: int, attachment: PluginAttachment) -> PluginConfigRow:
    """Store an attachment of a plugin config, replacing the one with the same key."""
    with connection.transaction(), connection.cursor(row_factory=dict_row) as cursor:
        row = cursor.execute(
            f"UPDATE posthog_pluginconfig SET updated_at = now() WHERE id = %s RETURNING {CONFIG_COLUMNS}",
            (config_id,),
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no plugin config {config_id}")
        _store_attachments(cursor, config_id, row["team_id"], {attachment.key: attachment})
    return config_from_row(row)


def read_attachment(key: str, path: Path) -> PluginAttachment:
    """An attachment from a file; its content type is guessed from the file name."""
    try:
        contents = path.read_bytes()
    except OSError as error:
        raise AdminError(f"cannot read attachment {path}: {error.strerror}") from None
    return PluginAttachment(
        key=key, content_type=guess_content_type(path.name), file_name=path.name, contents=contents
    )


@dataclass(frozen=True, slots=True)
class StoredAttachment:
    """An attachment of a plugin config, without its contents."""

    key: str
    file_name: str
    file_size: int | None
    content_type: str


def list_attachments(connection: Connection, config_id: int) -> list[StoredAttachment]:
    """The attachments stored for a plugin config, by key."""
    with connection.cursor(row_factory=class_row(StoredAttachment)) as cursor:
        return cursor.execute(
            """SELECT key, file_name, file_size, content_type FROM posthog_pluginattachment
               WHERE plugin_config_id = %s ORDER BY key""",
            (config_id,),
        ).fetchall()


def guess_content_type(file_name: str) -> str:
    return mimetypes.guess_type(file_name)[0] or "application/octet-stream"


def disable_plugin(connection: Connection, plugin: PluginRow, team_id: int) -> list[PluginConfigRow]:
    """Disable the plugin for the team (every config of that pair); return the configs changed."""
    with connection.transaction(), connection.cursor(row_factory=dict_row) as cursor:
        rows = cursor.execute(
            f"""UPDATE posthog_pluginconfig SET enabled = false, updated_at = now()
                WHERE team_id = %s AND plugin_id = %s RETURNING {CONFIG_COLUMNS}""",
            (team_id, plugin.id),
        ).fetchall()
    if not rows:
        raise NotFoundError(f"plugin {plugin.name} (id {plugin.id}) is not configured for team {team_id}")
    return [config_from_row(row) for row in rows]


def publish_reload(client: redis.Redis, channel: str) -> int:
    """Tell running servers to read the configs in force again; return how many subscribers heard it."""
    return int(client.publish(channel, RELOAD_MESSAGE))


def _plugin_code(path: Path, local: bool) -> tuple[bytes | None, str | None]:
    """(archive, url) to store for a folder or an archive file."""
    try:
        return _read_plugin_code(path, local)
    except OSError as error:  # a name too long, a folder it may not read...
        raise AdminError(f"cannot read {path}: {error.strerror or error}") from None


def _read_plugin_code(path: Path, local: bool) -> tuple[bytes | None, str | None]:
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
    raise NotFoundError(f"{path} does not exist")


def _organization(cursor: psycopg.Cursor[dict[str, Any]], organization_id: str | None) -> str:
    if organization_id is not None:
        try:
            wanted = uuid.UUID(organization_id)
        except ValueError:
            raise AdminError(f"{organization_id!r} is not an organization id (a UUID)") from None
        if cursor.execute("SELECT 1 FROM posthog_organization WHERE id = %s", (wanted,)).fetchone() is None:
            raise NotFoundError(f"no organization {organization_id}")
        return str(wanted)
    rows = cursor.execute("SELECT id FROM posthog_organization ORDER BY created_at LIMIT 2").fetchall()
    if len(rows) != 1:
        found = "no organization yet (create a team first)" if not rows else "several organizations"
        raise AdminError(f"{found}: give the organization id")
    return str(rows[0]["id"])


def _team_exists(cursor: psycopg.Cursor[dict[str, Any]], team_id: int) -> bool:
    return cursor.execute("SELECT 1 FROM posthog_team WHERE id = %s", (team_id,)).fetchone() is not None


def _store_attachments(
    cursor: psycopg.Cursor[dict[str, Any]],
    config_id: int,
    team_id: int | None,
    attachments: Mapping[str, PluginAttachment],
) -> None:
    if not attachments:
        return
    cursor.execute(
        "DELETE FROM posthog_pluginattachment WHERE plugin_config_id = %s AND key = ANY(%s)",
        (config_id, list(attachments)),
    )
    cursor.executemany(
        """INSERT INTO posthog_pluginattachment
               (plugin_config_id, team_id, key, content_type, file_name, file_size, contents)
           VALUES (%s, %s, %s, %s, %s, %s, %s)""",
        [
            (config_id, team_id, key, item.content_type, item.file_name, len(item.contents), item.contents)
            for key, item in attachments.items()
        ],
    )


def _download(url: str) -> bytes:
    """The archive at `url`, at most as big as an archive may be when unpacked."""
    limit = DEFAULT_LIMITS.max_total_bytes
    try:
        with httpx.stream("GET", url, timeout=DOWNLOAD_TIMEOUT, follow_redirects=True) as response:
            if response.status_code != 200:
                raise AdminError(f"could not download {url}: HTTP {response.status_code}")
            data = bytearray()
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > limit:
                    raise AdminError(f"could not download {url}: bigger than {limit} bytes")
    except (httpx.HTTPError, httpx.InvalidURL) as error:  # InvalidURL is no HTTPError
        raise AdminError(f"could not download {url!r}: {error}") from None
    return bytes(data)


def _origin(row: dict[str, Any]) -> str:
    url = row["url"] or ""
    if url.startswith("file:"):
        return url
    if row["archive_size"] is not None:
        return "archive"
    if row["plugin_type"] == "source":
        return "source"
    return url or "remote"


def strip_archive_suffix(name: str) -> str:
    """The file name without .zip, .tgz or .tar.gz."""
    for suffix in ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name
