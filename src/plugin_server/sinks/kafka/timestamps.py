"""Times as ClickHouse reads them from JSON and protobuf text fields, in UTC.

`isoformat` and a slice, as strftime costs several times more. Still, formatting was the largest part of
building an event record (four times per event in today's format), and three of those times repeat within
a batch (the batch's time, the capture time, the person's creation): the last few answers are kept.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache


@lru_cache(maxsize=256)
def clickhouse_ms(moment: datetime) -> str:
    """'YYYY-MM-DD HH:MM:SS.mmm' (the original's TimestampFormat.ClickHouse)."""
    utc = moment.astimezone(UTC) if moment.tzinfo else moment
    return utc.isoformat(sep=" ", timespec="milliseconds")[:23]


@lru_cache(maxsize=256)
def clickhouse_seconds(moment: datetime) -> str:
    """'YYYY-MM-DD HH:MM:SS' (the original's TimestampFormat.ClickHouseSecondPrecision)."""
    utc = moment.astimezone(UTC) if moment.tzinfo else moment
    return utc.isoformat(sep=" ", timespec="seconds")[:19]
