"""One team's slow plugins hold up only that team's events (ingestion/batches.py `Lanes`), against the real
database and Redis: the other teams' events of the same batches are stored while the slow team's still
wait, every event is stored exactly once, and person updates keep each team's order."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Callable, Sequence
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
    """Stands in for the PluginRunner: a call with a slow event (named in `slow_names`) waits until
    `gate` is set."""

    def __init__(self, slow_names: frozenset[str] = frozenset()) -> None:
        self.slow_names = slow_names
        self.gate = asyncio.Event()

    async def process_events(self, events: Sequence[RawEvent]) -> list[RawEvent | None]:
        if any(event.get("event") in self.slow_names for event in events):
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

    async def set_aside(
        self, messages: list[bytes], work: LateWork, acknowledged: Callable[[], None]
    ) -> None:
        self.messages.extend(messages)
        self.tasks.append(asyncio.create_task(self._then(work, acknowledged)))

    @staticmethod
    async def _then(work: LateWork, acknowledged: Callable[[], None]) -> BatchOutcome:
        try:
            return await work
        finally:
            acknowledged()


@pytest.fixture
def teams(team: CreatedTeam, clean_db: Db) -> tuple[int, ...]:
    for team_id in TEAMS[1:]:
        create_organization_and_team(clean_db, team_id=team_id)
    return TEAMS


def stored_uuids(db: Db, uuids: Sequence[str]) -> list[str]:
    found = db.execute("SELECT uuid::text FROM posthog_event WHERE uuid::text = ANY(%s)", (list(uuids),))
    return [row[0] for row in found]


# Batches of events: (team, person, whether the event's plugins are slow).
batches_strategy = st.lists(
    st.lists(st.tuples(st.sampled_from(TEAMS), st.integers(0, 2), st.booleans()), min_size=1, max_size=6),
    min_size=1,
    max_size=4,
)


def expected_aside(batches: list[list[tuple[int, int, bool]]]) -> set[int]:
    """The indexes of the events set aside: a team's share of a batch is, when it has a slow event or
    an earlier share of that team was set aside."""
    aside: set[int] = set()
    late_teams: set[int] = set()
    indexes = itertools.count()
    for batch in batches:
        shares: dict[int, list[tuple[int, bool]]] = {}
        for team_id, _, slow in batch:
            shares.setdefault(team_id, []).append((next(indexes), slow))
        for team_id, share in shares.items():
            if team_id in late_teams or any(slow for _, slow in share):
                late_teams.add(team_id)
                aside.update(index for index, _ in share)
    return aside


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=batches_strategy)
async def test_slow_events_hold_up_only_their_team_and_every_event_is_stored_once_in_team_order(
    batches: list[list[tuple[int, int, bool]]],
    teams: tuple[int, ...],
    pool: AsyncConnectionPool[Any],
    clean_db: Db,
) -> None:
    counter = itertools.count()
    sent: list[tuple[str, bytes]] = []  # (uuid, message), in sending order
    claimed, slow_names = [], set()
    for batch in batches:
        messages = []
        for team_id, person, slow in batch:
            index, event_uuid = next(counter), str(uuid.uuid4())
            if slow:
                slow_names.add(f"e{index}")
            messages.append(message(team_id, f"person-{person}", {"event": f"e{index}", "uuid": event_uuid}))
            sent.append((event_uuid, messages[-1]))
        claimed.append(messages)
    plugins = GatedPlugins(slow_names=frozenset(slow_names))
    built = pipeline(pool)
    built.plugins = plugins  # type: ignore[assignment]
    persons = RecordingPersons(built)
    lane, turnstile = AsideLane(), Turnstile()
    lanes = Lanes(patience=PATIENCE, set_aside=lane.set_aside)

    async def handle(messages: list[bytes]) -> BatchOutcome:
        turn = turnstile.ticket()
        try:
            return await process_until_done(built, messages, turn, lanes)
        finally:  # as the worker does once it acknowledged the batch
            turn.acknowledged()
            await turn.finish()

    outcomes = await asyncio.wait_for(asyncio.gather(*(handle(messages) for messages in claimed)), 30)

    aside = expected_aside(batches)
    on_time = [event_uuid for index, (event_uuid, _) in enumerate(sent) if index not in aside]
    assert sorted(stored_uuids(clean_db, on_time)) == sorted(on_time)  # stored while slow ones still wait
    assert sorted(lane.messages) == sorted(sent[index][1] for index in aside)  # exactly those set aside
    assert stored_uuids(clean_db, [sent[index][0] for index in aside]) == []

    plugins.gate.set()
    late = await asyncio.wait_for(asyncio.gather(*lane.tasks), 30)
    assert sum(outcome.stored for outcome in (*outcomes, *late)) == len(sent)
    everything = [event_uuid for event_uuid, _ in sent]
    assert sorted(stored_uuids(clean_db, everything)) == sorted(everything)  # each exactly once
    for team_id in TEAMS:
        order = [index for seen_team, index in persons.seen if seen_team == team_id]
        assert order == sorted(order), f"team {team_id}'s events reached the person step out of order"


async def test_a_team_behind_its_own_earlier_slow_events_is_set_aside_too(
    teams: tuple[int, ...], pool: AsyncConnectionPool[Any], clean_db: Db
) -> None:
    """Batch 1 holds a slow event of team 3; batch 2 a quick one of team 3 and one of team 4: team 4's is
    stored at once, team 3's waits (set aside) for batch 1's, and they reach the person step in order."""
    plugins = GatedPlugins(frozenset({"e0"}))
    built = pipeline(pool)
    built.plugins = plugins  # type: ignore[assignment]
    persons = RecordingPersons(built)
    first = [message(3, "p", {"event": "e0", "properties": {}})]
    second = [
        message(3, "p", {"event": "e1", "properties": {}}),
        message(4, "p", {"event": "e2", "properties": {}}),
    ]
    lane, turnstile = AsideLane(), Turnstile()
    turns = [turnstile.ticket(), turnstile.ticket()]
    outcomes = await asyncio.gather(
        *(
            process_until_done(built, batch, turn, Lanes(PATIENCE, lane.set_aside))
            for batch, turn in zip((first, second), turns, strict=True)
        )
    )
    for turn in turns:
        turn.acknowledged()
        await turn.finish()
    assert [outcome.stored for outcome in outcomes] == [0, 1]
    assert lane.messages == [first[0], second[0]]
    assert persons.seen == [(4, 2)]
    plugins.gate.set()
    await asyncio.wait_for(asyncio.gather(*lane.tasks), 30)
    assert persons.seen == [(4, 2), (3, 0), (3, 1)]


async def test_without_slow_teams_a_batch_is_ingested_together(
    teams: tuple[int, ...], pool: AsyncConnectionPool[Any], clean_db: Db
) -> None:
    built = pipeline(pool)
    built.plugins = GatedPlugins()  # type: ignore[assignment]
    writes: list[int] = []
    write = built.sink.write

    async def counting(events: Any, *persons: Any) -> None:
        writes.append(len(events))
        await write(events, *persons)

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
