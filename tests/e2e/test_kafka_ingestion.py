"""With KAFKA_ENABLED the whole path runs through Kafka: the capture API produces to
KAFKA_CONSUMPTION_TOPIC, the worker consumes it in KAFKA_CONSUMER_GROUP, and the events, persons and
distinct ids land in Postgres; the worker's offsets are committed once they are stored. The Celery list
is still consumed (PostHog sends plugin jobs there, plugins' posthog.capture queues events there). A
message that cannot be read lands on the dead-letter topic, where the CLI lists and replays it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Producer
from posthog import Posthog

from plugin_server.db.teams import CreatedTeam
from tests.kafka_broker import committed, create_topic, unique_topic

from .server import celery_app, running_server, send_event, wait_for_count, wait_until
from .test_cli import cli


def test_capture_to_kafka_to_worker_to_postgres(
    tmp_path: Path, database_url: str, redis_url: str, kafka: str, team: CreatedTeam
) -> None:
    topic, group, queue = unique_topic("ingest"), unique_topic("group"), unique_topic("celery")
    create_topic(kafka, topic, 2)
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "WORKER_CONCURRENCY": "1",
        "PLUGINS_CELERY_QUEUE": queue,
        "KAFKA_ENABLED": "true",
        "KAFKA_HOSTS": kafka,
        "KAFKA_CONSUMPTION_TOPIC": topic,
        "KAFKA_CONSUMER_GROUP": group,
        "KAFKA_DEAD_LETTER_TOPIC": f"{topic}_dead_letters",
        "KAFKA_CONSUMER_SESSION_TIMEOUT_MS": "6000",
        "KAFKA_FLUSH_FREQUENCY_MS": "5",
    }
    errors: list[Any] = []
    with running_server(tmp_path, env) as server:
        server.wait_for_log("All systems go")
        server.wait_for_web()
        client = Posthog(team.api_token, host=server.web_url, on_error=lambda *error: errors.append(error))
        client.capture("$pageview", distinct_id="anon-1")
        client.capture("$identify", distinct_id="user-1", properties={"$anon_distinct_id": "anon-1"})
        for n in range(20):
            client.capture("bought", distinct_id=f"buyer-{n % 4}", properties={"n": n})
        client.flush()
        client.shutdown()
        assert errors == []
        send_event(celery_app(redis_url), team_id=team.team_id, distinct_id="celery", event="e", queue=queue)
        assert wait_for_count(database_url, "SELECT COUNT(*) FROM posthog_event", 23) == 23
        server.wait_for_log("assigned partitions")
        wait_until(lambda: committed(kafka, group, topic, 2) == 22)

        producer = Producer({"bootstrap.servers": kafka})
        producer.produce(topic, b"not json", b"some key", partition=0)
        assert producer.flush(15) == 0
        listed = wait_until(lambda: cli("dead-letters", "list", **server.env).stdout)
        [letter] = [json.loads(line) for line in listed.splitlines()]
        assert letter["message"] == "not json" and "not valid JSON" in letter["reason"]
        wait_until(lambda: committed(kafka, group, topic, 2) == 23)  # after Kafka took the dead letter
        assert cli("dead-letters", "replay", **server.env).stdout.strip() == "replayed 1 messages"
    with psycopg.connect(database_url) as connection:
        ids = connection.execute(
            "SELECT array_agg(distinct_id ORDER BY distinct_id) FROM posthog_persondistinctid GROUP BY person_id"
        ).fetchall()
        numbers = connection.execute(
            "SELECT (properties->>'n')::int FROM posthog_event WHERE distinct_id = 'buyer-1' ORDER BY id"
        ).fetchall()
    expected = [["anon-1", "user-1"], *[[f"buyer-{n}"] for n in range(4)], ["celery"]]
    assert sorted(row[0] for row in ids) == expected
    assert [row[0] for row in numbers] == [1, 5, 9, 13, 17]  # one person's events in order
