"""Plugin log entries to the `plugin_log_entries` topic, as the original sent them in Kafka mode."""

from __future__ import annotations

from plugin_server.ingestion.kafka_producer import KafkaProducer, KafkaUnavailableError
from plugin_server.plugins.meta.logs import BufferedLogWriter, PluginLogEntry
from plugin_server.services.metrics import get_metrics
from plugin_server.sinks.kafka.records import log_entry_record


class KafkaLogEntryWriter(BufferedLogWriter):
    """Buffers entries and produces them in one batch per flush, over the worker's producer (closed by
    its owner, after this writer)."""

    passing_errors = (KafkaUnavailableError,)

    def __init__(self, producer: KafkaProducer, *, prefix: str = "", flush_interval: float = 1.0) -> None:
        super().__init__(flush_interval=flush_interval)
        self._producer = producer
        self._prefix = prefix

    async def _insert(self, batch: list[PluginLogEntry]) -> None:
        await self._producer.send([log_entry_record(entry, self._prefix) for entry in batch])
        get_metrics().log_entries_created(len(batch))
