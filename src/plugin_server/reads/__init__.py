"""What the console, the operator API and the CLI read back: a team's newest events and a plugin config's
log entries, from where EVENT_STORE keeps them. `topology.open_reads` picks the readers: Postgres
(postgres.py) or ClickHouse (clickhouse.py, over connection.py's client, which the historical export's
reader shares). Persons always come from Postgres (db/browse.py).

A reader that cannot read raises `ReadFailed` (the web answers 503)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from plugin_server.plugins.admin import AdminError
from plugin_server.plugins.historical import ReadFailed
from plugin_server.plugins.meta.logs import LogSource, LogType, PluginLogEntry

__all__ = ["DEFAULT_LIMIT", "EventReader", "LogQuery", "LogReader", "ReadFailed", "Reads", "StoredEvent"]

DEFAULT_LIMIT = 50
# Of the log table, in either store.
LOG_COLUMNS = "id, team_id, plugin_id, plugin_config_id, timestamp, source, type, message, instance_id"


@dataclass(frozen=True, slots=True)
class StoredEvent:
    uuid: str | None  # Postgres: NULL in rows written before this server (migration 0002)
    event: str | None
    distinct_id: str
    timestamp: datetime
    properties: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LogQuery:
    """Log entries of a plugin config, oldest first: the newest `limit`, or the first `limit` after the
    entry with id `after` (to follow the log). With `types` only entries of those types (DEBUG, LOG,
    INFO, WARN, ERROR), with `text` only those whose message contains it (any case).

    Entries are ordered by (timestamp, id); an entry written later with an older timestamp than
    `after` is not returned by a later call, nor is anything after an id that is not stored."""

    plugin_config_id: int
    limit: int = 100
    after: str | None = None
    types: Collection[str] = ()
    text: str = ""

    def after_id(self) -> uuid.UUID | None:
        try:
            return None if self.after is None else uuid.UUID(self.after)
        except ValueError:
            raise AdminError(f"{self.after!r} is not a log entry id (a UUID)") from None


def log_entry(row: dict[str, Any]) -> PluginLogEntry:
    """An entry from a row of the log table's columns (either store's)."""
    return PluginLogEntry(
        **{
            **row,
            "id": str(row["id"]),
            "instance_id": str(row["instance_id"]),
            "source": LogSource(row["source"]),
            "type": LogType(row["type"]),
        }
    )


class EventReader(Protocol):
    async def recent_events(
        self, team_id: int, distinct_id: str = "", limit: int = DEFAULT_LIMIT
    ) -> list[StoredEvent]:
        """The team's newest events, newest first, those of distinct ids starting with `distinct_id`."""
        ...


class LogReader(Protocol):
    async def log_entries(self, query: LogQuery) -> list[PluginLogEntry]: ...


@dataclass(frozen=True)
class Reads:
    """The readers of one EVENT_STORE, and the readiness probe of the store besides Postgres (None for
    Postgres, which readiness checks anyway): an awaitable answering None or what is wrong."""

    events: EventReader
    logs: LogReader
    probe: Callable[[], Coroutine[Any, Any, str | None]] | None = None
