"""Times as ClickHouse reads them from JSON and protobuf text fields, in UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def clickhouse_ms(moment: datetime) -> str:
    """'YYYY-MM-DD HH:MM:SS.mmm' (the original's TimestampFormat.ClickHouse)."""
    utc = moment.astimezone(UTC) if moment.tzinfo else moment
    return utc.strftime("%Y-%m-%d %H:%M:%S.") + f"{utc.microsecond // 1000:03d}"


def clickhouse_seconds(moment: datetime) -> str:
    """'YYYY-MM-DD HH:MM:SS' (the original's TimestampFormat.ClickHouseSecondPrecision)."""
    utc = moment.astimezone(UTC) if moment.tzinfo else moment
    return utc.strftime("%Y-%m-%d %H:%M:%S")
