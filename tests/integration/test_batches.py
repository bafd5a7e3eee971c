"""A micro-batch gets through whatever happens (ingestion/batches.py), against the real database."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from plugin_server.db.teams import CreatedTeam
from plugin_server.ingestion.batches import process_until_done
from plugin_server.ingestion.ordering import Turnstile
from plugin_server.ingestion.persons import PersonChanges, PersonUpdate
from plugin_server.ingestion.pipeline import EventPipeline
from plugin_server.ingestion.types import RawEvent
from tests.integration.test_pipeline import message, pipeline, rows

Db = psycopg.Connection[Any]


class CountingPlugins:
    """Stands in for the PluginRunner: marks each event and counts its calls."""

    def __init__(self, fail_batches_larger_than: int | None = None) -> None:
        self.process_calls: list[int] = []
        self.fail_batches_larger_than = fail_batches_larger_than

    async def process_events(self, events: Sequence[RawEvent]) -> list[RawEvent | None]:
        self.process_calls.append(len(events))
        if self.fail_batches_larger_than is not None and len(events) > self.fail_batches_larger_than:
            raise RuntimeError("a bug in the plugin runner")
        return [{**event, "properties": {**event.get("properties", {}), "plugin": True}} for event in events]

    async def on_events(self, events: Sequence[RawEvent]) -> None:
        pass


def with_plugins(pool: AsyncConnectionPool[Any], plugins: CountingPlugins) -> EventPipeline:
    built = pipeline(pool)
    built.plugins = plugins  # type: ignore[assignment]
    return built


def failing_writes(
    built: EventPipeline, failure: Exception, *, when: str | None = None, times: int = 1
) -> None:
    """Make the sink raise `failure` (for batches holding an event named `when`, or the first `times`)."""
    write = built.sink.write
    left = [times]

    async def sometimes_failing(events: Any, *persons: Any) -> None:
        poisoned = when is not None and any(event.event == when for event in events)
        if poisoned or (when is None and left[0] > 0):
            left[0] -= 1
            raise failure
        await write(events, *persons)

    built.sink.write = sometimes_failing  # type: ignore[method-assign]


def batch(team: CreatedTeam, *names: str) -> list[bytes]:
    return [message(team.team_id, f"person-{name}", {"event": name, "properties": {}}) for name in names]


def stored(db: Db) -> list[tuple[str, bool]]:
    found = rows(db, "SELECT event, properties FROM posthog_event ORDER BY event")
    return [(row["event"], row["properties"].get("plugin", False)) for row in found]


async def test_a_bad_event_is_dead_lettered_alone_and_plugins_do_not_run_again(
    clean_db: Db, team: CreatedTeam, pool: AsyncConnectionPool[Any]
) -> None:
    plugins = CountingPlugins()
    built = with_plugins(pool, plugins)
    failing_writes(built, RuntimeError("boom"), when="poison")
    messages = batch(team, "a", "poison", "b")
    outcome = await process_until_done(built, messages, Turnstile().ticket())
    assert plugins.process_calls == [3]
    assert outcome.stored == 2
    assert outcome.dead_letters == [(messages[1], "ingestion failed: RuntimeError: boom")]
    assert stored(clean_db) == [("a", True), ("b", True)]


async def test_an_unavailable_database_is_waited_for_without_running_plugins_again(
    clean_db: Db, team: CreatedTeam, pool: AsyncConnectionPool[Any]
) -> None:
    plugins = CountingPlugins()
    built = with_plugins(pool, plugins)
    failing_writes(built, psycopg.OperationalError("the server closed the connection"), times=2)
    outcome = await process_until_done(built, batch(team, "a", "b", "c"), Turnstile().ticket())
    assert plugins.process_calls == [3]
    assert (outcome.stored, outcome.dead_letters) == (3, [])
    assert stored(clean_db) == [("a", True), ("b", True), ("c", True)]


async def test_a_batch_whose_processing_fails_runs_message_by_message(
    clean_db: Db, team: CreatedTeam, pool: AsyncConnectionPool[Any]
) -> None:
    plugins = CountingPlugins(fail_batches_larger_than=1)
    built = with_plugins(pool, plugins)
    outcome = await process_until_done(built, batch(team, "a", "b"), Turnstile().ticket())
    assert plugins.process_calls == [2, 1, 1]
    assert (outcome.stored, outcome.dead_letters) == (2, [])
    assert stored(clean_db) == [("a", True), ("b", True)]


async def test_what_processing_dead_lettered_is_kept_when_the_batch_is_split(
    clean_db: Db, team: CreatedTeam, pool: AsyncConnectionPool[Any]
) -> None:
    built = with_plugins(pool, CountingPlugins())
    failing_writes(built, RuntimeError("boom"), when="poison")
    messages = [b"not a celery message", *batch(team, "poison", "a")]
    outcome = await process_until_done(built, messages, Turnstile().ticket())
    assert outcome.stored == 1
    assert [letter for letter, _ in outcome.dead_letters] == [messages[0], messages[1]]
    assert outcome.dead_letters[0][1].startswith("malformed message")


def counting_person_steps(built: EventPipeline) -> list[list[str]]:
    """The events of each person step the pipeline runs."""
    calls: list[list[str]] = []
    process_batch = built.persons.process_batch

    async def counting(updates: Sequence[PersonUpdate]) -> PersonChanges:
        calls.append([update.event for update in updates])
        return await process_batch(updates)

    built.persons.process_batch = counting  # type: ignore[method-assign]
    return calls


def persons_state(db: Db) -> list[dict[str, Any]]:
    return rows(
        db,
        "SELECT p.id, p.properties, p.version, d.distinct_id, d.version AS id_version FROM posthog_person p"
        " JOIN posthog_persondistinctid d ON d.person_id = p.id ORDER BY d.distinct_id",
    )


def setting(team: CreatedTeam, *names: str) -> list[bytes]:
    """A batch of one person's events, each setting a property and (once) the person's first event."""
    return [
        message(
            team.team_id,
            "person",
            {"event": name, "properties": {"$set": {name: 1}, "$set_once": {"first": name}}},
        )
        for name in names
    ]


async def test_a_store_that_fails_is_retried_without_its_person_step(
    clean_db: Db, team: CreatedTeam, pool: AsyncConnectionPool[Any]
) -> None:
    built = pipeline(pool)
    person_steps = counting_person_steps(built)
    failing_writes(built, psycopg.OperationalError("the server closed the connection"), times=2)
    outcome = await process_until_done(built, setting(team, "a", "b", "c"), Turnstile().ticket())
    assert (outcome.stored, outcome.dead_letters) == (3, [])
    assert person_steps == [["a", "b", "c"]]
    assert stored(clean_db) == [("a", False), ("b", False), ("c", False)]


async def test_a_store_split_event_by_event_runs_no_person_step_again(
    clean_db: Db, team: CreatedTeam, pool: AsyncConnectionPool[Any]
) -> None:
    built = pipeline(pool)
    person_steps = counting_person_steps(built)
    failing_writes(built, RuntimeError("boom"), when="poison")
    messages = setting(team, "a", "poison", "b")
    outcome = await process_until_done(built, messages, Turnstile().ticket())
    assert outcome.stored == 2
    assert outcome.dead_letters == [(messages[1], "ingestion failed: RuntimeError: boom")]
    assert person_steps == [["a", "poison", "b"]]
    assert stored(clean_db) == [("a", False), ("b", False)]


async def test_a_batch_redelivered_after_its_person_step_stores_each_event_once_and_changes_no_person(
    clean_db: Db, team: CreatedTeam, pool: AsyncConnectionPool[Any]
) -> None:
    """A worker killed between the person step and the store: the batch is redelivered (here to a worker
    of its own) and its person step runs again, on persons that already hold what it sets."""
    identify = {"event": "$identify", "properties": {"$anon_distinct_id": "anon"}}
    messages = [*setting(team, "a", "b"), message(team.team_id, "person", identify)]
    killed = pipeline(pool)
    await killed.apply_persons(await killed.process(messages))
    persons = persons_state(clean_db)
    assert [row["distinct_id"] for row in persons] == ["anon", "person"]
    assert persons[0]["properties"] == {"a": 1, "b": 1, "first": "a"}
    assert stored(clean_db) == []

    outcome = await process_until_done(pipeline(pool), messages, Turnstile().ticket())
    assert (outcome.stored, outcome.dead_letters) == (3, [])
    assert stored(clean_db) == [("$identify", False), ("a", False), ("b", False)]
    assert persons_state(clean_db) == persons  # not one more version of anything
