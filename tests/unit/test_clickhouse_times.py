"""Times in ClickHouse's text form: UTC, milliseconds cut (not rounded), zero-padded years."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from plugin_server.sinks.kafka.timestamps import clickhouse_ms, clickhouse_seconds


def test_times_are_written_in_utc_with_milliseconds_or_seconds() -> None:
    moment = datetime(2021, 11, 28, 9, 59, 58, 123999, tzinfo=timezone(timedelta(hours=2)))
    assert (clickhouse_ms(moment), clickhouse_seconds(moment)) == (
        "2021-11-28 07:59:58.123",
        "2021-11-28 07:59:58",
    )
    assert clickhouse_ms(datetime(2021, 1, 1, tzinfo=UTC)) == "2021-01-01 00:00:00.000"
    assert clickhouse_seconds(datetime(5, 1, 2, 3, 4, 5, tzinfo=UTC)) == "0005-01-02 03:04:05"
