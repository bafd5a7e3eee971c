"""Rows of the PostHog plugin tables, as the plugin machinery uses them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

Language = Literal["python", "js"]


@dataclass(frozen=True, slots=True)
class PluginAttachment:
    key: str
    content_type: str
    file_name: str
    contents: bytes


@dataclass(frozen=True, slots=True)
class PluginRow:
    """A posthog_plugin row (the code and its declarations)."""

    id: int
    organization_id: str | None
    name: str
    plugin_type: str | None = None
    url: str | None = None
    tag: str | None = None
    archive: bytes | None = None
    source: str | None = None
    is_global: bool = False
    config_schema: Any = None
    capabilities: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    public_jobs: dict[str, Any] | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PluginConfigRow:
    """A posthog_pluginconfig row: one plugin enabled for one team, with its settings."""

    id: int
    team_id: int | None
    plugin_id: int
    enabled: bool
    order: int
    config: dict[str, Any]
    error: Any = None
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PluginConfigInForce:
    """Everything needed to run one plugin config: its row, its plugin and its attachments."""

    config: PluginConfigRow
    plugin: PluginRow
    attachments: dict[str, PluginAttachment] = field(default_factory=dict)

    @property
    def id(self) -> int:
        return self.config.id

    @property
    def version_key(self) -> tuple[datetime | None, datetime | None]:
        """Changes when the config or the plugin changed: a reload keeps the VM while this is equal."""
        return (self.config.updated_at, self.plugin.updated_at)


@dataclass(frozen=True, slots=True)
class PluginCode:
    """A plugin's code, resolved from an archive, a `source` row or a local folder."""

    language: Language
    main: str  # path of the main file inside `files`
    files: dict[str, bytes]  # every file of the plugin by relative path (just `main` for source plugins)
    plugin_json: dict[str, Any] = field(default_factory=dict)
