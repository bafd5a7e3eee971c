"""Where processed events are stored: one small interface, implementations side by side.

`postgres.PostgresEventSink` stores them in PostHog's Postgres tables; `memory.ListEventSink` keeps
them in a list, for tests of the pipeline that are not about storage. A ClickHouse sink (through
Kafka or direct) is the next one (issue 11). Persons and groups are still written by the person
manager straight to Postgres, their source of truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from plugin_server.ingestion.types import PreparedEvent


class EventSink(Protocol):
    """Stores a micro-batch of processed events. Writes are idempotent on (team, uuid): a batch
    delivered again stores nothing twice. Raises when the batch could not be stored (the batch is
    then retried or split; see ingestion/batches.py)."""

    async def write(self, events: Sequence[PreparedEvent]) -> None: ...
