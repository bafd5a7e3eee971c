"""Versioned, idempotent ClickHouse migrations (`plugin-server migrate --clickhouse`).

Each migration of schema.MIGRATIONS runs once, in order, and is recorded in the database's
`plugin_server_migrations` table; its statements are CREATE ... IF NOT EXISTS, so two servers migrating
at once (ClickHouse has no advisory lock) do no harm. The Kafka tables and views are created on every
run (IF NOT EXISTS: a second run does nothing), since whether the server has a Kafka engine, and where
the brokers are, is the installation's, not the schema's: without brokers they are Null tables, into
which the direct writer inserts what it would have produced to the topics.
"""

from __future__ import annotations

from clickhouse_connect.driver.client import Client

from plugin_server.config import Settings
from plugin_server.sinks.clickhouse.client import open_client
from plugin_server.sinks.clickhouse.schema import MIGRATIONS, Formats, Migration, kafka_statements

_RECORD_TABLE = """CREATE TABLE IF NOT EXISTS plugin_server_migrations (
    version UInt32, name String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3))
ENGINE = ReplacingMergeTree ORDER BY version"""


def quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def migrate_clickhouse(
    client: Client, database: str, *, formats: Formats, kafka_brokers: str | None, topic_prefix: str = ""
) -> list[Migration]:
    """Create `database` and apply every pending migration in it, then the Kafka tables and views of
    `formats`: reading the topics (names with `topic_prefix` in front) from `kafka_brokers` (the broker
    list as ClickHouse reaches it), or without brokers Null tables for the direct writer. Returns the
    migrations applied now. The client is left using `database`."""
    client.command(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(database)}")
    client.database = database
    client.command(_RECORD_TABLE)
    done = {row[0] for row in client.query("SELECT version FROM plugin_server_migrations FINAL").result_rows}
    applied = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        for statement in migration.statements:
            client.command(statement)
        client.insert(
            "plugin_server_migrations",
            [[migration.version, migration.name]],
            column_names=["version", "name"],
        )
        applied.append(migration)
    if kafka_brokers:
        statements = kafka_statements(formats, brokers=kafka_brokers, prefix=topic_prefix)
    else:
        statements = kafka_statements(formats, brokers="", engine="Null")
    for statement in statements:
        client.command(statement)
    return applied


def open_migrated(settings: Settings, *, kafka_brokers: str | None = None) -> tuple[Client, list[Migration]]:
    """A client on CLICKHOUSE_DATABASE once it is migrated (created first if need be), and the
    migrations applied now."""
    client = open_client(settings, database="default")  # CLICKHOUSE_DATABASE may not exist yet
    try:
        applied = migrate_clickhouse(
            client,
            settings.CLICKHOUSE_DATABASE,
            formats=settings.CLICKHOUSE_KAFKA_FORMAT,
            kafka_brokers=kafka_brokers,
            topic_prefix=settings.KAFKA_PREFIX,
        )
    except BaseException:
        client.close()
        raise
    return client, applied
