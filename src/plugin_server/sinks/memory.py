"""Sinks that keep what they are given, for tests of the pipeline that are not about storage."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from plugin_server.ingestion.persons import Key, PersonRow
from plugin_server.ingestion.types import PreparedEvent
from plugin_server.sinks import NO_PERSONS, PersonSinkRow


class ListEventSink:
    """Keeps each event once per (team, uuid), as the real sinks store them."""

    def __init__(self) -> None:
        self.events: dict[tuple[int, str], PreparedEvent] = {}

    async def write(
        self, events: Sequence[PreparedEvent], persons: Mapping[Key, PersonRow] = NO_PERSONS
    ) -> None:
        for event in events:
            self.events.setdefault((event.team_id, event.uuid), event)


class ListPersonSink:
    """Keeps every row it is given, in order, as a list of the writes."""

    def __init__(self) -> None:
        self.writes: list[list[PersonSinkRow]] = []

    @property
    def rows(self) -> list[PersonSinkRow]:
        return [row for write in self.writes for row in write]

    async def write(self, rows: Sequence[PersonSinkRow]) -> None:
        self.writes.append(list(rows))
