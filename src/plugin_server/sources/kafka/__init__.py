"""The Kafka source: events_plugin_ingestion in, events_dead_letter_queue for what cannot be ingested."""

from plugin_server.sources.kafka.source import KafkaSource

__all__ = ["KafkaSource"]
