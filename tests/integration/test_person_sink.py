"""The pipeline hands its person sink exactly the person, distinct-id and group rows it committed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from plugin_server.db.teams import CreatedTeam
from plugin_server.ingestion.groups import GroupRow
from plugin_server.ingestion.person_outbox import PersonOutbox, resend_forever
from plugin_server.ingestion.persons import DistinctIdRow, PersonManager, PersonRow, PersonUpdate
from plugin_server.sinks import PersonSinkRow
from plugin_server.sinks.memory import ListEventSink, ListPersonSink
from tests.pipelines import message, pipeline

OUTBOX = "SELECT count(*) FROM plugin_server_person_outbox"

Db = psycopg.Connection[Any]


class Mirror:
    """What a store that applies the rows in order, keeping the highest version, ends up holding."""

    def __init__(self) -> None:
        self.persons: dict[str, PersonRow] = {}
        self.owners: dict[tuple[int, str], tuple[str, int]] = {}
        self.groups: dict[tuple[int, int, str], GroupRow] = {}

    def apply(self, rows: Sequence[PersonSinkRow]) -> None:
        for row in rows:
            if isinstance(row, PersonRow):
                kept = self.persons.get(row.uuid)
                if row.is_deleted:
                    self.persons.pop(row.uuid, None)
                elif kept is None or row.version >= kept.version:
                    self.persons[row.uuid] = row
            elif isinstance(row, DistinctIdRow):
                key = (row.team_id, row.distinct_id)
                if row.is_deleted:
                    if self.owners.get(key, ("", 0))[0] == row.person_uuid:
                        del self.owners[key]
                elif row.version >= self.owners.get(key, ("", -1))[1]:
                    self.owners[key] = (row.person_uuid, row.version)
            else:
                self.groups[(row.team_id, row.group_type_index, row.group_key)] = row

    def matches(self, db: Db) -> None:
        """Holds what Postgres holds."""
        persons = db.execute(
            "SELECT uuid::text, properties, is_identified, version FROM posthog_person ORDER BY uuid"
        ).fetchall()
        assert sorted(
            (row.uuid, row.properties, row.is_identified, row.version) for row in self.persons.values()
        ) == [tuple(person) for person in persons]
        owners = db.execute(
            "SELECT d.team_id, d.distinct_id, p.uuid::text, d.version FROM posthog_persondistinctid d "
            "JOIN posthog_person p ON p.id = d.person_id"
        ).fetchall()
        assert self.owners == {
            (team, distinct_id): (uuid, version) for team, distinct_id, uuid, version in owners
        }


async def test_the_sink_gets_the_committed_rows_merges_and_deletions_included(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db
) -> None:
    sink = ListPersonSink()
    run = pipeline(pool, ListEventSink(), sink).run
    t = team.team_id
    await run([message(t, "anon", "$pageview", {"$set": {"a": 1}}), message(t, "user", "$pageview", {})])
    first = sink.rows
    assert sorted((type(row).__name__, getattr(row, "distinct_id", None)) for row in first) == [
        ("DistinctIdRow", "anon"),
        ("DistinctIdRow", "user"),
        ("PersonRow", None),
        ("PersonRow", None),
    ]
    anon = next(row for row in first if isinstance(row, DistinctIdRow) and row.distinct_id == "anon")

    # $identify merges anon's person into user's: the merged person, both ids' moves, the deletion.
    await run([message(t, "user", "$identify", {"$anon_distinct_id": "anon", "$set": {"b": 2}})])
    merge = sink.writes[-1]
    deleted = [row for row in merge if isinstance(row, PersonRow) and row.is_deleted]
    assert [row.uuid for row in deleted] == [anon.person_uuid]
    moved = [(row.distinct_id, row.is_deleted) for row in merge if isinstance(row, DistinctIdRow)]
    assert moved == [("anon", False), ("anon", True)]

    # $create_alias adds an id; $groupidentify names a group; an event that changes nothing adds no row.
    await run(
        [
            message(t, "user", "$create_alias", {"alias": "email@example.com"}),
            message(
                t,
                "user",
                "$groupidentify",
                {"$group_type": "org", "$group_key": "ph", "$group_set": {"n": 1}},
            ),
            message(t, "user", "$pageview", {"$set": {"b": 2}}),
        ]
    )
    last = sink.writes[-1]
    assert [(type(row).__name__, getattr(row, "distinct_id", None)) for row in last] == [
        ("DistinctIdRow", "email@example.com"),
        ("GroupRow", None),
    ]
    group = last[-1]
    assert group == GroupRow(t, 0, "ph", {"n": 1}, datetime(2021, 11, 28, 9, 59, 58, 123000, tzinfo=UTC))

    mirror = Mirror()
    for write in sink.writes:
        mirror.apply(write)
    mirror.matches(clean_db)
    [(_, person)] = mirror.persons.items()
    assert person.properties == {"a": 1, "b": 2} and person.is_identified


def _update(team_id: int, distinct_id: str, properties: dict[str, Any], event: str = "e") -> PersonUpdate:
    return PersonUpdate(team_id, distinct_id, event, properties, datetime.now(UTC))


class FailingOnce(ListPersonSink):
    """A sink whose first write fails (a broker outage)."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    async def write(self, rows: Sequence[PersonSinkRow]) -> None:
        if not self.failed:
            self.failed = True
            raise ConnectionError("the mirror is down")
        await super().write(rows)


async def test_rows_a_failed_write_did_not_take_reach_the_sink_when_the_batch_is_run_again(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db
) -> None:
    """The batch's rows are in Postgres before the sink fails; its second run changes nothing there, so
    the person manager hands the rows of the failed write over again."""
    sink = FailingOnce()
    built = pipeline(pool, ListEventSink(), sink, PersonOutbox())
    batch = [
        message(team.team_id, "a", "$pageview", {"$set": {"k": 1}}),
        message(team.team_id, "b", "$identify", {"$anon_distinct_id": "a"}),
    ]
    with pytest.raises(ConnectionError):
        await built.run(batch)
    assert sink.writes == []
    [(recorded,)] = clean_db.execute(OUTBOX).fetchall()
    assert recorded == 4  # created a with its id; b's id added to a's person; identified
    await built.run(batch)
    mirror = Mirror()
    mirror.apply(sink.rows)
    mirror.matches(clean_db)
    assert len(mirror.persons) == 1 and len(mirror.owners) == 2
    assert clean_db.execute(OUTBOX).fetchall() == [(0,)]  # taken by the sink: forgotten


async def test_rows_a_killed_worker_left_unsent_are_sent_again_as_they_are_now(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db
) -> None:
    """A worker writes persons, merges two, and dies before its sink took the rows. Another worker
    changes one of the persons meanwhile. The outbox sends the dead worker's rows again: the persons and
    ids as they are now (not the older state it recorded), the merged-away person's deletion as recorded."""
    t, outbox = team.team_id, PersonOutbox()
    first = PersonManager(pool, lru_size=100, outbox=outbox)
    sink = ListPersonSink()
    created = await first.process_batch([_update(t, "anon", {"$set": {"a": 1}}), _update(t, "user", {})])
    await sink.write(created.rows)
    await first.delivered(created)
    dead = await first.process_batch([_update(t, "user", {"$anon_distinct_id": "anon"}, "$identify")])
    assert any(
        isinstance(row, PersonRow) and row.is_deleted for row in dead.rows
    )  # never sent: the worker died
    later = await PersonManager(pool, lru_size=100, outbox=outbox).process_batch(
        [_update(t, "anon", {"$set": {"a": 2}})]
    )
    await sink.write(later.rows)
    await first.delivered(later)

    assert await outbox.resend(pool, sink.write, older_than=0) == len(dead.rows)
    assert await outbox.resend(pool, sink.write, older_than=0) == 0
    mirror = Mirror()
    mirror.apply(sink.rows)
    mirror.matches(clean_db)
    [(_, person)] = mirror.persons.items()
    assert person.properties == {"a": 2} and person.is_identified


async def test_workers_keep_sending_what_dead_workers_left_and_survive_a_mirror_outage(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db
) -> None:
    outbox, sink = PersonOutbox(), FailingOnce()
    left = await PersonManager(pool, lru_size=100, outbox=outbox).process_batch(
        [_update(team.team_id, "x", {})]
    )
    sent = asyncio.Event()
    original = sink.write

    async def write(rows: Sequence[PersonSinkRow]) -> None:
        await original(rows)
        sent.set()

    resending = asyncio.create_task(resend_forever(outbox, pool, write, older_than=0, every=0.01))
    try:
        await asyncio.wait_for(sent.wait(), 10)  # the first round failed (FailingOnce), a later one sent
        async with asyncio.timeout(10):
            while clean_db.execute(OUTBOX).fetchall() != [(0,)]:  # deleted once that round commits
                await asyncio.sleep(0.01)
    finally:
        resending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await resending
    assert sink.failed and sorted(type(row).__name__ for row in sink.rows) == ["DistinctIdRow", "PersonRow"]
    assert [row.uuid for row in sink.rows if isinstance(row, PersonRow)] == [left.rows[0].uuid]
