"""A micro-batch gets through whatever happens (ingestion/batches.py), against the real database."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from plugin_server.db.teams import CreatedTeam
from plugin_server.ingestion.batches import process_until_done
from plugin_server.ingestion.ordering import Turnstile
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

    async def sometimes_failing(events: Any) -> None:
        poisoned = when is not None and any(event.event == when for event in events)
        if poisoned or (when is None and left[0] > 0):
            left[0] -= 1
            raise failure
        await write(events)

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
