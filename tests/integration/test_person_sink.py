"""The pipeline hands its person sink exactly the person, distinct-id and group rows it committed."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from plugin_server.db.teams import CreatedTeam
from plugin_server.ingestion.groups import GroupRow
from plugin_server.ingestion.persons import DistinctIdRow, PersonRow
from plugin_server.sinks import PersonSinkRow
from plugin_server.sinks.memory import ListEventSink, ListPersonSink
from tests.pipelines import message, pipeline

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
    built = pipeline(pool, ListEventSink(), sink)
    batch = [
        message(team.team_id, "a", "$pageview", {"$set": {"k": 1}}),
        message(team.team_id, "b", "$identify", {"$anon_distinct_id": "a"}),
    ]
    with pytest.raises(ConnectionError):
        await built.run(batch)
    assert sink.writes == []
    await built.run(batch)
    mirror = Mirror()
    mirror.apply(sink.rows)
    mirror.matches(clean_db)
    assert len(mirror.persons) == 1 and len(mirror.owners) == 2
