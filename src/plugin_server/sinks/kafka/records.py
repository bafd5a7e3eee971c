"""What both formats share: the record of a session recording snapshot and of a plugin log entry (the
topics today's PostHog still reads them from), and the shape of a format."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Protocol

from plugin_server.ingestion.kafka_producer import Record
from plugin_server.ingestion.persons import Key, PersonRow
from plugin_server.ingestion.types import PreparedEvent
from plugin_server.jsvalues import js_string, json_bytes, json_text
from plugin_server.plugins.meta.logs import PluginLogEntry
from plugin_server.sinks import PersonSinkRow
from plugin_server.sinks.kafka.timestamps import clickhouse_ms

SESSION_RECORDING_EVENTS = "clickhouse_session_recording_events"
PLUGIN_LOG_ENTRIES = "plugin_log_entries"


EventRecords = Callable[[PreparedEvent], Record]


class KafkaFormat(Protocol):
    """How events and person, distinct-id and group rows become records of ClickHouse's topics (named
    with KAFKA_PREFIX in front)."""

    prefix: str
    # Whether `event_records` needs the persons of the events' distinct ids (read after the person step).
    needs_persons: bool

    def event_records(self, persons: Mapping[Key, PersonRow], now: datetime) -> EventRecords:
        """What makes the records of one batch's events, ingested `now`, with these persons (what the
        batch's events share, formatted once)."""
        ...

    def row_records(self, row: PersonSinkRow) -> list[Record]: ...


def recording_record(event: PreparedEvent, prefix: str) -> Record:
    """A `$snapshot` event for `clickhouse_session_recording_events`, keyed by its uuid."""
    timestamp = clickhouse_ms(event.timestamp)
    value = {
        "uuid": event.uuid,
        "team_id": event.team_id,
        "distinct_id": event.distinct_id,
        "session_id": js_string(event.properties.get("$session_id") or ""),
        "snapshot_data": json_text(event.properties.get("$snapshot_data")),
        "timestamp": timestamp,
        "created_at": timestamp,
    }
    return Record(prefix + SESSION_RECORDING_EVENTS, json_bytes(value), event.uuid.encode())


def log_entry_record(entry: PluginLogEntry, prefix: str) -> Record:
    """A plugin log entry for `plugin_log_entries`, keyed by its id."""
    value = {
        "id": entry.id,
        "team_id": entry.team_id,
        "plugin_id": entry.plugin_id,
        "plugin_config_id": entry.plugin_config_id,
        "timestamp": clickhouse_ms(entry.timestamp),
        "source": entry.source.value,
        "type": entry.type.value,
        "message": entry.message,
        "instance_id": entry.instance_id,
    }
    return Record(prefix + PLUGIN_LOG_ENTRIES, json_bytes(value), entry.id.encode())
