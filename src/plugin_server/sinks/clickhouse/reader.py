"""Reads stored events back from ClickHouse's `events` (FINAL: each event once), for the historical
export (plugins/historical.py's `StoredEvents`).

The client is opened at the first read, not when the worker starts: a worker whose events go to
ClickHouse through Kafka does not need to reach ClickHouse until a plugin exports its history, and a
ClickHouse that cannot be reached then is a failed read (the page is tried again later)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import orjson
from clickhouse_connect.driver.client import Client

from plugin_server.ingestion.elements import chain_to_elements
from plugin_server.reads.connection import ClickHouseConnection

_PAGE = """
    SELECT uuid, event, distinct_id, properties, elements_chain, team_id, timestamp, created_at
    FROM events FINAL
    WHERE team_id = {team_id:Int64} AND timestamp >= {start:DateTime64(6, 'UTC')}
        AND timestamp < {until:DateTime64(6, 'UTC')}
    ORDER BY timestamp, uuid
    LIMIT {limit:UInt32} OFFSET {offset:UInt64}"""
_BOUNDARIES = """
    SELECT min(timestamp) AS first, max(timestamp) AS last, count() AS stored
    FROM events WHERE team_id = {team_id:Int64}"""


def aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class ClickHouseStoredEvents:
    source_db = "clickhouse"

    def __init__(self, connect: Callable[[], Client]) -> None:
        """`connect` opens the client (blocking: it runs in a thread)."""
        self._clickhouse = ClickHouseConnection(connect)

    async def _rows(self, sql: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        async with self._clickhouse.client() as client:
            return await client.rows(sql, parameters)

    async def close(self) -> None:
        await self._clickhouse.close()

    async def boundaries(self, team_id: int) -> tuple[datetime | None, datetime | None]:
        rows = await self._rows(_BOUNDARIES, {"team_id": team_id})
        if not rows or not rows[0]["stored"]:
            return None, None
        return aware(rows[0]["first"]), aware(rows[0]["last"])

    async def page(
        self, team_id: int, start: datetime, until: datetime, offset: int, limit: int
    ) -> list[dict[str, Any]]:
        parameters = {"team_id": team_id, "start": start, "until": until, "offset": offset, "limit": limit}
        return [
            {
                "uuid": row["uuid"],
                "event": row["event"],
                "distinct_id": row["distinct_id"],
                "properties": orjson.loads(row["properties"] or "{}"),
                # As the Postgres sink stores them (posthog_event.elements).
                "elements": [asdict(element) for element in chain_to_elements(row["elements_chain"])],
                "team_id": row["team_id"],
                "timestamp": aware(row["timestamp"]),
                "created_at": aware(row["created_at"]),
            }
            for row in await self._rows(_PAGE, parameters)
        ]
