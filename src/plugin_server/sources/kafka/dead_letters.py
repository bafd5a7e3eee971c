"""Dead letters on Kafka: one JSON message on KAFKA_DEAD_LETTER_TOPIC per message that could not
be ingested, in the original's format (reference 3.2): the event's fields except now, sent_at and
timestamp, `id`, `event_uuid`, `properties` as a JSON string, `now` and `error_timestamp` in
ClickHouse's second-precision format, `raw_payload`, `error_location` and `error`.

`raw_payload` is the message exactly as it was consumed (the original put the event there), so that
a dead letter can be produced to the ingestion topic again as it came.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from plugin_server.ingestion.message_fields import parse_now
from plugin_server.ingestion.types import RawEvent
from plugin_server.ingestion.uuidt import uuidt

ERROR_LOCATION = "plugin_server_ingest_event"
_LEFT_OUT = ("now", "sent_at", "timestamp")


def dead_letter_record(event: RawEvent | None, message: bytes, reason: str) -> bytes:
    """The dead-letter message of `message` (whose event, if it could be read, is `event`)."""
    event = event or {}
    failed_at = datetime.now(UTC)
    record: dict[str, Any] = {key: value for key, value in event.items() if key not in _LEFT_OUT}
    record.update(
        id=uuidt(),
        event_uuid=event.get("uuid"),
        properties=orjson.dumps(event.get("properties") or {}).decode(),
        now=_clickhouse_time(parse_now(event.get("now")) or failed_at),
        error_timestamp=_clickhouse_time(failed_at),
        raw_payload=message.decode("utf-8", "backslashreplace"),
        error_location=ERROR_LOCATION,
        error=f"ingestEvent failed. Error: {reason}",
    )
    return orjson.dumps(record, default=str)


def _clickhouse_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
