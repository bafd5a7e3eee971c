"""The readers of EVENT_STORE=clickhouse-*: ClickHouse's `events` (and, with clickhouse-kafka, its
`plugin_log_entries`), read with FINAL so that a redelivered row shows once, over a ClickHouseConnection
(connection.py: opened at the first read, so that a ClickHouse that is down fails the reads, 503, and
readiness, not the capture API)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from plugin_server.plugins.meta.logs import PluginLogEntry
from plugin_server.reads import DEFAULT_LIMIT, LOG_COLUMNS, LogQuery, StoredEvent, log_entry
from plugin_server.reads.connection import ClickHouseConnection
from plugin_server.sinks.clickhouse.reader import aware

_RECENT_EVENTS = """
    SELECT toString(uuid) AS uuid, event, distinct_id, timestamp, properties FROM events FINAL
    WHERE team_id = {team:Int64} AND timestamp >= {since:DateTime64(6, 'UTC')}
        AND startsWith(distinct_id, {prefix:String})
    ORDER BY timestamp DESC, uuid DESC LIMIT {limit:UInt32}"""
# The newest events are looked for in the last day first, then further back until there are enough:
# the sorting key starts with (team_id, toDate(timestamp)), so a window reads only its days, not all of
# a large team's events (which FINAL would have to merge).
_WINDOWS = (timedelta(days=1), timedelta(days=7), timedelta(days=31), timedelta(days=366))
_EVER = datetime(1970, 1, 1, tzinfo=UTC)
_MATCHING_LOGS = f"""
    SELECT {LOG_COLUMNS} FROM plugin_log_entries FINAL
    WHERE plugin_config_id = {{config:Int64}}
        AND (empty({{types:Array(String)}}) OR has({{types:Array(String)}}, type))
        AND positionCaseInsensitiveUTF8(message, {{text:String}}) > 0"""
_NEWEST_LOGS = f"""SELECT * FROM ({_MATCHING_LOGS} ORDER BY timestamp DESC, id DESC LIMIT {{limit:UInt32}})
    ORDER BY timestamp, id"""
_LOGS_AFTER = f"""{_MATCHING_LOGS}
        AND (timestamp, id) > ({{at:DateTime64(6, 'UTC')}}, {{after:UUID}})
    ORDER BY timestamp, id LIMIT {{limit:UInt32}}"""
_ENTRY_TIME = """SELECT timestamp FROM plugin_log_entries
    WHERE id = {after:UUID} AND plugin_config_id = {config:Int64} LIMIT 1"""


class ClickHouseReads:
    """Both readers, over one connection (the log reader is used only with clickhouse-kafka)."""

    def __init__(self, clickhouse: ClickHouseConnection) -> None:
        self._clickhouse = clickhouse

    async def recent_events(
        self, team_id: int, distinct_id: str = "", limit: int = DEFAULT_LIMIT
    ) -> list[StoredEvent]:
        now = datetime.now(UTC)
        async with self._clickhouse.client() as client:
            for since in [now - window for window in _WINDOWS] + [_EVER]:
                parameters = {"team": team_id, "since": since, "prefix": distinct_id, "limit": limit}
                rows = await client.rows(_RECENT_EVENTS, parameters)
                if len(rows) >= limit:
                    break
        return [
            StoredEvent(
                uuid=row["uuid"],
                event=row["event"],
                distinct_id=row["distinct_id"],
                timestamp=aware(row["timestamp"]),
                properties=orjson.loads(row["properties"] or "{}"),
            )
            for row in rows
        ]

    async def log_entries(self, query: LogQuery) -> list[PluginLogEntry]:
        after = query.after_id()
        parameters: dict[str, Any] = {
            "config": query.plugin_config_id,
            "limit": query.limit,
            "types": list(query.types),
            "text": query.text,
        }
        async with self._clickhouse.client() as client:
            if after is None:
                rows = await client.rows(_NEWEST_LOGS, parameters)
            else:
                # The entry's time first: a scalar subquery that finds nothing would compare with zeros.
                found = await client.rows(_ENTRY_TIME, {**parameters, "after": after})
                if not found:
                    return []
                rows = await client.rows(
                    _LOGS_AFTER, {**parameters, "after": after, "at": found[0]["timestamp"]}
                )
        return [log_entry({**row, "timestamp": aware(row["timestamp"])}) for row in rows]
