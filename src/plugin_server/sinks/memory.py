"""An EventSink that keeps what it is given, for tests of the pipeline that are not about storage."""

from __future__ import annotations

from collections.abc import Sequence

from plugin_server.ingestion.types import PreparedEvent


class ListEventSink:
    """Keeps each event once per (team, uuid), as the real sinks store them."""

    def __init__(self) -> None:
        self.events: dict[tuple[int, str], PreparedEvent] = {}

    async def write(self, events: Sequence[PreparedEvent]) -> None:
        for event in events:
            self.events.setdefault((event.team_id, event.uuid), event)
