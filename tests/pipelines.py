"""A pipeline over real Postgres with the sinks a test chooses, Celery messages to feed it, and prepared
events to hand its sinks."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool

from plugin_server.ingestion.celery import PROCESS_EVENT_TASK, encode_task
from plugin_server.ingestion.definitions import DefinitionsManager
from plugin_server.ingestion.groups import GroupTypeManager
from plugin_server.ingestion.person_outbox import PersonOutbox
from plugin_server.ingestion.persons import PersonManager
from plugin_server.ingestion.pipeline import EventPipeline
from plugin_server.ingestion.teams import TeamManager
from plugin_server.ingestion.types import PreparedEvent
from plugin_server.jsvalues import json_bytes
from plugin_server.sinks import EventSink, PersonSink

NOW = "2021-11-28T10:00:00.000Z"
EVENT_TIME = "2021-11-28T09:59:58.123Z"


def pipeline(
    pool: AsyncConnectionPool[Any],
    sink: EventSink,
    person_sink: PersonSink,
    outbox: PersonOutbox | None = None,
) -> EventPipeline:
    return EventPipeline(
        teams=TeamManager(pool),
        definitions=DefinitionsManager(pool),
        groups=GroupTypeManager(pool),
        persons=PersonManager(pool, lru_size=100, outbox=outbox),
        sink=sink,
        person_sink=person_sink,
    )


def message(
    team_id: int, distinct_id: str, event: str, properties: dict[str, Any], task_id: str | None = None
) -> bytes:
    """A Celery process_event message captured at NOW, of an event at EVENT_TIME (the same task id gives
    the same event uuid, as a redelivery does)."""
    data = {"event": event, "properties": properties, "timestamp": EVENT_TIME}
    args = [distinct_id, "1.2.3.4", "http://example.com", data, team_id, NOW, NOW]
    return encode_task(PROCESS_EVENT_TASK, args, queue="posthog-plugins", task_id=task_id)


def prepared_event(team_id: int, text: str = "plain", **fields: Any) -> PreparedEvent:
    """An event as the rules hand it to the sinks (a fresh uuid, `text` in its name, person and
    properties), `fields` set on top."""
    moment = datetime(2026, 12, 3, 10, 0, 0, 123000, tzinfo=UTC)
    values: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "team_id": team_id,
        "distinct_id": f"person {text}",
        "ip": None,
        "site_url": "https://example.com",
        "event": f"event {text}",
        "properties": {"text": text, "nested": {"list": [text, 1, 2.5, None, True]}},
        "timestamp": moment,
        "now": moment,
        "sent_at": None,
    }
    return PreparedEvent(**{**values, **fields})


class WrittenFrom:
    """A JSON writer for the sinks (json_bytes) that remembers what it was given."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any) -> bytes:
        self.values.append(value)
        return json_bytes(value)
