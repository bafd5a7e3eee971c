"""The claim-order turnstile (ingestion/ordering.py) on the real pipeline and database: a later batch
of a team whose plugins are done first still waits for the earlier batch's person step."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Iterable
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from plugin_server.db.teams import CreatedTeam
from plugin_server.ingestion.batches import process_until_done
from plugin_server.ingestion.ordering import Turn, Turnstile
from plugin_server.ingestion.persons import PersonChanges, PersonUpdate
from tests.integration.test_pipeline import message, pipeline, rows
from tests.integration.test_team_isolation import Db, GatedPlugins


async def test_a_later_batch_waits_for_the_person_step_of_an_earlier_batch_of_its_team(
    team: CreatedTeam, pool: AsyncConnectionPool[Any], clean_db: Db
) -> None:
    """Batch 1's plugins are held until batch 2 either waits for its turn or (were the turnstile's wait
    gone) reaches the person step; then batch 1 goes on. Person updates must come in claim order."""
    built = pipeline(pool)
    plugins = GatedPlugins(frozenset({"first"}))
    built.plugins = plugins  # type: ignore[assignment]
    seen: list[str] = []
    reached = asyncio.Event()
    process_batch = built.persons.process_batch

    async def recording(updates: list[PersonUpdate]) -> PersonChanges:
        seen.extend(update.event for update in updates)
        reached.set()
        return await process_batch(updates)

    built.persons.process_batch = recording  # type: ignore[method-assign]
    turnstile = Turnstile()
    first_turn, second_turn = turnstile.ticket(), turnstile.ticket()
    waiting = asyncio.Event()
    wait = second_turn.wait

    async def noting_wait(keys: Iterable[Hashable] | None = None) -> None:
        waiting.set()
        await wait(keys)

    second_turn.wait = noting_wait  # type: ignore[method-assign]

    async def handle(name: str, turn: Turn) -> int:
        try:
            outcome = await process_until_done(built, [message(team.team_id, "p", {"event": name})], turn)
        finally:
            await turn.finish()
        return outcome.stored

    batches = [
        asyncio.create_task(handle("first", first_turn)),
        asyncio.create_task(handle("second", second_turn)),
    ]
    signals = [asyncio.create_task(waiting.wait()), asyncio.create_task(reached.wait())]
    done, pending = await asyncio.wait(signals, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    assert done, "batch 2 neither waited for its turn nor reached the person step"
    plugins.gate.set()
    assert await asyncio.wait_for(asyncio.gather(*batches), 30) == [1, 1]
    assert seen == ["first", "second"]


async def test_the_turn_is_handed_on_after_the_person_step_and_a_retried_store_does_not_redo_it(
    team: CreatedTeam, pool: AsyncConnectionPool[Any], clean_db: Db
) -> None:
    """Batch 1 ($set plan=free) cannot store its events until batch 2 ($set plan=paid) of the same team
    went through, then fails once for an unavailable database: the turn must be handed on before the
    store, and the retried store must not run batch 1's person step again (it would set the plan back
    to free after batch 2)."""
    built = pipeline(pool)
    seen: list[str] = []
    process_batch = built.persons.process_batch

    async def recording(updates: list[PersonUpdate]) -> PersonChanges:
        seen.extend(update.event for update in updates)
        return await process_batch(updates)

    built.persons.process_batch = recording  # type: ignore[method-assign]
    second_done = asyncio.Event()
    waited: list[bool] = []
    write = built.sink.write

    async def store(events: Any, *persons: Any) -> None:
        if not waited and any(event.event == "first" for event in events):
            try:
                await asyncio.wait_for(second_done.wait(), 10)
                waited.append(True)
            except TimeoutError:
                waited.append(False)
            raise psycopg.OperationalError("the server closed the connection")
        await write(events, *persons)

    built.sink.write = store  # type: ignore[method-assign]
    turnstile = Turnstile()
    turns = [turnstile.ticket(), turnstile.ticket()]

    async def handle(name: str, plan: str, turn: Turn) -> int:
        data = {"event": name, "properties": {"$set": {"plan": plan}}}
        try:
            outcome = await process_until_done(built, [message(team.team_id, "p", data)], turn)
        finally:
            await turn.finish()
        if name == "second":
            second_done.set()
        return outcome.stored

    batches = [handle("first", "free", turns[0]), handle("second", "paid", turns[1])]
    assert await asyncio.wait_for(asyncio.gather(*batches), 60) == [1, 1]
    assert waited == [True], "batch 2 waited for batch 1's store"
    assert seen == ["first", "second"]
    assert [row["event"] for row in rows(clean_db, "SELECT event FROM posthog_event ORDER BY event")] == [
        "first",
        "second",
    ]
    [person] = rows(clean_db, "SELECT properties FROM posthog_person")
    assert person["properties"]["plan"] == "paid"
