"""The Kafka path (KAFKA_ENABLED) with the broker unreachable for a while: a proxy in front of a broker of
the test's own (which advertises the proxy, so every connection goes through it) is cut under load,
then restored. Capture requests wait meanwhile (up to 10 s, then 503 and the client sends again); every
event is stored once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugin_server.db.teams import CreatedTeam
from tests.e2e.server import running_server
from tests.faults.harness import Load, Report, RssWatch, capture_sender, recovery_seconds, tally
from tests.kafka_broker import KafkaBroker, create_topic, unique_topic
from tests.tcp_proxy import TcpProxy

RUN_BEFORE = 2.0
OUTAGE = 4.0


@pytest.fixture
def proxied_broker() -> Iterator[TcpProxy]:
    """A broker of this test's own behind a proxy: the proxy, the only way to the broker."""
    broker = KafkaBroker()
    with TcpProxy(("127.0.0.1", broker.port)) as proxy:
        broker.advertised = proxy.address
        with broker.start():
            yield proxy


def test_kafka_unreachable_for_a_while(
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    team: CreatedTeam,
    proxied_broker: TcpProxy,
) -> None:
    proxy = proxied_broker
    topic = unique_topic("ingest")
    create_topic(proxy.address, topic, 2)
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "WORKER_CONCURRENCY": "2",
        "PLUGINS_CELERY_QUEUE": unique_topic("celery"),
        "KAFKA_ENABLED": "true",
        "KAFKA_HOSTS": proxy.address,
        "KAFKA_CONSUMPTION_TOPIC": topic,
        "KAFKA_CONSUMER_GROUP": unique_topic("group"),
        "KAFKA_DEAD_LETTER_TOPIC": f"{topic}_dead_letters",
        "KAFKA_CONSUMER_SESSION_TIMEOUT_MS": "6000",
        "KAFKA_FLUSH_FREQUENCY_MS": "5",
    }
    with running_server(tmp_path, env) as server:
        server.wait_for_log("All systems go")
        server.wait_for_web()
        sender = capture_sender(server.web_url, team.api_token)
        with RssWatch(server.worker_pids) as rss, Load(sender) as load:
            time.sleep(RUN_BEFORE)
            proxy.cut()
            time.sleep(OUTAGE)
            proxy.restore()
            recovered = recovery_seconds(database_url, team.team_id, load.sent)
            time.sleep(RUN_BEFORE)
        result = tally(database_url, team.team_id, load.sent)
    # Capture waits up to 10 s for the broker's acknowledgement: an outage shorter than that holds the
    # requests (answered once Kafka is back) rather than refusing them.
    assert load.slowest > OUTAGE / 2 or load.retries, "capture must have felt Kafka's absence"
    print(f"slowest capture request {load.slowest:.1f} s, {load.retries} sent again")
    Report("Kafka unreachable for 4 s", load.sent, result, recovered, rss.max_mb).check()
