"""The original plugin server's ClickHouse topics (2021, reference §8.3): protobuf events on
`clickhouse_events_proto`, persons on `clickhouse_person`, distinct ids on `clickhouse_person_unique_id`
(a CollapsingMergeTree: a move sends the new owner with is_deleted 0 and the old one with is_deleted 1),
groups on `clickhouse_groups`.

The original sent person, distinct-id and group records without a key; here they are keyed by the row
they change (person uuid, team and distinct id, team and group), so that the changes of one row stay in
order on one partition. ClickHouse does not read keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from plugin_server.ingestion.elements import elements_to_chain
from plugin_server.ingestion.groups import GroupRow
from plugin_server.ingestion.kafka_producer import Record
from plugin_server.ingestion.persons import DistinctIdRow, Key, PersonRow
from plugin_server.ingestion.types import PreparedEvent
from plugin_server.jsvalues import json_bytes, json_text
from plugin_server.sinks import PersonSinkRow
from plugin_server.sinks.kafka.protobuf import Event, delimited
from plugin_server.sinks.kafka.records import EventRecords
from plugin_server.sinks.kafka.timestamps import clickhouse_ms, clickhouse_seconds

EVENTS = "clickhouse_events_proto"
PERSONS = "clickhouse_person"
DISTINCT_IDS = "clickhouse_person_unique_id"
GROUPS = "clickhouse_groups"


class OriginalFormat:
    needs_persons = False

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def event_records(self, persons: Mapping[Key, PersonRow], now: datetime) -> EventRecords:
        topic, created_at = self.prefix + EVENTS, clickhouse_ms(now)

        def record(event: PreparedEvent) -> Record:
            message = Event(
                uuid=event.uuid,
                event=event.event,
                properties=json_text(event.properties),
                timestamp=clickhouse_ms(event.timestamp),
                team_id=event.team_id,
                distinct_id=event.distinct_id,
                created_at=created_at,  # the time of ingestion, as the original's createEvent
                elements_chain=elements_to_chain(event.elements) if event.elements else "",
            )
            return Record(topic, delimited(message), event.uuid.encode())

        return record

    def row_records(self, row: PersonSinkRow) -> list[Record]:
        if isinstance(row, PersonRow):
            return [Record(self.prefix + PERSONS, json_bytes(person_value(row)), row.uuid.encode())]
        if isinstance(row, DistinctIdRow):
            distinct_id = {
                "distinct_id": row.distinct_id,
                "person_id": row.person_uuid,
                "team_id": row.team_id,
                "is_deleted": int(row.is_deleted),
            }
            key = f"{row.team_id}:{row.distinct_id}".encode()
            return [Record(self.prefix + DISTINCT_IDS, json_bytes(distinct_id), key)]
        return [Record(self.prefix + GROUPS, json_bytes(group_value(row)), group_key(row))]


def person_value(row: PersonRow) -> dict[str, object]:
    return {
        "id": row.uuid,
        "created_at": clickhouse_seconds(row.created_at),
        "properties": json_text(row.properties),
        "team_id": row.team_id,
        "is_identified": row.is_identified,
        "is_deleted": int(row.is_deleted),
    }


def group_value(row: GroupRow) -> dict[str, object]:
    return {
        "group_type_index": row.group_type_index,
        "group_key": row.group_key,
        "team_id": row.team_id,
        "group_properties": json_text(row.properties),
        "created_at": clickhouse_seconds(row.created_at),
    }


def group_key(row: GroupRow) -> bytes:
    return f"{row.team_id}:{row.group_type_index}:{row.group_key}".encode()
