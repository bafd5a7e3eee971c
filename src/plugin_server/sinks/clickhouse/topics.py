"""The direct writer's transport: the records the Kafka sinks would produce to ClickHouse's topics,
inserted instead straight into the tables the Kafka engine would have put them in (the `kafka_*` tables,
created with the Null engine when ClickHouse has no Kafka engine: see schema.kafka_statements), whose
materialized views then fill `events`, `person`, the distinct-id and `groups` tables exactly as in
Kafka mode. One INSERT per topic per batch.

It takes the place of the Kafka producer under the same formats (sinks/kafka/original.py and
current.py), so that direct and Kafka mode store the same rows, persons and groups included.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from typing import NamedTuple

from plugin_server.config import Settings
from plugin_server.ingestion.kafka_producer import Record
from plugin_server.sinks.clickhouse.client import AsyncClickHouse, is_in_process
from plugin_server.sinks.clickhouse.schema import EVENTS_PROTO, FEEDS, Formats, KafkaFeed


class ClickHouseTopicWriter:
    """`send(records)` as the Kafka producer's, into ClickHouse's Kafka tables of `formats`.

    `protobuf_schema` is the `format_schema` of protobuf events: `events:Event` (events.proto in the
    server's format_schemas folder) or, for the in-process engine, the file's absolute path.

    An INSERT costs ClickHouse about as much per part as per row (in chDB, 500 rows at once cost 5 times
    as much per row as 5,000), so the batches a worker stores at once share INSERTs: a table's rows wait
    while its previous INSERT runs, and the next takes all that waited. Should that INSERT fail, each
    batch's rows are inserted alone, so that each batch gets its own answer (a bad row fails its own
    batch only)."""

    def __init__(
        self, clickhouse: AsyncClickHouse, formats: Formats, *, prefix: str = "", protobuf_schema: str
    ) -> None:
        self._clickhouse = clickhouse
        self._feeds = {prefix + feed.topic: feed for feed in FEEDS[formats]}
        self._protobuf_schema = protobuf_schema
        self._waiting: dict[str, list[_Rows]] = {}  # by table: rows for its next INSERT
        self._inserting: dict[str, asyncio.Task[None]] = {}  # by table: the task running its INSERTs

    @classmethod
    def for_settings(cls, clickhouse: AsyncClickHouse, settings: Settings) -> ClickHouseTopicWriter:
        """The writer of CLICKHOUSE_KAFKA_FORMAT's records (topics named with KAFKA_PREFIX)."""
        schema = f"{EVENTS_PROTO}:Event" if is_in_process(settings) else "events:Event"
        formats = settings.CLICKHOUSE_KAFKA_FORMAT
        return cls(clickhouse, formats, prefix=settings.KAFKA_PREFIX, protobuf_schema=schema)

    async def send(self, records: Sequence[Record]) -> None:
        """Insert the records, each topic's into its table; returns once all are stored."""
        by_topic: dict[str, list[bytes]] = defaultdict(list)
        for record in records:
            by_topic[record.topic].append(record.value)
        for topic, values in by_topic.items():
            feed = self._feeds.get(topic)
            if feed is None:
                raise ValueError(f"no ClickHouse table reads the topic {topic!r}")
            await self._queue(feed, values)

    async def _queue(self, feed: KafkaFeed, values: list[bytes]) -> None:
        """Wait for `values` to be in the feed's table, inserted with whatever else queued meanwhile."""
        rows = _Rows(values, asyncio.get_running_loop().create_future())
        self._waiting.setdefault(feed.table, []).append(rows)
        if feed.table not in self._inserting:
            self._inserting[feed.table] = asyncio.create_task(self._insert_waiting(feed))
        await rows.stored

    async def _insert_waiting(self, feed: KafkaFeed) -> None:
        """INSERT the rows waiting for the feed's table, again and again while more come."""
        taken: list[_Rows] = []
        try:
            while waiting := self._waiting.pop(feed.table, []):
                taken = waiting
                try:
                    await self._insert(feed, [value for rows in taken for value in rows.values])
                    errors: list[Exception | None] = [None] * len(taken)
                except Exception as failure:
                    alone = [await self._alone(feed, rows) for rows in taken] if len(taken) > 1 else []
                    errors = alone or [failure]
                for rows, error in zip(taken, errors, strict=True):
                    _settle(rows.stored, error)
                taken = []
        finally:
            del self._inserting[feed.table]
            for rows in taken + self._waiting.pop(feed.table, []):  # cancelled (the writer is closing)
                rows.stored.cancel()

    async def _alone(self, feed: KafkaFeed, rows: _Rows) -> Exception | None:
        try:
            await self._insert(feed, rows.values)
        except Exception as error:
            return error
        return None

    async def _insert(self, feed: KafkaFeed, values: list[bytes]) -> None:
        if feed.format == "Protobuf":  # length-delimited messages, one after the other
            schema = {"format_schema": self._protobuf_schema}
            await self._clickhouse.raw_insert(
                feed.table, feed.column_names, b"".join(values), "Protobuf", schema
            )
        else:
            # Fields without a column (project_id, captured_at...) are left out, as the Kafka tables do.
            skip_unknown = {"input_format_skip_unknown_fields": 1}
            await self._clickhouse.raw_insert(feed.table, None, b"\n".join(values), feed.format, skip_unknown)

    async def close(self) -> None:
        """Wait for the INSERTs under way (the client is the caller's, to close after)."""
        await asyncio.gather(*self._inserting.values(), return_exceptions=True)


class _Rows(NamedTuple):
    """One batch's rows for a table, and the future its sender waits on."""

    values: list[bytes]
    stored: asyncio.Future[None]


def _settle(stored: asyncio.Future[None], error: Exception | None) -> None:
    if stored.done():  # its sender stopped waiting
        return
    if error is None:
        stored.set_result(None)
    else:
        stored.set_exception(error)
