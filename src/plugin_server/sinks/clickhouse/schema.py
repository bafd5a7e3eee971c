"""The ClickHouse schema: the tables PostHog reads (reference: original-behaviour.md 8.2,
posthog-today-formats.md 12), and the Kafka-engine tables with their materialized views that feed
them from the `clickhouse_*` topics.

Every table uses a replacing (or, for the 2021 distinct ids, collapsing) engine whose sorting key is
the row's identity, so that a row delivered twice (a redelivered batch, a Kafka message read again)
collapses into one on merge, and reads with FINAL see it once. Events are keyed as PostHog keys them:
(team_id, toDate(timestamp), event, cityHash64(distinct_id), cityHash64(uuid)).

The base tables have today's columns (a superset of the 2021 ones; what a 2021 message does not carry
gets its default). Which topics and message formats the Kafka tables read is CLICKHOUSE_KAFKA_FORMAT:
`original` (the 2021 server: protobuf events on `clickhouse_events_proto`, distinct ids on
`clickhouse_person_unique_id` into the collapsing `person_distinct_id`) or `current` (JSON events on
`clickhouse_events_json` with the person columns, versioned distinct ids on
`clickhouse_person_distinct_id` into `person_distinct_id2`). Topic names get KAFKA_PREFIX in front.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

Formats = Literal["original", "current"]

# The schema of the protobuf events, which ClickHouse's format_schemas folder needs for `kafka_events`.
EVENTS_PROTO = Path(str(resources.files("plugin_server.sinks.kafka").joinpath("events.proto")))

# Kafka tables' virtual columns, which the materialized views copy into every table.
KAFKA_COLUMNS = "_timestamp DateTime, _offset UInt64"
GROUPS = range(5)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


_EVENT_COLUMNS = (
    "uuid UUID, event String, properties String CODEC(ZSTD(3)), timestamp DateTime64(6, 'UTC'), "
    "team_id Int64, distinct_id String, elements_chain String, created_at DateTime64(6, 'UTC'), "
    "person_id UUID, person_created_at DateTime64(3), person_properties String CODEC(ZSTD(3)), "
    + "".join(f"group{n}_properties String, group{n}_created_at DateTime64(3), " for n in GROUPS)
    + "person_mode Enum8('full' = 0, 'propertyless' = 1, 'force_upgrade' = 2), historical_migration Bool"
)

MIGRATIONS = (
    Migration(
        1,
        "events",
        (
            f"""CREATE TABLE IF NOT EXISTS events ({_EVENT_COLUMNS}, {KAFKA_COLUMNS})
            ENGINE = ReplacingMergeTree(_timestamp)
            PARTITION BY toYYYYMM(timestamp)
            ORDER BY (team_id, toDate(timestamp), event, cityHash64(distinct_id), cityHash64(uuid))
            SAMPLE BY cityHash64(distinct_id)""",
            f"""CREATE TABLE IF NOT EXISTS session_recording_events (
                uuid UUID, timestamp DateTime64(6, 'UTC'), team_id Int64, distinct_id String,
                session_id String, snapshot_data String CODEC(ZSTD(3)), created_at DateTime64(6, 'UTC'),
                {KAFKA_COLUMNS})
            ENGINE = ReplacingMergeTree(_timestamp)
            PARTITION BY toYYYYMMDD(timestamp)
            ORDER BY (team_id, toHour(timestamp), session_id, timestamp, uuid)""",
        ),
    ),
    Migration(
        2,
        "persons_and_groups",
        (
            f"""CREATE TABLE IF NOT EXISTS person (
                id UUID, created_at DateTime64(3), team_id Int64, properties String, is_identified Int8,
                is_deleted Int8, version UInt64, last_seen_at Nullable(DateTime64(3)), {KAFKA_COLUMNS})
            ENGINE = ReplacingMergeTree(version)
            ORDER BY (team_id, id)""",
            # 2021: a row per (distinct id, person) with a sign; a removal is the same row with -1.
            """CREATE TABLE IF NOT EXISTS person_distinct_id (
                distinct_id String, person_id UUID, team_id Int64, _sign Int8 DEFAULT 1,
                is_deleted Int8 ALIAS if(_sign = -1, 1, 0), _timestamp DateTime, _offset UInt64)
            ENGINE = CollapsingMergeTree(_sign)
            ORDER BY (team_id, distinct_id, person_id)""",
            # Today: one row per distinct id, the highest version wins.
            f"""CREATE TABLE IF NOT EXISTS person_distinct_id2 (
                team_id Int64, distinct_id String, person_id UUID, is_deleted Int8, version Int64,
                {KAFKA_COLUMNS}, _partition UInt64)
            ENGINE = ReplacingMergeTree(version)
            ORDER BY (team_id, distinct_id)
            SETTINGS index_granularity = 512""",
            f"""CREATE TABLE IF NOT EXISTS groups (
                group_type_index UInt8, group_key String, created_at DateTime64(3), team_id Int64,
                group_properties String, {KAFKA_COLUMNS})
            ENGINE = ReplacingMergeTree(_timestamp)
            ORDER BY (team_id, group_type_index, group_key)""",
        ),
    ),
    Migration(
        3,
        "plugin_logs_and_dead_letters",
        (
            f"""CREATE TABLE IF NOT EXISTS plugin_log_entries (
                id UUID, team_id Int64, plugin_id Int64, plugin_config_id Int64,
                timestamp DateTime64(6, 'UTC'), source String, type String, message String,
                instance_id UUID, {KAFKA_COLUMNS})
            ENGINE = ReplacingMergeTree(_timestamp)
            PARTITION BY plugin_id
            ORDER BY (team_id, plugin_id, plugin_config_id, timestamp, id)""",
            f"""CREATE TABLE IF NOT EXISTS events_dead_letter_queue (
                id UUID, event_uuid UUID, event String, properties String, distinct_id String,
                team_id Int64, elements_chain String, created_at DateTime64(6, 'UTC'), ip String,
                site_url String, now DateTime64(6, 'UTC'), raw_payload String,
                error_timestamp DateTime64(6, 'UTC'), error_location String, error String,
                tags Array(String), {KAFKA_COLUMNS})
            ENGINE = ReplacingMergeTree(_timestamp)
            ORDER BY (id, event_uuid, distinct_id, team_id)""",
        ),
    ),
)


@dataclass(frozen=True)
class KafkaFeed:
    """One topic read by a Kafka table, and the materialized view that copies it into a table."""

    table: str  # the Kafka table
    topic: str
    columns: str  # the message's fields, as the Kafka table's columns
    target: str
    select: str  # the view's SELECT list (the Kafka virtual columns are added)
    format: str = "JSONEachRow"
    schema: str | None = None  # kafka_schema, for formats that need one

    @property
    def view(self) -> str:
        """The materialized view from the Kafka table into `target` (PostHog's names: `events_mv`...)."""
        return self.table.removeprefix("kafka_") + "_mv"

    @property
    def column_names(self) -> list[str]:
        """The names of `columns` (a type's own commas are inside its parentheses)."""
        names, depth, start = [], 0, 0
        for index, char in enumerate(self.columns + ","):
            depth += {"(": 1, ")": -1}.get(char, 0)
            if char == "," and depth == 0:
                names.append(self.columns[start:index].split()[0])
                start = index + 1
        return names


_ORIGINAL_EVENT_FIELDS = (
    "uuid UUID, event String, properties String, timestamp DateTime64(6, 'UTC'), team_id UInt64, "
    "distinct_id String, created_at DateTime64(6, 'UTC'), elements_chain String"
)
_RECORDINGS = KafkaFeed(
    "kafka_session_recording_events",
    "clickhouse_session_recording_events",
    "uuid UUID, timestamp DateTime64(6, 'UTC'), team_id Int64, distinct_id String, session_id String, "
    "snapshot_data String, created_at DateTime64(6, 'UTC')",
    "session_recording_events",
    "uuid, timestamp, team_id, distinct_id, session_id, snapshot_data, created_at",
)
_GROUPS = KafkaFeed(
    "kafka_groups",
    "clickhouse_groups",
    "group_type_index UInt8, group_key String, created_at DateTime64(3), team_id Int64, "
    "group_properties String",
    "groups",
    "group_type_index, group_key, created_at, team_id, group_properties",
)
_PLUGIN_LOGS = KafkaFeed(
    "kafka_plugin_log_entries",
    "plugin_log_entries",
    "id UUID, team_id Int64, plugin_id Int64, plugin_config_id Int64, timestamp DateTime64(6, 'UTC'), "
    "source String, type String, message String, instance_id UUID",
    "plugin_log_entries",
    "id, team_id, plugin_id, plugin_config_id, timestamp, source, type, message, instance_id",
)
_DEAD_LETTERS = KafkaFeed(
    "kafka_events_dead_letter_queue",
    "events_dead_letter_queue",
    "id UUID, event_uuid UUID, event String, properties String, distinct_id String, team_id Int64, "
    "elements_chain String, created_at DateTime64(6, 'UTC'), ip String, site_url String, "
    "now DateTime64(6, 'UTC'), raw_payload String, error_timestamp DateTime64(6, 'UTC'), "
    "error_location String, error String, tags Array(String)",
    "events_dead_letter_queue",
    "id, event_uuid, event, properties, distinct_id, team_id, elements_chain, created_at, ip, site_url, "
    "now, raw_payload, error_timestamp, error_location, error, tags",
)

FEEDS: dict[Formats, tuple[KafkaFeed, ...]] = {
    "original": (
        KafkaFeed(
            "kafka_events",
            "clickhouse_events_proto",
            _ORIGINAL_EVENT_FIELDS,
            "events",
            "uuid, event, properties, timestamp, team_id, distinct_id, elements_chain, created_at",
            # Length-delimited protobuf messages of EVENTS_PROTO's `Event` (in ClickHouse's format_schemas).
            format="Protobuf",
            schema="events:Event",
        ),
        KafkaFeed(
            "kafka_person",
            "clickhouse_person",
            "id UUID, created_at DateTime64(3), team_id Int64, properties String, is_identified Int8, "
            "is_deleted Int8",
            "person",
            "id, created_at, team_id, properties, is_identified, is_deleted",
        ),
        KafkaFeed(
            "kafka_person_unique_id",
            "clickhouse_person_unique_id",
            "distinct_id String, person_id UUID, team_id Int64, is_deleted Int8",
            "person_distinct_id",
            "distinct_id, person_id, team_id, if(is_deleted = 0, 1, -1) AS _sign",
        ),
        _GROUPS,
        _RECORDINGS,
        _PLUGIN_LOGS,
        _DEAD_LETTERS,
    ),
    "current": (
        KafkaFeed(
            "kafka_events_json",
            "clickhouse_events_json",
            _EVENT_COLUMNS,
            "events",
            "uuid, event, properties, timestamp, team_id, distinct_id, elements_chain, created_at, person_id, "
            "person_created_at, person_properties, "
            + "".join(f"group{n}_properties, group{n}_created_at, " for n in GROUPS)
            + "person_mode, historical_migration",
        ),
        KafkaFeed(
            "kafka_person",
            "clickhouse_person",
            "id UUID, created_at DateTime64(3), team_id Int64, properties String, is_identified Int8, "
            "is_deleted Int8, version UInt64, last_seen_at Nullable(DateTime64(3))",
            "person",
            "id, created_at, team_id, properties, is_identified, is_deleted, version, last_seen_at",
        ),
        KafkaFeed(
            "kafka_person_distinct_id2",
            "clickhouse_person_distinct_id",
            "team_id Int64, distinct_id String, person_id UUID, is_deleted Int8, version Int64",
            "person_distinct_id2",
            "team_id, distinct_id, person_id, is_deleted, version, _partition",
        ),
        _GROUPS,
        _RECORDINGS,
        _PLUGIN_LOGS,
        _DEAD_LETTERS,
    ),
}


def kafka_statements(
    formats: Formats, *, brokers: str, prefix: str = "", group: str = "group1", engine: str | None = None
) -> list[str]:
    """CREATE statements of the Kafka tables and their views (IF NOT EXISTS: running them again does
    nothing). `engine` replaces the Kafka engine clause: "Null" for a ClickHouse without the Kafka engine,
    whose Kafka tables the direct writer inserts the topics' messages into (they keep nothing; their
    views fill the tables). Such a table has the Kafka engine's virtual columns as real ones (for the
    views), by default the time of the insert and offset 0."""
    statements = []
    for feed in FEEDS[formats]:
        if engine is None:
            settings = [
                f"kafka_broker_list = '{_quoted(brokers)}'",
                f"kafka_topic_list = '{_quoted(prefix + feed.topic)}'",
                f"kafka_group_name = '{_quoted(group)}'",
                f"kafka_format = '{feed.format}'",
                "kafka_skip_broken_messages = 100",
            ]
            if feed.schema:
                settings.append(f"kafka_schema = '{feed.schema}'")
            columns, clause = feed.columns, f"Kafka SETTINGS {', '.join(settings)}"
        else:
            virtual = (
                "_timestamp DateTime DEFAULT now(), _offset UInt64 DEFAULT 0, _partition UInt64 DEFAULT 0"
            )
            columns, clause = f"{feed.columns}, {virtual}", engine
        statements.append(f"CREATE TABLE IF NOT EXISTS {feed.table} ({columns}) ENGINE = {clause}")
        statements.append(
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {feed.view} TO {feed.target} AS "
            f"SELECT {feed.select}, _timestamp, _offset FROM {feed.table}"
        )
    return statements


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")
