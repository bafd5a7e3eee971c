"""The claim-order turnstile (ingestion/ordering.py) on the real pipeline and database: a later batch
of a team whose plugins are done first still waits for the earlier batch's person step."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Iterable
from typing import Any

from psycopg_pool import AsyncConnectionPool

from plugin_server.db.teams import CreatedTeam
from plugin_server.ingestion.batches import process_until_done
from plugin_server.ingestion.ordering import Turn, Turnstile
from plugin_server.ingestion.persons import PersonChanges, PersonUpdate
from tests.integration.test_pipeline import message, pipeline
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
