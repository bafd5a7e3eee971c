"""One team's misbehaving JavaScript plugin does not stall the other teams, in the real server (Celery list
-> worker -> Postgres, one worker): a plugin that loops on every event, and one that asks for 20,000
zero-delay intervals. The other team's events are stored within a second, while the first team's
still wait for their plugin; those are stored later, exactly once, with the plugin's failure noted.
And behind a slow batch, a worker claims one batch ahead and no more."""

from __future__ import annotations

import time
from typing import Any

import httpx
import redis

from plugin_server.db.teams import CreatedTeam, create_organization_and_team
from plugin_server.plugins.admin import enable_plugin, install_plugin
from tests.pipelines import message

from .plugin_stack import Stack, write_plugin
from .server import claimed, send_event, wait_until

TASK_TIMEOUT = 2.0
SLOW_EVENTS = 3
FAST_EVENTS = 20
MOST_SECONDS = 1.0


def assert_prompt(latencies: list[float]) -> None:
    """Every event but the slowest (the machine is shared) within a second, and none waited for a
    plugin's timeout."""
    ordered = sorted(latencies)
    assert ordered[-2] < MOST_SECONDS and ordered[-1] < TASK_TIMEOUT, ordered


TAG = """
export function processEvent(event) { event.properties.tagged = true; return event }
"""
LOOP = """
export function processEvent(event) { while (true) {} }
"""
INTERVALS = """
let ticks = 0
let refused = 0
export function setupPlugin() {
    for (let i = 0; i < 20000; i++) {
        try { setInterval(() => { ticks++ }, 0) } catch (error) { refused++ }
    }
}
export function processEvent(event) { event.properties.refused = refused; return event }
"""


def enable(stack: Stack, team: CreatedTeam, name: str, source: str) -> int:
    folder = write_plugin(stack.tmp_path, name, source, main="index.js")
    installed = install_plugin(stack.db, folder, organization_id=team.organization_id)
    return enable_plugin(stack.db, installed, team.team_id, {}).id


def stored(stack: Stack, team_id: int) -> dict[str, dict[str, Any]]:
    found = stack.db.execute("SELECT event, properties FROM posthog_event WHERE team_id = %s", (team_id,))
    return dict(found.fetchall())


def warm_up(stack: Stack, team: CreatedTeam) -> None:
    """One event of `team` stored: its plugins are loaded and set up."""
    send_event(stack.app, team_id=team.team_id, distinct_id="w", event="warm-up")
    wait_until(lambda: "warm-up" in stored(stack, team.team_id))


def send_and_time(stack: Stack, team: CreatedTeam, prefix: str, count: int) -> list[float]:
    """Send `count` events of `team`, 50 ms apart; how long each took from the queue to its row."""
    sent: dict[str, float] = {}
    arrived: dict[str, float] = {}

    def look() -> None:
        now = time.monotonic()
        arrived.update(
            (name, now) for name in stored(stack, team.team_id) if name in sent and name not in arrived
        )

    for index in range(count):
        name = f"{prefix}{index}"
        sent[name] = time.monotonic()
        send_event(stack.app, team_id=team.team_id, distinct_id=f"p{index % 3}", event=name)
        time.sleep(0.05)
        look()
    deadline = time.monotonic() + 30
    while len(arrived) < count and time.monotonic() < deadline:
        look()
        time.sleep(0.02)
    assert sorted(arrived) == sorted(sent)
    return [arrived[name] - sent[name] for name in sent]


def test_a_looping_plugin_delays_only_its_own_team(stack: Stack) -> None:
    slow = create_organization_and_team(stack.db, team_name="looping", team_id=3)
    enable(stack, stack.team, "tag", TAG)
    loop_config = enable(stack, slow, "loop", LOOP)
    # One batch in flight: a batch of only the looping team's events must be set aside too, or it holds
    # the worker's only slot (and so every other team) until the plugin times out.
    with stack.server(TASK_TIMEOUT=str(TASK_TIMEOUT), TASKS_PER_WORKER="1") as server:
        warm_up(stack, stack.team)
        for index in range(SLOW_EVENTS):
            send_event(stack.app, team_id=slow.team_id, distinct_id="s", event=f"slow{index}")
        latencies = send_and_time(stack, stack.team, "fast", FAST_EVENTS)
        assert len(stored(stack, slow.team_id)) < SLOW_EVENTS  # the looping team's events still wait
        assert_prompt(latencies)
        assert all(properties["tagged"] for properties in stored(stack, stack.team.team_id).values())
        wait_until(
            lambda: len(stored(stack, slow.team_id)) == SLOW_EVENTS,
            timeout=SLOW_EVENTS * (TASK_TIMEOUT + 2) + 10,
        )
        slow_events = stored(stack, slow.team_id)
        metrics = httpx.get(f"{server.web_url}/metrics", timeout=5).text
    # The looping team's events at least (another team's may be set aside too, on a busy machine).
    (set_aside,) = [
        line for line in metrics.splitlines() if line.startswith("plugin_server_events_set_aside_total")
    ]
    assert float(set_aside.split()[1]) >= SLOW_EVENTS
    assert {name: properties["$plugins_failed"] for name, properties in slow_events.items()} == {
        f"slow{index}": [f"loop ({loop_config})"] for index in range(SLOW_EVENTS)
    }
    counted = stack.db.execute("SELECT COUNT(*), COUNT(DISTINCT uuid) FROM posthog_event").fetchone()
    total = SLOW_EVENTS + FAST_EVENTS + 1  # and the warm-up event
    assert counted == (total, total)  # each stored once
    error = stack.config_error(loop_config)
    assert error is not None and "timed out" in error["message"]


def test_twenty_thousand_zero_delay_intervals_are_refused_and_the_worker_goes_on(stack: Stack) -> None:
    other = create_organization_and_team(stack.db, team_name="other", team_id=3)
    intervals_config = enable(stack, stack.team, "intervals", INTERVALS)
    with stack.server(TASK_TIMEOUT=str(TASK_TIMEOUT)):
        warm_up(stack, stack.team)  # the plugin asked for its intervals; 100 of them run
        latencies = send_and_time(stack, other, "other", FAST_EVENTS)
        own = send_and_time(stack, stack.team, "own", 5)
        assert_prompt(latencies + own)
    assert {properties["refused"] for properties in stored(stack, stack.team.team_id).values()} == {19_900}
    error = stack.config_error(intervals_config)
    assert error is not None and error["message"] == "the plugin asked for more than 100 timers"


def test_a_full_backlog_of_slow_events_pauses_the_worker_and_loses_nothing(stack: Stack) -> None:
    """SLOW_PLUGIN_BACKLOG=1: while the looping team's first event is set aside, the worker claims
    nothing new; the next events wait in the queue (not lost), and everything is stored once."""
    slow = create_organization_and_team(stack.db, team_name="looping", team_id=3)
    enable(stack, slow, "loop", LOOP)
    with stack.server(TASK_TIMEOUT=str(TASK_TIMEOUT), SLOW_PLUGIN_BACKLOG="1"):
        warm_up(stack, stack.team)
        send_event(stack.app, team_id=slow.team_id, distinct_id="s", event="slow0")
        time.sleep(0.5)  # claimed and set aside: the backlog is full
        # The claim already under way takes one more batch; the next claim waits for room.
        send_event(stack.app, team_id=stack.team.team_id, distinct_id="d", event="taken")
        wait_until(lambda: "taken" in stored(stack, stack.team.team_id))
        send_event(stack.app, team_id=stack.team.team_id, distinct_id="d", event="waits")
        wait_until(lambda: "waits" in stored(stack, stack.team.team_id), timeout=TASK_TIMEOUT + 10)
    ids = dict(stack.db.execute("SELECT event, id FROM posthog_event").fetchall())
    assert ids["slow0"] < ids["waits"]  # claimed only once the looping team's event was stored
    counted = stack.db.execute("SELECT COUNT(*), COUNT(DISTINCT uuid) FROM posthog_event").fetchone()
    assert counted == (4, 4)


SLOW_FIRST = """
export function processEvent(event) {
    if (event.event === 'slow') { const end = Date.now() + 3000; while (Date.now() < end) {} }
    return event
}
"""


def test_behind_a_slow_batch_the_worker_claims_one_batch_ahead_and_no_more(
    stack: Stack, redis_client: redis.Redis
) -> None:
    """With its one place in flight taken by a slow batch (and slow batches never set aside), the worker
    claims the next batch, to start it as soon as the place frees, and leaves the rest in the queue."""
    enable(stack, stack.team, "slow-first", SLOW_FIRST)
    server_env = {"TASKS_PER_WORKER": "1", "INGESTION_BATCH_SIZE": "5", "SLOW_PLUGIN_PATIENCE_MS": "60000"}
    with stack.server(**server_env):
        warm_up(stack, stack.team)
        names = ["slow", *(f"e{index}" for index in range(14))]
        messages = [message(stack.team.team_id, "d", name, {}) for name in names]
        redis_client.lpush("posthog-plugins", *messages)  # at once: batches of 5 in this order
        wait_until(lambda: claimed(redis_client) == 10, timeout=2.5)
        time.sleep(0.3)  # the slow batch holds its place for 3 s: nothing more is claimed meanwhile
        assert (claimed(redis_client), redis_client.llen("posthog-plugins")) == (10, 5)
        wait_until(lambda: set(names) <= set(stored(stack, stack.team.team_id)), timeout=30)
