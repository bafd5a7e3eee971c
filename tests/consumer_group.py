"""Servers sharing a Kafka topic in one consumer group, for the tests that kill one of them: events as
capture hands them (`tests.kafka_broker.produce_captured` puts them on the topic), the settings the
servers share, and which partitions each owns."""

from __future__ import annotations

import re
from typing import Any

from plugin_server.ingestion.enqueue import CapturedEvent
from plugin_server.ingestion.uuidt import uuidt
from tests.e2e.server import RunningServer
from tests.kafka_broker import create_topic, unique_topic

NOW = "2026-12-03T10:00:00.000Z"


def captured(team_id: int, distinct_id: str, event: str, properties: dict[str, Any]) -> CapturedEvent:
    """One event captured at NOW, with a uuid of its own."""
    return CapturedEvent(
        distinct_id=distinct_id,
        ip="127.0.0.1",
        site_url="https://example.com",
        data={"event": event, "properties": properties, "timestamp": NOW},
        team_id=team_id,
        now=NOW,
        sent_at=NOW,
        uuid=uuidt(),
    )


def group_env(database_url: str, redis_url: str, bootstrap: str, partitions: int) -> dict[str, str]:
    """The settings of servers consuming a new topic of `partitions` partitions in a new group (its
    KAFKA_CONSUMPTION_TOPIC and KAFKA_CONSUMER_GROUP), on the test's Postgres and Valkey, so that none
    embeds servers of its own that the others would depend on. A dead consumer's partitions move after
    3 s (tansu's first assignment takes half of it)."""
    topic, group = unique_topic("instances"), unique_topic("group")
    create_topic(bootstrap, topic, partitions)
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "WORKER_CONCURRENCY": "1",
        "PLUGINS_CELERY_QUEUE": unique_topic("celery"),
        "KAFKA_ENABLED": "true",
        "KAFKA_HOSTS": bootstrap,
        "KAFKA_CONSUMPTION_TOPIC": topic,
        "KAFKA_CONSUMER_GROUP": group,
        "KAFKA_DEAD_LETTER_TOPIC": f"{topic}_dead_letters",
        "KAFKA_CONSUMER_SESSION_TIMEOUT_MS": "3000",
    }


def assigned(server: RunningServer) -> set[int] | None:
    """The partitions the server's consumer was last assigned (None before its first assignment)."""
    found = re.findall(r"assigned partitions \[([\d, ]*)\]", server.log())
    return {int(p) for p in found[-1].split(",") if p.strip()} if found else None


def split_between(first: RunningServer, second: RunningServer, partitions: int) -> bool:
    """Both servers own partitions, none twice, all of them together."""
    a, b = assigned(first), assigned(second)
    return bool(a and b and not a & b and a | b == set(range(partitions)))
