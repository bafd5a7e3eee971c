"""Columns of the plugin tables as selected by this package, and their rows (as dicts) as model objects."""

from __future__ import annotations

from typing import Any

from plugin_server.plugins.models import PluginAttachment, PluginConfigRow, PluginRow

PLUGIN_COLUMNS = (
    "id, organization_id, COALESCE(name, '') AS name, plugin_type, url, tag, archive, source, is_global, "
    "config_schema, capabilities, metrics, public_jobs, updated_at"
)
CONFIG_COLUMNS = 'id, team_id, plugin_id, enabled, "order", config, error, updated_at'
ATTACHMENT_COLUMNS = "plugin_config_id, key, content_type, file_name, contents"


def plugin_from_row(row: dict[str, Any]) -> PluginRow:
    organization_id = row["organization_id"]
    return PluginRow(
        id=row["id"],
        organization_id=None if organization_id is None else str(organization_id),
        name=row["name"],
        plugin_type=row["plugin_type"],
        url=row["url"],
        tag=row["tag"],
        archive=None if row["archive"] is None else bytes(row["archive"]),
        source=row["source"],
        is_global=row["is_global"],
        config_schema=row["config_schema"],
        capabilities=row["capabilities"] or {},
        metrics=row["metrics"],
        public_jobs=row["public_jobs"],
        updated_at=row["updated_at"],
    )


def config_from_row(row: dict[str, Any]) -> PluginConfigRow:
    return PluginConfigRow(
        id=row["id"],
        team_id=row["team_id"],
        plugin_id=row["plugin_id"],
        enabled=row["enabled"],
        order=row["order"],
        config=row["config"] or {},
        error=row["error"],
        updated_at=row["updated_at"],
    )


def attachment_from_row(row: dict[str, Any]) -> PluginAttachment:
    return PluginAttachment(
        key=row["key"],
        content_type=row["content_type"],
        file_name=row["file_name"],
        contents=bytes(row["contents"] or b""),
    )
