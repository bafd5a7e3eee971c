"""The supervisor's queue gauges: depth of the Celery list, and lag (age of the oldest waiting event)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import redis

from plugin_server.config import load_settings
from plugin_server.services.metrics import get_metrics
from plugin_server.supervisor import Supervisor
from tests.e2e.server import celery_app, send_event

QUEUE = "metrics-queue"


def gauges() -> tuple[float | None, float | None]:
    get = get_metrics().registry.get_sample_value
    return get("plugin_server_queue_depth", {"queue": QUEUE}), get(
        "plugin_server_queue_lag_seconds", {"queue": QUEUE}
    )


def test_depth_and_lag_are_sampled_from_the_queue(redis_url: str, redis_client: redis.Redis) -> None:
    supervisor = Supervisor(load_settings({"PLUGINS_CELERY_QUEUE": QUEUE}))
    supervisor._sample_queue(redis_client)
    assert gauges() == (0, 0)

    app = celery_app(redis_url)
    oldest = datetime.now(UTC) - timedelta(seconds=90)
    for age in (oldest, oldest + timedelta(seconds=60)):
        send_event(app, team_id=2, distinct_id="x", event="waiting", now=age.isoformat(), queue=QUEUE)
    supervisor._sample_queue(redis_client)
    depth, lag = gauges()
    assert depth == 2
    assert lag == pytest.approx(90, abs=5)

    redis_client.rpush(QUEUE, b"not an event")  # the oldest is unreadable: no lag can be told
    supervisor._sample_queue(redis_client)
    assert gauges() == (3, 0)
