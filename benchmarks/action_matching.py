"""The cost of action matching per event per action, with 100 actions on a team (target: at most 5 µs).

Two sets of 100 actions, matched against the same 10,000 prepared events (autocapture elements,
10 properties, a person with properties):

- `mixed`: what a team defines: pageview URL steps (contains, LIKE wildcards, regex, exact),
  autocapture steps (selector, text, href) and custom events with property filters of every operator.
  Steps are indexed by event name, so an event is checked only against the steps that can match it.
- `every step checked`: 100 actions with no event name, each with a URL and property filters, so every
  event goes through every action: the worst case per action.

Then the whole step as the worker runs it, `ActionService.on_stored` over Postgres (embedded unless
DATABASE_URL/REDIS_URL are set) for micro-batches of 500 stored events, with the mixed actions: matching,
the persons that person filters need (one query), posthog_action_events (one statement).

    .venv/bin/python -m benchmarks.action_matching [--events 10000] [--runs 5] [--postgres-batches 20]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from typing import Any

import psycopg
import redis.asyncio as aioredis
from psycopg.types.json import Jsonb

from benchmarks.services import benchmark_services, fresh_database
from plugin_server.actions.matcher import TeamActions
from plugin_server.actions.models import Action, ActionStep, EventFacts, Person
from plugin_server.actions.setup import open_actions
from plugin_server.config import load_settings
from plugin_server.db.postgres import open_pool
from plugin_server.ingestion.rules import prepare_event
from plugin_server.ingestion.teams import TeamManager
from plugin_server.ingestion.uuidt import uuidt
from plugin_server.jobs.queue import JobQueue
from plugin_server.sinks.postgres import PostgresEventSink

ACTIONS = 100
TEAM_ID = 2
OPERATORS = ["exact", "is_not", "icontains", "not_icontains", "regex", "not_regex", "gt", "lt", "is_set"]


def _filter(index: int) -> dict[str, Any]:
    operator = OPERATORS[index % len(OPERATORS)]
    value: Any = {"gt": 5, "lt": 50, "regex": r"^value \d+$", "not_regex": "x{3}"}.get(
        operator, f"value {index % 10}"
    )
    kind = "person" if index % 4 == 0 else "event"
    return {"type": kind, "key": f"property_{index % 10}", "value": value, "operator": operator}


def mixed_actions() -> list[Action]:
    steps: list[dict[str, Any]] = []
    for index in range(ACTIONS):
        kind = index % 5
        if kind == 0:
            steps.append({"event": "$pageview", "url": f"/docs/{index}", "url_matching": "contains"})
        elif kind == 1:
            steps.append(
                {
                    "event": "$pageview",
                    "url": rf"^https://example\.com/(docs|blog)/{index}",
                    "url_matching": "regex",
                }
            )
        elif kind == 2:
            steps.append(
                {"event": "$autocapture", "selector": f"div.card > button.buy-{index % 7}", "text": "Buy"}
            )
        elif kind == 3:
            steps.append({"event": "$autocapture", "href": f"/pricing/{index % 3}"})
        else:
            steps.append(
                {"event": f"custom {index % 10}", "properties": [_filter(index), _filter(index + 1)]}
            )
    return [
        Action(id=i + 1, team_id=2, name=f"a{i}", steps=(ActionStep(id=i + 1, action_id=i + 1, **s),))
        for i, s in enumerate(steps)
    ]


def checked_actions() -> list[Action]:
    actions = []
    for index in range(ACTIONS):
        step = ActionStep(
            id=index + 1,
            action_id=index + 1,
            url=f"example.com/%/{index % 20}",
            properties=(_filter(index), _filter(index + 3), _filter(index + 5)),
        )
        actions.append(Action(id=index + 1, team_id=2, name=f"a{index}", steps=(step,)))
    return actions


def make_raw_events(count: int) -> list[dict[str, Any]]:
    """Events as the Celery queue brings them: half pageviews, 30 % autocaptures with four elements."""
    rng = random.Random(7)
    events = []
    for index in range(count):
        roll = rng.random()
        name = "$pageview" if roll < 0.5 else "$autocapture" if roll < 0.8 else f"custom {index % 10}"
        properties: dict[str, Any] = {f"property_{n}": f"value {rng.randrange(20)}" for n in range(9)}
        properties["property_9"] = rng.randrange(100)
        properties["$current_url"] = (
            f"https://example.com/{rng.choice(['docs', 'blog'])}/{rng.randrange(100)}"
        )
        if name == "$autocapture":
            properties["$elements"] = [
                {"tag_name": "button", "attr__class": f"btn buy-{index % 7}", "$el_text": "Buy"},
                {"tag_name": "a", "attr__href": f"/pricing/{index % 3}"},
                {"tag_name": "div", "attr__class": "card"},
                {"tag_name": "body"},
            ]
        now = "2026-12-03T10:00:00.000Z"
        events.append(
            {
                "uuid": uuidt(),
                "team_id": TEAM_ID,
                "distinct_id": f"person-{index % 100}",
                "event": name,
                "properties": properties,
                "now": now,
                "timestamp": now,
                "site_url": "https://example.com",
            }
        )
    return events


def make_events(count: int) -> list[EventFacts]:
    person = Person(id=1, properties={f"property_{n}": f"value {n}" for n in range(10)})
    prepared = [prepare_event(raw) for raw in make_raw_events(count)]
    return [EventFacts(event.event, event.properties, event.elements, person) for event in prepared]


def measure(actions: TeamActions, events: list[EventFacts], runs: int) -> tuple[float, int]:
    """Median µs per event per action over `runs`, and the matches of one run."""
    matches = sum(len(actions.match(facts)) for facts in events)  # warm-up (and RE2 compilation)
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        for facts in events:
            actions.match(facts)
        timings.append((time.perf_counter() - started) / len(events) / len(actions.actions) * 1e6)
    return statistics.median(timings), matches


def store_actions(database_url: str, actions: list[Action]) -> None:
    """The actions as rows, with 100 persons (person-0...) whose properties person filters read."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        for action in actions:
            connection.execute(
                "INSERT INTO posthog_action (id, name, team_id) VALUES (%s, %s, %s)",
                (action.id, action.name, TEAM_ID),
            )
            for step in action.steps:
                connection.execute(
                    """INSERT INTO posthog_actionstep (action_id, event, url, url_matching, selector, text, href, properties)
                       VALUES (%s, %s, %s, %s, %s, %s, %s, %s)""",
                    (
                        action.id,
                        step.event,
                        step.url,
                        step.url_matching,
                        step.selector,
                        step.text,
                        step.href,
                        Jsonb(list(step.properties)),
                    ),
                )
        for index in range(100):
            person = connection.execute(
                "INSERT INTO posthog_person (team_id, uuid, properties) VALUES (%s, %s, %s) RETURNING id",
                (TEAM_ID, uuidt(), Jsonb({f"property_{n}": f"value {n}" for n in range(10)})),
            ).fetchone()
            assert person is not None
            connection.execute(
                "INSERT INTO posthog_persondistinctid (team_id, person_id, distinct_id) VALUES (%s, %s, %s)",
                (TEAM_ID, person[0], f"person-{index}"),
            )


async def measure_service(batches: int, batch_size: int) -> float:
    """Median µs per event per action of `ActionService.on_stored` (persons read, matches recorded) over
    Postgres, for micro-batches already stored, with the mixed actions."""
    with benchmark_services() as (server_url, redis_url):
        database_url = fresh_database(server_url, name="plugin_server_bench_actions")
        store_actions(database_url, mixed_actions())
        pool = await open_pool(database_url, max_size=4)
        redis = aioredis.Redis.from_url(redis_url)
        sink = PostgresEventSink(pool)
        try:
            settings = load_settings({})
            teams = TeamManager(pool)
            async with open_actions(
                settings, pool, redis, teams, JobQueue(pool), write_action_events=True
            ) as actions:
                timings = []
                for _ in range(batches + 1):  # the first warms up
                    events = [prepare_event(raw) for raw in make_raw_events(batch_size)]
                    await sink.write(events)
                    started = time.perf_counter()
                    await actions.service.on_stored(events)
                    timings.append((time.perf_counter() - started) / batch_size / ACTIONS * 1e6)
        finally:
            await redis.aclose()
            await pool.close()
    return statistics.median(timings[1:])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--postgres-batches", type=int, default=20, help="batches of 500 for on_stored; 0 skips"
    )
    args = parser.parse_args()
    events = make_events(args.events)
    for label, actions in (("mixed", mixed_actions()), ("every step checked", checked_actions())):
        per_action, matches = measure(TeamActions(actions), events, args.runs)
        print(
            f"{label:>20}: {per_action:.3f} µs per event per action "
            f"({per_action * ACTIONS:.1f} µs per event, {matches / len(events):.2f} matches per event)"
        )
    if args.postgres_batches:
        per_action = asyncio.run(measure_service(args.postgres_batches, 500))
        print(
            f"{'on_stored, Postgres':>20}: {per_action:.3f} µs per event per action "
            f"({per_action * ACTIONS:.1f} µs per event: matching, persons, posthog_action_events)"
        )


if __name__ == "__main__":
    main()
