"""Today's PostHog ClickHouse topics (posthog-today-formats.md; PostHog's `nodejs/` ingestion of 2025-26):
JSON events with person columns on `clickhouse_events_json`, persons with their version on
`clickhouse_person`, distinct ids with their version on `clickhouse_person_distinct_id` (a
ReplacingMergeTree on version, so a move is one record: the new owner at the next version), groups on
`clickhouse_groups`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

from plugin_server.ingestion.elements import elements_to_chain
from plugin_server.ingestion.kafka_producer import Record
from plugin_server.ingestion.persons import DistinctIdRow, Key, PersonRow
from plugin_server.ingestion.types import PreparedEvent
from plugin_server.jsvalues import js_string, json_bytes, json_text
from plugin_server.sinks import PersonSinkRow
from plugin_server.sinks.kafka.original import GROUPS, PERSONS, group_key, group_value, person_value
from plugin_server.sinks.kafka.records import EventRecords
from plugin_server.sinks.kafka.timestamps import clickhouse_ms, clickhouse_seconds, shared_clickhouse_ms

EVENTS = "clickhouse_events_json"
DISTINCT_IDS = "clickhouse_person_distinct_id"

# PostHog's namespace for the uuid of a distinct id without a person (uuidFromDistinctId).
PERSONLESS_NAMESPACE = uuid.UUID("932979b4-65c3-4424-8467-0b66ec27bc22")
# A deleted person's record carries its version plus this, as PostHog's delete_person sends it.
DELETED_VERSION_STEP = 100


def personless_uuid(team_id: int, distinct_id: str) -> str:
    return str(uuid.uuid5(PERSONLESS_NAMESPACE, f"{team_id}:{distinct_id}"))


class _PersonColumns(NamedTuple):
    person_id: str
    properties: dict[str, Any]
    properties_json: str
    created_at: str  # to the second


# Values whose equality means the same JSON (not floats: 0.0 == -0.0), checked with their type.
_PLAIN_TYPES = frozenset({str, int, bool, type(None)})


def _sets_nothing_new(properties: Mapping[str, Any], to_set: Mapping[str, Any]) -> bool:
    """Whether `{**properties, **to_set}` is `properties` as it is, key order included: every value
    to set is there already, of the same plain type. (The person step applied the events' $set, so
    this is what most events with a $set find.)"""
    for key, value in to_set.items():
        kind = type(value)
        if kind not in _PLAIN_TYPES or key not in properties:
            return False
        present = properties[key]
        if type(present) is not kind or present != value:
            return False
    return True


class _EventRecords:
    """The records of one batch's events: each event with its person as the person step left it (plus
    the event's own $set). What events share is formatted once per batch: the ingestion time, and each
    distinct id's person columns (a person's time, from Postgres with a time zone, costs a conversion
    each time; a personless id's uuid is a uuid5; its properties as JSON, for the events whose $set
    changes nothing in them)."""

    __slots__ = ("_columns", "_created_at", "_now", "_persons", "_topic")

    def __init__(self, topic: str, persons: Mapping[Key, PersonRow], now: datetime) -> None:
        self._topic = topic
        self._persons = persons
        self._now = now
        self._created_at = clickhouse_ms(now)
        self._columns: dict[Key, _PersonColumns] = {}

    def __call__(self, event: PreparedEvent) -> Record:
        key = (event.team_id, event.distinct_id)
        person = self._columns.get(key)
        if person is None:
            person = self._columns[key] = self._person_columns(key)
        properties, chain = event.properties, None
        if "$elements_chain" in properties or "$elements" in properties:  # rare: copied only then
            properties = dict(properties)
            chain = properties.pop("$elements_chain", None)
            properties.pop("$elements", None)
        if event.elements:
            chain = elements_to_chain(event.elements)
        to_set = properties.get("$set")
        if isinstance(to_set, dict) and not _sets_nothing_new(person.properties, to_set):
            person_properties = json_text({**person.properties, **to_set})
        else:
            person_properties = person.properties_json
        value = {
            "uuid": event.uuid,
            "event": event.event,
            "properties": json_text(properties),
            "timestamp": clickhouse_ms(event.timestamp),
            "team_id": event.team_id,
            "project_id": event.team_id,
            "distinct_id": event.distinct_id,
            "elements_chain": js_string(chain) if chain else "",
            "created_at": self._created_at,
            "captured_at": shared_clickhouse_ms(event.now),
            "person_id": person.person_id,
            "person_properties": person_properties,
            "person_created_at": person.created_at,
            "person_mode": "full",
        }
        track = b"llma" if event.event.startswith("$ai_") else b"general"
        return Record(self._topic, json_bytes(value), event.uuid.encode(), [("productTrack", track)])

    def _person_columns(self, key: Key) -> _PersonColumns:
        person = self._persons.get(key)
        if person is None:
            return _PersonColumns(personless_uuid(*key), {}, "{}", clickhouse_seconds(self._now))
        return _PersonColumns(
            person.uuid,
            person.properties,
            json_text(person.properties),
            clickhouse_seconds(person.created_at),
        )


class CurrentFormat:
    needs_persons = True

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def event_records(self, persons: Mapping[Key, PersonRow], now: datetime) -> EventRecords:
        return _EventRecords(self.prefix + EVENTS, persons, now)

    def row_records(self, row: PersonSinkRow) -> list[Record]:
        if isinstance(row, PersonRow):
            person = {
                **person_value(row),
                "is_identified": int(row.is_identified),
                "version": row.version + (DELETED_VERSION_STEP if row.is_deleted else 0),
                "last_seen_at": None,
            }
            return [Record(self.prefix + PERSONS, json_bytes(person), row.uuid.encode())]
        if isinstance(row, DistinctIdRow):
            if row.is_deleted:
                return []  # the id's new owner, at a higher version, replaces it
            distinct_id = {
                "distinct_id": row.distinct_id,
                "person_id": row.person_uuid,
                "team_id": row.team_id,
                "version": row.version,
                "is_deleted": 0,
            }
            key = f"{row.team_id}:{row.distinct_id}".encode()
            return [Record(self.prefix + DISTINCT_IDS, json_bytes(distinct_id), key)]
        group = {**group_value(row), "version": 0}
        return [Record(self.prefix + GROUPS, json_bytes(group), group_key(row))]
