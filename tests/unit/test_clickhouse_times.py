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


def test_the_fields_are_those_isoformat_writes_for_any_moment() -> None:
    zones = [UTC, timezone(timedelta(hours=-9, minutes=-30)), timezone(timedelta(hours=14)), None]
    moments = [
        datetime(year, month, 28, hour, 59, 59, micro, tzinfo=zone)
        for year in (1, 999, 1970, 2026, 9998)
        for month in (1, 12)
        for hour in (0, 23)
        for micro in (0, 999, 1000, 999999)
        for zone in zones
    ]
    for moment in moments:
        utc = moment.astimezone(UTC) if moment.tzinfo else moment
        assert clickhouse_ms(moment) == utc.isoformat(sep=" ", timespec="milliseconds")[:23]
        assert clickhouse_seconds(moment) == utc.isoformat(sep=" ", timespec="seconds")[:19]
