"""The readers of EVENT_STORE=postgres: posthog_event and posthog_pluginlogentry (plugin logs live in
Postgres with clickhouse-direct too).

Each read has a connection of its own, as the operator API's and the console's other database calls
(web/admin.py): reads are rare, and the web process's pool stays free for capture."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from plugin_server.db.postgres import escape_like
from plugin_server.plugins.meta.logs import PluginLogEntry
from plugin_server.reads import DEFAULT_LIMIT, LOG_COLUMNS, LogQuery, Reads, StoredEvent, log_entry

_RECENT_EVENTS = """
    SELECT uuid::text AS uuid, event, distinct_id, timestamp, properties FROM posthog_event
    WHERE team_id = %(team)s AND distinct_id LIKE %(prefix)s
    ORDER BY timestamp DESC, id DESC LIMIT %(limit)s"""
_MATCHING_LOGS = f"""SELECT {LOG_COLUMNS} FROM posthog_pluginlogentry WHERE plugin_config_id = %(config)s
    AND (cardinality(%(types)s::text[]) = 0 OR type = ANY(%(types)s::text[]))
    AND message ILIKE %(text)s"""
_NEWEST_LOGS = f"""SELECT * FROM ({_MATCHING_LOGS} ORDER BY timestamp DESC, id DESC LIMIT %(limit)s) newest
    ORDER BY timestamp, id"""
_LOGS_AFTER = f"""{_MATCHING_LOGS}
    AND (timestamp, id) > (SELECT timestamp, id FROM posthog_pluginlogentry WHERE id = %(after)s)
    ORDER BY timestamp, id LIMIT %(limit)s"""


class PostgresReads:
    """Both readers, of the database at `database_url`."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url

    async def _rows(self, sql: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        connection = await psycopg.AsyncConnection.connect(self._url, autocommit=True, row_factory=dict_row)
        async with connection:
            return await (await connection.execute(sql, parameters)).fetchall()

    async def recent_events(
        self, team_id: int, distinct_id: str = "", limit: int = DEFAULT_LIMIT
    ) -> list[StoredEvent]:
        parameters = {"team": team_id, "prefix": escape_like(distinct_id) + "%", "limit": limit}
        return [StoredEvent(**row) for row in await self._rows(_RECENT_EVENTS, parameters)]

    async def log_entries(self, query: LogQuery) -> list[PluginLogEntry]:
        after = query.after_id()
        parameters = {
            "config": query.plugin_config_id,
            "after": after,
            "limit": query.limit,
            "types": list(query.types),
            "text": f"%{escape_like(query.text)}%",
        }
        rows = await self._rows(_NEWEST_LOGS if after is None else _LOGS_AFTER, parameters)
        return [log_entry(row) for row in rows]


def postgres_reads(database_url: str) -> Reads:
    """Events and plugin logs both from Postgres."""
    reads = PostgresReads(database_url)
    return Reads(events=reads, logs=reads)
