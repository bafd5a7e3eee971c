from pathlib import Path
from typing import Any

import psycopg

from plugin_server.db.migrate import available_migrations, migrate


def test_migrations_are_applied_once_and_recorded(database_url: str) -> None:
    assert migrate(database_url) == []
    with psycopg.connect(database_url) as connection:
        versions = [
            row[0] for row in connection.execute("SELECT version FROM plugin_server_migrations ORDER BY 1")
        ]
    assert versions == [migration.version for migration in available_migrations()]


def test_tables_have_the_posthog_unique_constraints(clean_db: psycopg.Connection[Any]) -> None:
    rows = clean_db.execute(
        """SELECT conrelid::regclass::text, conname FROM pg_constraint
           WHERE contype = 'u' AND conrelid::regclass::text LIKE 'posthog_%'"""
    ).fetchall()
    names = {name for _, name in rows}
    assert {
        "unique_distinct_id_for_team",
        "unique_group_types",
        "unique_event_column_indexes",
        "posthog_unique_plugin_storage_key",
        "unique_hash",
        "posthog_eventdefinition_team_id_name_unique",
        "posthog_propertydefinition_team_id_name_unique",
    } <= names


def test_migrations_apply_on_top_of_an_existing_posthog_database(database_url: str) -> None:
    """A database PostHog created (its tables, no record of ours) takes our migrations without error."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("CREATE SCHEMA IF NOT EXISTS posthog_made")
        connection.execute("DROP SCHEMA posthog_made CASCADE")
        connection.execute("CREATE SCHEMA posthog_made")
    schema = (Path(__file__).parents[1] / "assets" / "posthog-schema.sql").read_text()
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    info["options"] = "-c search_path=posthog_made"
    url = psycopg.conninfo.make_conninfo(**info)  # type: ignore[arg-type]
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(schema.encode())
    applied = migrate(url)
    assert [migration.version for migration in applied] == [m.version for m in available_migrations()]
    with psycopg.connect(url, autocommit=True) as connection:
        columns = connection.execute(
            """SELECT column_name FROM information_schema.columns
               WHERE table_schema = 'posthog_made' AND table_name = 'posthog_event'"""
        ).fetchall()
        connection.execute("DROP SCHEMA posthog_made CASCADE")
    assert ("uuid",) in columns


def test_columns_and_types_match_the_posthog_schema(database_url: str) -> None:
    """Every column of the reference PostHog schema exists in ours with the same type and nullability."""
    schema = (Path(__file__).parents[1] / "assets" / "posthog-schema.sql").read_text()
    query = """SELECT table_name, column_name, data_type, character_maximum_length, is_nullable
               FROM information_schema.columns WHERE table_schema = %s"""
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("DROP SCHEMA IF EXISTS posthog_reference CASCADE")
        connection.execute("CREATE SCHEMA posthog_reference")
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    info["options"] = "-c search_path=posthog_reference"
    with psycopg.connect(psycopg.conninfo.make_conninfo(**info), autocommit=True) as connection:  # type: ignore[arg-type]
        connection.execute(schema.encode())
    with psycopg.connect(database_url, autocommit=True) as connection:
        reference = set(connection.execute(query, ("posthog_reference",)).fetchall())
        ours = set(connection.execute(query, ("public",)).fetchall())
        connection.execute("DROP SCHEMA posthog_reference CASCADE")
    assert reference - ours == set()
