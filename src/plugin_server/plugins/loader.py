"""Which plugin configs are in force, and where each plugin's code comes from.

Configs in force follow the original (`src/utils/db/sql.ts`): enabled, in a team whose organization has
`plugins_access_level > 0`, of a plugin that belongs to that organization or is global. Unlike the
original, the three reads (configs, plugins, attachments) share one snapshot and one round trip.

Code comes, in this order, from a `file:` url (a folder), the `archive` column (zip, else tgz), or
`source` text of a `plugin_type = 'source'` plugin; anything else cannot be loaded.
"""

from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from plugin_server.plugins.archive import ArchiveError, read_archive, read_folder
from plugin_server.plugins.models import (
    Language,
    PluginAttachment,
    PluginCode,
    PluginConfigInForce,
    PluginRow,
)
from plugin_server.plugins.rows import (
    ATTACHMENT_COLUMNS,
    CONFIG_COLUMNS,
    PLUGIN_COLUMNS,
    attachment_from_row,
    config_from_row,
    plugin_from_row,
)

log = logging.getLogger(__name__)

# Main files tried when plugin.json has no `main`: the original's index.js first, then TypeScript, then Python.
DEFAULT_MAINS = ("index.js", "index.ts", "index.py")
LANGUAGES: dict[str, Language] = {
    ".js": "js",
    ".ts": "js",
    ".mjs": "js",
    ".cjs": "js",
    ".py": "python",
}
SOURCE_MAIN = "index.js"

# The plugin configs in force: enabled, for teams whose organization may use plugins, with a plugin
# of that organization or a global one. Also used to read the scheduled tasks (plugins/capabilities.py).
IN_FORCE_CTE = """
    WITH in_force AS (
        SELECT config.id, config.plugin_id
        FROM posthog_pluginconfig config
        JOIN posthog_team team ON team.id = config.team_id
        JOIN posthog_organization org ON org.id = team.organization_id
        JOIN posthog_plugin plugin ON plugin.id = config.plugin_id
        WHERE config.enabled AND org.plugins_access_level > 0
          AND (plugin.organization_id = org.id OR plugin.is_global)
    )"""
# Enabled configs without a team are read too, only to warn about them.
_CONFIGS = f"""{IN_FORCE_CTE}
    SELECT {CONFIG_COLUMNS} FROM posthog_pluginconfig
    WHERE id IN (SELECT id FROM in_force) OR (enabled AND team_id IS NULL)
    ORDER BY id"""
_PLUGINS = (
    f"{IN_FORCE_CTE} SELECT {PLUGIN_COLUMNS} FROM posthog_plugin WHERE id IN (SELECT plugin_id FROM in_force)"
)
_ATTACHMENTS = f"""{IN_FORCE_CTE}
    SELECT {ATTACHMENT_COLUMNS} FROM posthog_pluginattachment
    WHERE plugin_config_id IN (SELECT id FROM in_force)
    ORDER BY id"""


class PluginLoadError(Exception):
    """A plugin's code cannot be found or read; the message is the one the original logged, where it had one."""


async def load_configs_in_force(pool: AsyncConnectionPool[Any]) -> list[PluginConfigInForce]:
    """Every config in force with its plugin and attachments, by config id."""
    async with pool.connection() as connection:
        configs = connection.cursor(row_factory=dict_row)
        plugins = connection.cursor(row_factory=dict_row)
        attachments = connection.cursor(row_factory=dict_row)
        async with connection.pipeline(), connection.transaction():
            await connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            await configs.execute(_CONFIGS)
            await plugins.execute(_PLUGINS)
            await attachments.execute(_ATTACHMENTS)
        config_rows, plugin_rows, attachment_rows = (
            await configs.fetchall(),
            await plugins.fetchall(),
            await attachments.fetchall(),
        )
    plugins_by_id = {row["id"]: plugin_from_row(row) for row in plugin_rows}
    attachments_by_config: dict[int, dict[str, PluginAttachment]] = {}
    for row in attachment_rows:
        attachments_by_config.setdefault(row["plugin_config_id"], {})[row["key"]] = attachment_from_row(row)
    in_force = []
    for row in config_rows:
        if row["team_id"] is None:
            log.warning("plugin config %d is enabled but has no team: left out", row["id"])
            continue
        in_force.append(
            PluginConfigInForce(
                config=config_from_row(row),
                plugin=plugins_by_id[row["plugin_id"]],
                attachments=attachments_by_config.get(row["id"], {}),
            )
        )
    return in_force


def group_by_team(configs: Iterable[PluginConfigInForce]) -> dict[int, list[PluginConfigInForce]]:
    """Each team's configs in the order they run: by `order`, then by id."""
    teams: dict[int, list[PluginConfigInForce]] = {}
    for config in sorted(configs, key=lambda config: (config.config.order, config.id)):
        if config.config.team_id is not None:
            teams.setdefault(config.config.team_id, []).append(config)
    return teams


def plugin_digest(plugin: PluginRow, team_id: int | None = None) -> str:
    """How the original names a plugin in messages: `plugin NAME ID 7 (organization ID ... - global)`."""
    extras = [f"team ID {team_id}"] if team_id else []
    extras.append(f"organization ID {plugin.organization_id}")
    if plugin.is_global:
        extras.append("global")
    return f"plugin {plugin.name} ID {plugin.id} ({' - '.join(extras)})"


def resolve_plugin_code(plugin: PluginRow, base_dir: Path) -> PluginCode:
    """The plugin's files, plugin.json, main file and language.

    A `file:` url is a folder resolved against `base_dir`; like the original, any path is allowed
    (`file:../my-plugin` during development, or an absolute path): whoever can write posthog_plugin
    can already store code that runs. The `main` file must still be inside the plugin.
    """
    digest = plugin_digest(plugin)
    if plugin.url and plugin.url.startswith("file:"):
        return _from_folder(base_dir / plugin.url.removeprefix("file:"), digest)
    if plugin.archive is not None:
        return _from_archive(plugin.archive, digest)
    if plugin.plugin_type == "source" and plugin.source:
        return PluginCode(language="js", main=SOURCE_MAIN, files={SOURCE_MAIN: plugin.source.encode()})
    raise PluginLoadError(f"Tried using undownloaded remote {digest}, which is not supported!")


def _from_folder(folder: Path, digest: str) -> PluginCode:
    if not folder.is_dir():
        raise PluginLoadError(f'Could not find local plugin folder "{folder}" for {digest}')
    try:
        files = read_folder(folder)
    except (ArchiveError, OSError) as error:
        raise PluginLoadError(f"{error} for {digest}") from error
    config = _plugin_json(files, f'Could not load posthog config at "{folder / "plugin.json"}" for {digest}')
    missing = f'No "main" config key or "index.js" file found for {digest}'
    return _code(files, config, digest, missing)


def _from_archive(archive: bytes, digest: str) -> PluginCode:
    try:
        files = read_archive(archive)
    except ArchiveError as error:
        raise PluginLoadError(str(error)) from error
    config = _plugin_json(files, f"Can not load plugin.json for {digest}")
    return _code(files, config, digest, f"Could not load index.js for {digest}!")


def _plugin_json(files: dict[str, bytes], error_message: str) -> dict[str, Any]:
    if "plugin.json" not in files:
        return {}
    try:
        config = json.loads(files["plugin.json"])
    except ValueError:
        raise PluginLoadError(error_message) from None
    if not isinstance(config, dict):
        raise PluginLoadError(error_message)
    return config


def _code(files: dict[str, bytes], config: dict[str, Any], digest: str, no_main_message: str) -> PluginCode:
    main = _main(files, config.get("main"), digest, no_main_message)
    language = LANGUAGES.get(posixpath.splitext(main)[1].lower())
    if language is None:
        raise PluginLoadError(
            f'Main file "{main}" of {digest} is not .js, .ts, .mjs, .cjs (JavaScript) or .py (Python)'
        )
    return PluginCode(language=language, main=main, files=files, plugin_json=config)


def _main(files: dict[str, bytes], declared: Any, digest: str, no_main_message: str) -> str:
    if not declared:
        found = next((name for name in DEFAULT_MAINS if name in files), None)
        if found is None:
            raise PluginLoadError(no_main_message)
        return found
    if not isinstance(declared, str):
        raise PluginLoadError(f'"main" in plugin.json of {digest} is not a file path')
    main = posixpath.normpath(declared)
    if main not in files:
        # Also refuses a main outside the plugin (absolute or `..`): no such key is ever in `files`.
        raise PluginLoadError(f"Could not load {declared} for {digest}!")
    return main
