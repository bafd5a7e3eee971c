"""The limit of the Celery -> Postgres path on this machine, measured beside the pipeline (`--limit`
of `celery_to_postgres.py`): what storing the rows and decoding the messages cost when nothing else
is done, in CPU per event.

- Postgres: the rows the pipeline stored in its last run (events, and its 100 persons and their
  distinct ids first) are dumped with COPY TO and COPYed into a fresh database with the same
  migrations (the same indexes), one COPY in one transaction (the team key checked once, as the sink
  does: sinks/team_references.py), in text and in binary format; the CPU of every Postgres process
  over each COPY, per row. The rows Python encodes (below) are COPYed the same way, which also checks
  them.
- Python, in this process alone: a minimal decoder (orjson, base64; nothing checked, the task id as
  the event's uuid), then the event's row in COPY text format (its properties with `$ip`, by orjson);
  process CPU time per event of each half, the garbage collector off. The project's own decoding,
  `event_or_task` (which checks everything and derives a time-ordered uuid), is timed too, for
  comparison.
"""

from __future__ import annotations

import base64
import contextlib
import gc
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import psutil
import psycopg

from benchmarks.cpu import CpuMeter
from benchmarks.services import TEAM_ID, fresh_database
from plugin_server.ingestion.celery import event_or_task
from plugin_server.sinks.team_references import LOCK_TEAMS_AND_SKIP_ROW_CHECKS

LIMIT_DATABASE = "plugin_server_limit"
CORES = 2  # the machine the limit is for: the benchmark's, where everything shares two cores
EVENT_COLUMNS = (
    "uuid, event, distinct_id, properties, team_id, timestamp, created_at, elements, elements_hash, site_url"
)
PERSON_TABLES = ("posthog_person", "posthog_persondistinctid")
CHUNK = 1 << 20  # bytes per write of a COPY


@dataclass(frozen=True)
class Copy:
    cpu_per_row: float  # seconds of Postgres CPU
    rows_per_second: float  # wall


@dataclass(frozen=True)
class Limit:
    decode: float  # seconds of Python CPU per event, minimal decoder
    encode: float
    project_decode: float  # the project's event_or_task
    text: Copy  # the pipeline's rows, COPY text
    binary: Copy  # the pipeline's rows, COPY binary
    python_rows: Copy  # the rows Python encoded, COPY text

    @property
    def postgres(self) -> float:
        """Postgres's CPU seconds per row by the cheaper COPY format."""
        return min(self.text.cpu_per_row, self.binary.cpu_per_row)

    def events_per_second(self, valkey: float, cores: int = CORES) -> float:
        """What `cores` could store if they did nothing but this: Postgres, Python's minimal decode and
        encode, and `valkey` (its CPU seconds per event in the pipeline's runs)."""
        return cores / (self.postgres + self.decode + self.encode + valkey)

    def formula(self, valkey: float, cores: int = CORES) -> str:
        parts = (self.postgres, self.decode + self.encode, valkey)
        return (
            f"limit: {cores} cores / (postgres {parts[0] * 1e6:.1f} + python {parts[1] * 1e6:.1f}"
            f" + valkey {parts[2] * 1e6:.1f} (the pipeline runs') = {sum(parts) * 1e6:.1f} µs/event)"
            f" = {self.events_per_second(valkey, cores):,.0f} events/s"
        )

    def summary(self) -> str:
        def copy(name: str, result: Copy) -> str:
            return f"{name} {result.cpu_per_row * 1e6:.1f} µs/row ({result.rows_per_second:,.0f} rows/s)"

        return (
            f"limit, python (one process): decode {self.decode * 1e6:.2f} + encode {self.encode * 1e6:.2f}"
            f" µs/event (the project's event_or_task: {self.project_decode * 1e6:.2f});"
            f" postgres COPY, CPU of all its processes: {copy('text', self.text)}, "
            f"{copy('binary', self.binary)}, {copy('python-encoded text', self.python_rows)}"
        )


def measure_limit(server_url: str, pipeline_url: str, messages: list[bytes]) -> Limit:
    """The limit's parts, for `messages` and the rows the pipeline stored in `pipeline_url`."""
    decode, encode, project_decode, python_rows = python_cost(messages)
    with psycopg.connect(pipeline_url) as source:
        persons = {table: dump(source, f"COPY {table} TO STDOUT (FORMAT binary)") for table in PERSON_TABLES}
        events = {
            form: dump(source, f"COPY posthog_event ({EVENT_COLUMNS}) TO STDOUT (FORMAT {form})")
            for form in ("text", "binary")
        }
    return Limit(
        decode,
        encode,
        project_decode,
        copy_events(server_url, persons, events["text"], "text"),
        copy_events(server_url, persons, events["binary"], "binary"),
        copy_events(server_url, persons, python_rows, "text"),
    )


def python_cost(messages: list[bytes]) -> tuple[float, float, float, bytes]:
    """CPU seconds per message to decode it minimally, to encode its row, to decode it with the
    project's functions; and the rows in COPY text format."""
    created_at = datetime.now(UTC).isoformat().encode()
    # Without the collector: holding 100,000 decoded tasks would set off collections that traverse
    # them all, a cost of this measurement (a worker holds one micro-batch), not of decoding.
    gc.disable()
    try:
        return _timed_python_cost(messages, created_at)
    finally:
        gc.enable()


def _timed_python_cost(messages: list[bytes], created_at: bytes) -> tuple[float, float, float, bytes]:
    begin = time.process_time()
    tasks = [minimal_decode(message) for message in messages]
    decoded = time.process_time()
    rows = b"".join([copy_row(task_id, args, created_at) for task_id, args in tasks])
    encoded = time.process_time()
    for message in messages:
        event_or_task(message)
    project = time.process_time()
    count = len(messages)
    return (decoded - begin) / count, (encoded - decoded) / count, (project - encoded) / count, rows


def minimal_decode(message: bytes) -> tuple[str, list[Any]]:
    """(task id, task arguments) of a Celery protocol 2 envelope, nothing checked."""
    envelope = orjson.loads(message)
    return envelope["headers"]["id"], orjson.loads(base64.b64decode(envelope["body"]))[0]


def copy_row(task_id: str, args: list[Any], created_at: bytes) -> bytes:
    """posthog_event's row (EVENT_COLUMNS) of a `process_event_with_plugins` task in COPY text format,
    as the pipeline stores it without plugins (properties with `$ip`, no elements) but for the uuid,
    which is the task's id, and the timestamp, which is the event's as sent."""
    distinct_id, ip, site_url, data, team_id, now = args[:6]
    properties = data.get("properties") or {}
    if ip:
        properties = {**properties, "$ip": ip}
    fields = (
        _text(task_id),
        _text(data.get("event") or ""),
        _text(distinct_id),
        orjson.dumps(properties, option=orjson.OPT_NON_STR_KEYS).replace(b"\\", b"\\\\"),
        str(int(team_id)).encode(),
        _text(data.get("timestamp") or now),
        created_at,
        b"[]",
        b"",
        _text(site_url or ""),
    )
    return b"\t".join(fields) + b"\n"


def _text(value: Any) -> bytes:
    """A text column in COPY text format: backslash, tab, newline and carriage return escaped."""
    raw = str(value).encode()
    return raw.replace(b"\\", b"\\\\").replace(b"\t", b"\\t").replace(b"\n", b"\\n").replace(b"\r", b"\\r")


def dump(connection: psycopg.Connection[Any], statement: str) -> bytes:
    with connection.cursor().copy(statement) as copy:
        return b"".join(bytes(chunk) for chunk in copy)


def copy_events(server_url: str, persons: Mapping[str, bytes], events: bytes, form: str) -> Copy:
    """Postgres's CPU per row and wall rate of one COPY of `events` into a fresh database that has
    `persons` (binary dumps by table)."""
    url = fresh_database(server_url, name=LIMIT_DATABASE)
    with psycopg.connect(url) as connection:
        for table, data in persons.items():
            with connection.cursor().copy(f"COPY {table} FROM STDIN (FORMAT binary)") as copy:
                copy.write(data)
        connection.commit()
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            connection.execute(
                "CHECKPOINT"
            )  # not the writes before (the database's creation) during the COPY
        row = connection.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        meter = CpuMeter({"postgres": [psutil.Process(row[0]).ppid()]})
        meter.start()
        skipped = connection.execute(LOCK_TEAMS_AND_SKIP_ROW_CHECKS, {"teams": [TEAM_ID], "count": 1})
        if skipped.fetchone() is None:
            raise RuntimeError("the team key would be checked row by row (sinks/team_references.py)")
        with connection.cursor().copy(
            f"COPY posthog_event ({EVENT_COLUMNS}) FROM STDIN (FORMAT {form})"
        ) as copy:
            for offset in range(0, len(events), CHUNK):
                copy.write(events[offset : offset + CHUNK])
        connection.commit()
        use = meter.stop()
        stored = connection.execute("SELECT COUNT(*) FROM posthog_event").fetchone()
    rows = stored[0] if stored else 0
    if not rows:
        raise RuntimeError("the COPY stored no rows")
    return Copy(sum(use.seconds["postgres"]) / rows, rows / use.wall)
