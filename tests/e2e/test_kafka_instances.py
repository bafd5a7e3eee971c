"""Two servers in one Kafka consumer group split the topic's partitions. One is killed with SIGKILL
(its whole process group: supervisor, worker and web) while 50,000 events are being ingested; the
group moves its partitions to the survivor, which consumes what was not committed again, and every
event is stored exactly once. Started again, the killed server gets its share of the partitions back.

Both servers use the test's Postgres and Valkey (DATABASE_URL, REDIS_URL), so neither starts embedded
servers that the other would depend on. The survivor's /_ready follows its lag: not ready with the
killed server's backlog above KAFKA_MAX_LAG_READY, ready again once it caught up.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import httpx
import psycopg

from plugin_server.db.teams import CreatedTeam
from plugin_server.ingestion.enqueue import CapturedEvent
from tests.consumer_group import assigned, captured, group_env, split_between
from tests.kafka_broker import produce_captured

from .server import RunningServer, running_server, wait_until

PARTITIONS = 4
EVENTS = 50_000
MAX_LAG_READY = 100


def events(team_id: int, count: int, first: int = 0) -> list[CapturedEvent]:
    return [
        captured(team_id, f"person-{n % 500}", "$pageview", {"n": n}) for n in range(first, first + count)
    ]


def stored(database_url: str) -> tuple[int, int]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        row = connection.execute("SELECT COUNT(*), COUNT(DISTINCT uuid) FROM posthog_event").fetchone()
    assert row is not None
    return row[0], row[1]


def ready(server: RunningServer) -> tuple[int, int | None]:
    """/_ready's status code and the Kafka lag it reports."""
    answer = httpx.get(f"{server.web_url}/_ready", timeout=5)
    return answer.status_code, answer.json()["checks"]["sources"]["kafka"]["lag"]


def received(server: RunningServer) -> float:
    """Messages the server's workers took from Kafka, from its /metrics."""
    text = httpx.get(f"{server.web_url}/metrics", timeout=5).text
    match = re.search(r'^plugin_server_events_received_total\{source="kafka"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_two_servers_share_partitions_and_a_killed_ones_events_are_stored_once(
    tmp_path: Path, database_url: str, redis_url: str, kafka: str, team: CreatedTeam
) -> None:
    env = group_env(database_url, redis_url, kafka, PARTITIONS) | {
        "KAFKA_MAX_LAG_READY": str(MAX_LAG_READY),
        "INGESTION_BATCH_SIZE": "250",
        "QUEUE_VISIBILITY_TIMEOUT": "3",  # housekeeping, which samples the lag, every second
    }
    topic = env["KAFKA_CONSUMPTION_TOPIC"]
    folders = [tmp_path / name for name in ("one", "two", "two-again")]
    for folder in folders:
        folder.mkdir()
    with (
        running_server(folders[0], env, process_group=True) as survivor,
        running_server(folders[1], env, process_group=True) as victim,
    ):
        wait_until(lambda: split_between(survivor, victim, PARTITIONS), timeout=60)
        produce_captured(kafka, topic, events(team.team_id, EVENTS))

        wait_until(lambda: stored(database_url)[0] >= EVENTS // 10, timeout=60)
        os.killpg(victim.process.pid, signal.SIGKILL)
        at_kill = stored(database_url)[0]
        assert 0 < at_kill < EVENTS, "the kill must come while events are in flight"
        victim.process.wait(10)

        wait_until(lambda: assigned(survivor) == set(range(PARTITIONS)), timeout=30)
        _, lag = wait_until(lambda: (answer := ready(survivor))[0] == 503 and answer, timeout=30)
        assert lag is not None and lag > MAX_LAG_READY
        assert wait_until(lambda: stored(database_url)[0] >= EVENTS, timeout=60)
        assert stored(database_url) == (EVENTS, EVENTS)  # every event once, none lost, none twice
        wait_until(lambda: ready(survivor) == (200, 0), timeout=30)

        with running_server(folders[2], env, process_group=True) as restarted:
            wait_until(lambda: split_between(survivor, restarted, PARTITIONS), timeout=60)
            before = received(survivor)
            produce_captured(kafka, topic, events(team.team_id, 2_000, first=EVENTS))
            wait_until(lambda: stored(database_url)[0] >= EVENTS + 2_000, timeout=60)
            assert stored(database_url) == (EVENTS + 2_000, EVENTS + 2_000)
            assert received(restarted) > 0 and received(survivor) > before  # both consume
