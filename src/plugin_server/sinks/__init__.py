"""Where processed events, and the person and group changes they caused, are stored: two small
interfaces, implementations side by side.

Events: `postgres.PostgresEventSink` stores them in PostHog's Postgres tables; `kafka.KafkaEventSink`
sends them to ClickHouse's topics; `memory.ListEventSink` keeps them in a list, for tests of the
pipeline that are not about storage.

Persons, distinct ids and groups: Postgres is the source of truth of persons and distinct ids, written
by the person manager (ingestion/persons.py) before any sink sees them. A `PersonSink` mirrors the rows
committed there, and the groups `$groupidentify` set, into a store of its own: `kafka.KafkaPersonSink`
to ClickHouse's topics; `postgres.PostgresPersonSink` does nothing (Postgres is already the store);
`memory.ListPersonSink` keeps them for tests.

The pipeline awaits both sinks before the batch is acknowledged, so a sink's failure redelivers the
batch; the rows carry what lets a mirror collapse what it gets twice (uuids, versions, timestamps). A
mirror's person rows are also kept in an outbox until it took them (ingestion/person_outbox.py), as a
redelivered batch finds its persons written and writes (and answers) nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Protocol

from plugin_server.ingestion.groups import GroupRow
from plugin_server.ingestion.persons import DistinctIdRow, Key, PersonRow
from plugin_server.ingestion.types import PreparedEvent

# One row a PersonSink mirrors: a person, a distinct id's owner, or a group.
PersonSinkRow = PersonRow | DistinctIdRow | GroupRow
NO_PERSONS: Mapping[Key, PersonRow] = MappingProxyType({})


class EventSink(Protocol):
    """Stores a micro-batch of processed events. Writes are idempotent on (team, uuid): a batch
    delivered again stores nothing twice. Raises when the batch could not be stored (the batch is
    then retried or split; see ingestion/batches.py). `persons`: persons of some of the events'
    distinct ids, as the batch's person step left them, for a sink that stores them with the events
    (it reads the others)."""

    async def write(
        self, events: Sequence[PreparedEvent], persons: Mapping[Key, PersonRow] = NO_PERSONS
    ) -> None: ...


class PersonSink(Protocol):
    """Mirrors the person, distinct-id and group rows of a micro-batch, in the order they were committed
    to Postgres (groups: in event order). Returns once every row is stored; raises otherwise (the rows
    are then handed to the next write, and the batch is retried)."""

    async def write(self, rows: Sequence[PersonSinkRow]) -> None: ...
