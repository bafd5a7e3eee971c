"""The direct writer's transport: the records the Kafka sinks would produce to ClickHouse's topics,
inserted instead straight into the tables the Kafka engine would have put them in (the `kafka_*` tables,
created with the Null engine when ClickHouse has no Kafka engine: see schema.kafka_statements), whose
materialized views then fill `events`, `person`, the distinct-id and `groups` tables exactly as in
Kafka mode. One INSERT per topic per batch.

It takes the place of the Kafka producer under the same formats (sinks/kafka/original.py and
current.py), so that direct and Kafka mode store the same rows, persons and groups included.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from plugin_server.config import Settings
from plugin_server.ingestion.kafka_producer import Record
from plugin_server.sinks.clickhouse.client import AsyncClickHouse, is_in_process
from plugin_server.sinks.clickhouse.schema import EVENTS_PROTO, FEEDS, Formats, KafkaFeed


class ClickHouseTopicWriter:
    """`send(records)` as the Kafka producer's, into ClickHouse's Kafka tables of `formats`.

    `protobuf_schema` is the `format_schema` of protobuf events: `events:Event` (events.proto in the
    server's format_schemas folder) or, for the in-process engine, the file's absolute path."""

    def __init__(
        self, clickhouse: AsyncClickHouse, formats: Formats, *, prefix: str = "", protobuf_schema: str
    ) -> None:
        self._clickhouse = clickhouse
        self._feeds = {prefix + feed.topic: feed for feed in FEEDS[formats]}
        self._protobuf_schema = protobuf_schema

    @classmethod
    def for_settings(cls, clickhouse: AsyncClickHouse, settings: Settings) -> ClickHouseTopicWriter:
        """The writer of CLICKHOUSE_KAFKA_FORMAT's records (topics named with KAFKA_PREFIX)."""
        schema = f"{EVENTS_PROTO}:Event" if is_in_process(settings) else "events:Event"
        formats = settings.CLICKHOUSE_KAFKA_FORMAT
        return cls(clickhouse, formats, prefix=settings.KAFKA_PREFIX, protobuf_schema=schema)

    async def send(self, records: Sequence[Record]) -> None:
        """Insert the records, each topic's into its table."""
        by_topic: dict[str, list[bytes]] = defaultdict(list)
        for record in records:
            by_topic[record.topic].append(record.value)
        for topic, values in by_topic.items():
            feed = self._feeds.get(topic)
            if feed is None:
                raise ValueError(f"no ClickHouse table reads the topic {topic!r}")
            await self._insert(feed, values)

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
        """Nothing of its own to close (the client is the caller's)."""
