"""One team's slow plugins hold up only that team's events (ingestion/batches.py `Lanes`), against the real
database and Redis: the other teams' events of the same batches are stored while the slow team's still
wait, every event is stored exactly once, and person updates keep each team's order."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool

from plugin_server.db.teams import CreatedTeam, create_organization_and_team
from plugin_server.ingestion.batches import Lanes, LateWork, process_until_done
from plugin_server.ingestion.ordering import Turnstile
from plugin_server.ingestion.persons import PersonUpdate
from plugin_server.ingestion.pipeline import BatchOutcome, EventPipeline
from plugin_server.ingestion.redis_queue import ReliableQueue
from plugin_server.ingestion.types import RawEvent
from tests.integration.test_pipeline import message, pipeline

Db = psycopg.Connection[Any]
TEAMS = (2, 3, 4)
PATIENCE = 0.05


class GatedPlugins:
    """Stands in for the PluginRunner: the events of a slow team wait until `release()`."""

    def __init__(self, slow: set[int]) -> None:
        self.slow = slow
        self.gate = asyncio.Event()

    async def process_events(self, events: Sequence[RawEvent]) -> list[RawEvent | None]:
        if any(event.get("team_id") in self.slow for event in events):
            await self.gate.wait()
        return [{**event, "properties": {**event.get("properties", {}), "plugin": True}} for event in events]

    async def on_events(self, events: Sequence[RawEvent]) -> None:
        pass


class RecordingPersons:
    """Wraps the person step to note the order in which each event reached it."""

    def __init__(self, built: EventPipeline) -> None:
        self.seen: list[tuple[int, int]] = []  # (team, index in the sending order)
        process_batch = built.persons.process_batch

        async def recording(updates: list[PersonUpdate]) -> Any:
            self.seen.extend((update.team_id, int(update.event.removeprefix("e"))) for update in updates)
            return await process_batch(updates)

        built.persons.process_batch = recording  # type: ignore[method-assign]


class AsideLane:
    """`Lanes.set_aside` for tests: runs the set-aside work in tasks and keeps what was set aside."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.tasks: list[asyncio.Task[BatchOutcome]] = []

    async def set_aside(self, messages: list[bytes], work: LateWork) -> None:
        self.messages.extend(messages)
        self.tasks.append(asyncio.create_task(work))


@pytest.fixture
def teams(team: CreatedTeam, clean_db: Db) -> tuple[int, ...]:
    for team_id in TEAMS[1:]:
        create_organization_and_team(clean_db, team_id=team_id)
    return TEAMS


def stored_uuids(db: Db, uuids: Sequence[str]) -> list[str]:
    found = db.execute("SELECT uuid::text FROM posthog_event WHERE uuid::text = ANY(%s)", (list(uuids),))
    return [row[0] for row in found]


batches_strategy = st.lists(
    st.lists(st.tuples(st.sampled_from(TEAMS), st.integers(0, 2)), min_size=1, max_size=6),
    min_size=1,
    max_size=4,
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=batches_strategy, slow=st.sets(st.sampled_from(TEAMS), max_size=2))
async def test_slow_teams_hold_up_only_themselves_and_every_event_is_stored_once_in_team_order(
    batches: list[list[tuple[int, int]]],
    slow: set[int],
    teams: tuple[int, ...],
    pool: AsyncConnectionPool[Any],
    clean_db: Db,
) -> None:
    plugins = GatedPlugins(slow)
    built = pipeline(pool)
    built.plugins = plugins  # type: ignore[assignment]
    persons = RecordingPersons(built)
    counter = itertools.count()
    sent: list[tuple[int, str, bytes]] = []  # (team, uuid, message), in sending order
    claimed = []
    for batch in batches:
        messages = []
        for team_id, person in batch:
            index, event_uuid = next(counter), str(uuid.uuid4())
            data = {"event": f"e{index}", "uuid": event_uuid, "properties": {}}
            messages.append(message(team_id, f"person-{person}", data))
            sent.append((team_id, event_uuid, messages[-1]))
        claimed.append(messages)
    lane = AsideLane()
    turnstile = Turnstile()
    lanes = Lanes(patience=PATIENCE, set_aside=lane.set_aside)

    async def handle(messages: list[bytes]) -> BatchOutcome:
        turn = turnstile.ticket()
        try:
            return await process_until_done(built, messages, turn, lanes)
        finally:
            await turn.finish()

    outcomes = await asyncio.wait_for(asyncio.gather(*(handle(messages) for messages in claimed)), 30)

    fast = [event_uuid for team_id, event_uuid, _ in sent if team_id not in slow]
    slow_messages = [sent_message for team_id, _, sent_message in sent if team_id in slow]
    assert sorted(stored_uuids(clean_db, fast)) == sorted(fast)  # stored while the slow teams still wait
    assert sorted(lane.messages) == sorted(slow_messages)  # and exactly the slow teams' were set aside
    assert stored_uuids(clean_db, [event_uuid for team_id, event_uuid, _ in sent if team_id in slow]) == []

    plugins.gate.set()
    late = await asyncio.wait_for(asyncio.gather(*lane.tasks), 30)
    assert sum(outcome.stored for outcome in (*outcomes, *late)) == len(sent)
    assert sorted(stored_uuids(clean_db, [event_uuid for _, event_uuid, _ in sent])) == sorted(
        event_uuid for _, event_uuid, _ in sent
    )
    for team_id in TEAMS:
        order = [index for seen_team, index in persons.seen if seen_team == team_id]
        assert order == sorted(order), f"team {team_id}'s events reached the person step out of order"


async def test_without_slow_teams_a_batch_is_ingested_together(
    teams: tuple[int, ...], pool: AsyncConnectionPool[Any], clean_db: Db
) -> None:
    built = pipeline(pool)
    built.plugins = GatedPlugins(set())  # type: ignore[assignment]
    writes: list[int] = []
    write = built.sink.write

    async def counting(events: Any) -> None:
        writes.append(len(events))
        await write(events)

    built.sink.write = counting  # type: ignore[method-assign]
    lane = AsideLane()
    messages = [message(team_id, "p", {"event": "e0", "properties": {}}) for team_id in TEAMS]
    outcome = await process_until_done(built, messages, Turnstile().ticket(), Lanes(10.0, lane.set_aside))
    assert (outcome.stored, writes, lane.messages) == (3, [3], [])


async def test_a_split_off_part_is_acknowledged_on_its_own_and_recovered_if_the_consumer_dies(
    redis_client: Any, redis_url: str
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        queue = ReliableQueue(client, "q", "worker-1", visibility_timeout=30)
        await client.lpush("q", b"m1", b"m2", b"m3")
        batch = await queue.claim(10, 0)
        assert batch is not None and batch.messages == [b"m1", b"m2", b"m3"]  # oldest first
        part = await queue.split_off(batch, [b"m2"])
        assert await queue.ack(batch, [(b"m3", "bad")]) is True
        assert await client.lrange(part.key, 0, -1) == [b"m2"]
        # The consumer restarts before the part is done: the part goes back to the queue, and only it.
        again = ReliableQueue(client, "q", "worker-1", visibility_timeout=30)
        assert await again.recover_abandoned() == 1
        assert await client.lrange("q", 0, -1) == [b"m2"]
        assert await queue.ack(part) is False  # it was requeued: its events come again
        everything = await queue.split_off(batch, [b"m1"])  # a batch already acknowledged: nothing moves
        assert await client.exists(everything.key) == 0
    finally:
        await client.aclose()


async def test_a_batch_whose_messages_were_all_split_off_still_stores_its_dead_letters(
    redis_client: Any, redis_url: str
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        queue = ReliableQueue(client, "q", "worker-1", visibility_timeout=30)
        await client.lpush("q", b"m1")
        batch = await queue.claim(10, 0)
        assert batch is not None
        part = await queue.split_off(batch, [b"m1"])
        assert await queue.ack(batch, [(b"junk", "malformed message")]) is True
        assert await client.llen("q:dead-letter") == 1
        assert await queue.ack(part) is True
    finally:
        await client.aclose()
