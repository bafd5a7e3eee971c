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
    """A row of PLUGIN_COLUMNS (its keys are PluginRow's fields)."""
    organization_id, archive = row["organization_id"], row["archive"]
    return PluginRow(
        **{
            **row,
            "organization_id": None if organization_id is None else str(organization_id),
            "archive": None if archive is None else bytes(archive),
            "capabilities": row["capabilities"] or {},
        }
    )


def config_from_row(row: dict[str, Any]) -> PluginConfigRow:
    """A row of CONFIG_COLUMNS (its keys are PluginConfigRow's fields)."""
    return PluginConfigRow(**{**row, "config": row["config"] or {}})


def attachment_from_row(row: dict[str, Any]) -> PluginAttachment:
    return PluginAttachment(
        key=row["key"],
        content_type=row["content_type"],
        file_name=row["file_name"],
        contents=bytes(row["contents"] or b""),
    )
