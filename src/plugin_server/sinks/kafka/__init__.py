"""The ClickHouse sinks through Kafka: events, persons, distinct ids, groups, recordings and plugin logs
go to the topics that ClickHouse's Kafka-engine tables read, in the original plugin server's formats
(original.py) or today's PostHog's (current.py), over the server's one producer
(ingestion/kafka_producer.py). Each `write` returns once the broker has acknowledged every record of the
batch, so the source acknowledges the batch only after that.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Protocol

from plugin_server.ingestion.kafka_producer import Record
from plugin_server.ingestion.persons import Key, PersonRow
from plugin_server.ingestion.types import PreparedEvent
from plugin_server.sinks import NO_PERSONS, PersonSinkRow
from plugin_server.sinks.kafka.records import KafkaFormat, recording_record

PersonLookup = Callable[[Iterable[Key]], Awaitable[dict[Key, PersonRow]]]


class RecordSender(Protocol):
    """Where the records go: the Kafka producer, or the direct writer's inserts into ClickHouse
    (sinks/clickhouse/topics.py). The records are a whole batch, stored at once (the producer sends them
    without its linger); returns once every one is stored; raises otherwise."""

    async def send(self, records: Sequence[Record]) -> None: ...


class KafkaEventSink:
    """Events to the events topic, `$snapshot` events to the session recording topic.

    A format that puts the person in the event record (today's) takes the persons the batch's person
    step left, and reads those of the other distinct ids with `persons` (after the step committed them).
    """

    def __init__(self, producer: RecordSender, format: KafkaFormat, persons: PersonLookup) -> None:
        self._producer = producer
        self._format = format
        self._persons = persons

    async def write(
        self, events: Sequence[PreparedEvent], persons: Mapping[Key, PersonRow] = NO_PERSONS
    ) -> None:
        if not events:
            return
        found: dict[Key, PersonRow] = {}
        if self._format.needs_persons:
            found = {**persons}
            unknown = {
                key
                for event in events
                if not event.is_snapshot and (key := (event.team_id, event.distinct_id)) not in found
            }
            if unknown:
                found.update(await self._persons(unknown))
        record = self._format.event_records(found, datetime.now(UTC))
        prefix = self._format.prefix
        await self._producer.send(
            [recording_record(event, prefix) if event.is_snapshot else record(event) for event in events]
        )


class KafkaPersonSink:
    """Person, distinct-id and group rows to their topics, in the order given."""

    def __init__(self, producer: RecordSender, format: KafkaFormat) -> None:
        self._producer = producer
        self._format = format

    async def write(self, rows: Sequence[PersonSinkRow]) -> None:
        records = [record for row in rows for record in self._format.row_records(row)]
        if records:
            await self._producer.send(records)
