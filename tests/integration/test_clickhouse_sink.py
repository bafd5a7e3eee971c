"""The direct writer on chDB: with EVENT_STORE=clickhouse-direct the pipeline (Celery messages in) stores its
events in ClickHouse's `events` and recordings in `session_recording_events`, in the original's row
shape; a message delivered again collapses into the first (FINAL); the historical export reads them
back in time order."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from clickhouse_connect.driver.client import Client
from psycopg_pool import AsyncConnectionPool

from plugin_server.config import Settings
from plugin_server.db.teams import CreatedTeam
from plugin_server.ingestion.pipeline import EventPipeline
from plugin_server.ingestion.types import PreparedEvent
from plugin_server.plugins.historical import HistoricalExport, ReadFailed
from plugin_server.sinks.clickhouse.client import AsyncClickHouse
from plugin_server.sinks.clickhouse.events import ClickHouseEventSink
from plugin_server.sinks.clickhouse.reader import ClickHouseStoredEvents
from plugin_server.sinks.postgres import PostgresEventSink
from plugin_server.topology import open_sinks, open_stored_events
from tests.integration.test_pipeline import message, pipeline

AUTOCAPTURE = {
    "event": "$autocapture",
    "properties": {
        "$elements": [
            {
                "tag_name": "a",
                "attr__href": "/signup",
                "$el_text": "Sign up",
                "nth_child": 1,
                "nth_of_type": 2,
            },
            {"tag_name": "div", "attr__class": "hero big"},
        ]
    },
}


@pytest.fixture
async def clickhouse_pipeline(
    clickhouse: Client, clickhouse_settings: Settings, pool: AsyncConnectionPool[Any]
) -> AsyncIterator[EventPipeline]:
    settings = clickhouse_settings.model_copy(update={"EVENT_STORE": "clickhouse-direct"})
    async with open_sinks(settings, pool) as sinks:
        built = pipeline(pool)
        built.sink = sinks.events
        yield built


async def test_the_pipeline_stores_events_and_recordings_in_clickhouse(
    clickhouse_pipeline: EventPipeline, clickhouse: Client, team: CreatedTeam
) -> None:
    assert isinstance(clickhouse_pipeline.sink, ClickHouseEventSink)
    snapshot = {"event": "$snapshot", "properties": {"$session_id": "s-1", "$snapshot_data": {"type": 2}}}
    pageview = {
        "event": "$pageview",
        "properties": {"price": 3.5},
        "timestamp": "2021-11-28T09:59:00.123456Z",
    }
    outcome = await clickhouse_pipeline.run(
        [
            message(team.team_id, "user-1", pageview),
            message(team.team_id, "user-1", AUTOCAPTURE),
            message(team.team_id, "user-1", snapshot),
        ]
    )
    assert (outcome.stored, outcome.dead_letters) == (3, [])
    stored = clickhouse.query(
        "SELECT event, team_id, distinct_id, properties, elements_chain, timestamp, _timestamp FROM events FINAL ORDER BY timestamp"
    ).named_results()
    first, second = list(stored)
    assert (first["event"], first["team_id"], first["distinct_id"]) == ("$pageview", team.team_id, "user-1")
    assert first["timestamp"] == datetime(2021, 11, 28, 9, 59, 0, 123000)  # milliseconds, as JS dates
    # The version is the capture time `now`: the same on redelivery.
    assert first["_timestamp"] == datetime(2021, 11, 28, 10, 0)
    properties = orjson.loads(first["properties"])
    assert (properties["price"], properties["$ip"]) == (3.5, "11.12.13.14")
    assert second["event"] == "$autocapture"
    assert (
        second["elements_chain"]
        == 'a:attr__href="/signup"href="/signup"nth-child="1"nth-of-type="2"text="Sign up";'
        'div.big.hero:attr__class="hero big"nth-child="0"nth-of-type="0"'
    )
    assert "$elements" not in orjson.loads(second["properties"])
    [recording] = clickhouse.query(
        "SELECT session_id, snapshot_data, distinct_id FROM session_recording_events FINAL"
    ).result_rows
    assert recording == ("s-1", '{"type":2}', "user-1")


async def test_a_message_delivered_again_is_stored_once(
    clickhouse_pipeline: EventPipeline, clickhouse: Client, team: CreatedTeam
) -> None:
    repeated = message(team.team_id, "someone", {"event": "once"}, task_id="task-1")
    snapshot = message(
        team.team_id, "someone", {"event": "$snapshot", "properties": {"$session_id": "s"}}, task_id="task-2"
    )
    await clickhouse_pipeline.run([repeated, snapshot])
    await clickhouse_pipeline.run([repeated, snapshot])
    assert clickhouse.query("SELECT count() FROM events").result_rows == [(2,)]  # before merging
    assert clickhouse.query("SELECT count() FROM events FINAL").result_rows == [(1,)]
    assert clickhouse.query("SELECT count() FROM session_recording_events FINAL").result_rows == [(1,)]


async def test_event_sink_postgres_is_the_default(
    clickhouse_settings: Settings, pool: AsyncConnectionPool[Any]
) -> None:
    async with open_sinks(clickhouse_settings, pool) as sinks:
        assert isinstance(sinks.events, PostgresEventSink)


class Recorder:
    """The parts of a plugin config the historical export drives: exportEvents, storage, jobs, logs."""

    def __init__(self) -> None:
        self.exported: list[dict[str, Any]] = []
        self.storage: dict[str, Any] = {}
        self.queued: list[dict[str, Any]] = []
        self.lines: list[str] = []

    async def export_events(self, events: list[dict[str, Any]]) -> None:
        self.exported.extend(events)

    async def get(self, key: str, default: Any = None) -> Any:
        return self.storage.get(key, default)

    async def set(self, key: str, value: Any) -> None:
        self.storage[key] = value

    def __getitem__(self, name: str) -> Any:
        recorder = self

        class Runner:
            def __init__(self, payload: dict[str, Any]) -> None:
                self.payload = payload

            async def run_now(self) -> None:
                recorder.queued.append(self.payload)

        return Runner

    def info(self, line: str) -> None:
        self.lines.append(line)

    debug = warn = error = info


def prepared(team_id: int, n: int, at: datetime) -> PreparedEvent:
    return PreparedEvent(
        uuid=str(uuid.UUID(int=n + 1)),
        team_id=team_id,
        distinct_id=f"d{n}",
        ip=None,
        site_url=None,
        event="$pageview",
        properties={"n": n},
        timestamp=at,
        now=at,
        sent_at=None,
    )


async def test_the_historical_export_reads_clickhouse(
    clickhouse: Client, clickhouse_settings: Settings, pool: AsyncConnectionPool[Any]
) -> None:
    """250 events 6 s apart (25 minutes: intervals of 60 events, pages of 100), one stored twice,
    one of another team: each of the team's events exported once, in time order."""
    start = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
    events = [prepared(2, n, start + timedelta(seconds=6 * n)) for n in range(250)]
    clickhouse_sink = ClickHouseEventSink(AsyncClickHouse(clickhouse))
    await clickhouse_sink.write(events[:200])
    await clickhouse_sink.write(
        [*events[150:], prepared(3, 999, start)]
    )  # a batch delivered again, and team 3
    recorder = Recorder()
    settings = clickhouse_settings.model_copy(
        update={"EVENT_STORE": "clickhouse-direct", "AUTO_MIGRATE": False}
    )
    async with open_stored_events(settings, pool) as stored:
        assert isinstance(stored, ClickHouseStoredEvents)
        assert await stored.boundaries(2) == (start, start + timedelta(seconds=6 * 249))
        assert await stored.boundaries(4) == (None, None)
        fake: Any = recorder  # stands for the plugin's instance and logger
        export = HistoricalExport(
            pool, fake, team_id=2, storage=recorder, jobs=recorder, logger=fake, events=stored
        )
        await export.run("Export historical events", {})
        while recorder.queued:
            await export.run("exportEventsFromTheBeginning", recorder.queued.pop(0))
    assert [event["properties"]["n"] for event in recorder.exported] == list(range(250))
    first = recorder.exported[0]
    assert (first["uuid"], first["distinct_id"], first["timestamp"]) == (
        events[0].uuid,
        "d0",
        start.isoformat(),
    )
    assert first["properties"]["$$historical_export_source_db"] == "clickhouse"
    assert recorder.storage["is_export_running"] is None
    assert recorder.lines[-1] == "Done exporting all historical events."


async def test_a_failed_clickhouse_read_is_a_read_failure(clickhouse: Client) -> None:
    clickhouse.command("DROP TABLE events")
    with pytest.raises(ReadFailed):
        await ClickHouseStoredEvents(AsyncClickHouse(clickhouse)).page(
            2, datetime.now(UTC), datetime.now(UTC), 0, 1
        )
