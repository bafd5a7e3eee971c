"""The direct writer: an EventSink inserting each micro-batch straight into ClickHouse's `events` and
`session_recording_events` tables (one INSERT per table per batch), for installations without the
Kafka engine.

Idempotent on redelivery: the tables are replacing MergeTrees keyed by the event's identity, and the
row's version (`_timestamp`) is the event's capture time `now`, which a redelivered message carries
again, so a second write of an event collapses into the first (reads use FINAL, or wait for merges).
Persons and distinct ids stay in Postgres; their ClickHouse mirror is the person sink's.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from plugin_server.db.postgres import json_text
from plugin_server.ingestion.elements import elements_to_chain
from plugin_server.ingestion.types import PreparedEvent
from plugin_server.jsvalues import js_string
from plugin_server.sinks.clickhouse.client import AsyncClickHouse

EVENT_COLUMNS = (
    "uuid",
    "event",
    "properties",
    "timestamp",
    "team_id",
    "distinct_id",
    "elements_chain",
    "created_at",
    "_timestamp",
    "_offset",
)
RECORDING_COLUMNS = (
    "uuid",
    "timestamp",
    "team_id",
    "distinct_id",
    "session_id",
    "snapshot_data",
    "created_at",
    "_timestamp",
    "_offset",
)


def _version(event: PreparedEvent) -> datetime:
    """The row's `_timestamp` (a DateTime, whole seconds): the same for every delivery of the event."""
    return event.now.astimezone(UTC).replace(microsecond=0)


def event_row(event: PreparedEvent, created_at: datetime) -> list[Any]:
    return [
        event.uuid,
        event.event,
        json_text(event.properties),
        event.timestamp,
        event.team_id,
        event.distinct_id,
        elements_to_chain(event.elements) if event.elements else "",
        created_at,
        _version(event),
        0,
    ]


def recording_row(event: PreparedEvent, created_at: datetime) -> list[Any]:
    return [
        event.uuid,
        event.timestamp,
        event.team_id,
        event.distinct_id,
        js_string(event.properties.get("$session_id") or ""),
        json_text(event.properties.get("$snapshot_data")),
        created_at,
        _version(event),
        0,
    ]


class ClickHouseEventSink:
    """Stores processed events in ClickHouse; recordings ($snapshot) go to their own table."""

    def __init__(self, clickhouse: AsyncClickHouse) -> None:
        self._clickhouse = clickhouse

    async def write(self, events: Sequence[PreparedEvent]) -> None:
        created_at = datetime.now(UTC)
        recordings = [recording_row(event, created_at) for event in events if event.is_snapshot]
        regular = [event_row(event, created_at) for event in events if not event.is_snapshot]
        if regular:
            await self._clickhouse.insert("events", regular, EVENT_COLUMNS)
        if recordings:
            await self._clickhouse.insert("session_recording_events", recordings, RECORDING_COLUMNS)
