"""The `plugin-server` command."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import psycopg
import redis
import redis.asyncio as aioredis
import typer

from plugin_server import __version__
from plugin_server.cli_support import database_url, load_settings_or_exit, read_stored, redis_url
from plugin_server.config import SETTING_GROUPS, Settings, settings_help
from plugin_server.db.browse import recent_persons
from plugin_server.db.migrate import migrate as apply_migrations
from plugin_server.db.teams import create_organization_and_team, list_teams
from plugin_server.plugins.cli import plugins_app

T = TypeVar("T")


def _settings_epilog() -> str:
    """The settings by group, one paragraph each: click rewraps paragraphs, \\b keeps one as written."""
    width = max(len(name) for name, _, _ in settings_help())
    paragraphs: list[list[str]] = [["Settings (environment variables, default in brackets):"]]
    for name, default, description in settings_help():
        if name in SETTING_GROUPS:
            paragraphs.append([f"{SETTING_GROUPS[name]}:"])
        paragraphs[-1].append(f"  {name.ljust(width)}  {description} [{default}]")
    return "\n\n".join("\b\n" + "\n".join(lines) for lines in paragraphs)


app = typer.Typer(
    help="plugin-server: ingests PostHog events from queues, runs plugins, stores them in Postgres.\n\n"
    "`plugin-server start` runs it, with a Postgres and a Valkey of its own when none is configured; "
    "`teams list` shows the project tokens to send events with; the operator's console is at "
    "http://localhost:3008/console.",
    epilog=_settings_epilog(),
    invoke_without_command=True,
    no_args_is_help=False,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"max_content_width": 200},
)
teams_app = typer.Typer(help="Manage teams (projects) without the PostHog web app.", no_args_is_help=True)
dead_letters_app = typer.Typer(
    help="Inspect and replay messages that could not be ingested.", no_args_is_help=True
)
events_app = typer.Typer(help="Look at stored events (no psql needed).", no_args_is_help=True)
persons_app = typer.Typer(help="Look at stored persons (no psql needed).", no_args_is_help=True)
app.add_typer(teams_app, name="teams")
app.add_typer(events_app, name="events")
app.add_typer(persons_app, name="persons")
app.add_typer(dead_letters_app, name="dead-letters")
app.add_typer(plugins_app, name="plugins")


@app.callback()
def main_callback(
    context: typer.Context,
    version: Annotated[bool, typer.Option("--version", "-v", help="Print the version and exit.")] = False,
) -> None:
    if version:
        typer.echo(__version__)
        raise typer.Exit()
    if context.invoked_subcommand is None:
        start(no_migrate=False)


@app.command()
def start(
    no_migrate: Annotated[
        bool, typer.Option("--no-migrate", help="Do not apply pending migrations.")
    ] = False,
) -> None:
    """Start the server (the default command)."""
    from plugin_server.supervisor import Supervisor

    settings = load_settings_or_exit()
    if no_migrate:
        settings = settings.model_copy(update={"AUTO_MIGRATE": False})
    raise typer.Exit(Supervisor(settings).run())


@app.command()
def migrate(
    clickhouse: Annotated[
        bool,
        typer.Option(
            "--clickhouse",
            help="Migrate ClickHouse (CLICKHOUSE_* settings) instead of Postgres: its tables, and the Kafka "
            "tables and views reading the ClickHouse topics (CLICKHOUSE_KAFKA_FORMAT, KAFKA_PREFIX) from KAFKA_HOSTS.",
        ),
    ] = False,
    no_kafka_engine: Annotated[
        bool,
        typer.Option(
            "--no-kafka-engine",
            help="With --clickhouse: Null tables in place of the Kafka tables, for a ClickHouse without the "
            "Kafka engine fed by EVENT_STORE=clickhouse-direct (always so on chDB).",
        ),
    ] = False,
) -> None:
    """Apply pending database migrations and exit."""
    settings = load_settings_or_exit()
    if clickhouse:
        applied = _migrate_clickhouse(settings, kafka_engine=not no_kafka_engine)
    else:
        with database_url(settings) as url:
            applied = apply_migrations(url)
    typer.echo("\n".join(f"applied {m.version:04d}_{m.name}" for m in applied) or "nothing to migrate")


def _migrate_clickhouse(settings: Settings, *, kafka_engine: bool) -> list[Any]:
    from plugin_server.sinks.clickhouse.client import is_in_process
    from plugin_server.sinks.clickhouse.migrate import open_migrated
    from plugin_server.sinks.clickhouse.schema import EVENTS_PROTO

    brokers = None
    if kafka_engine and not is_in_process(settings):
        if not settings.KAFKA_HOSTS:
            typer.echo("KAFKA_HOSTS is needed for the Kafka tables (or pass --no-kafka-engine)", err=True)
            raise typer.Exit(1)
        brokers = settings.KAFKA_HOSTS
    client, applied = open_migrated(settings, kafka_brokers=brokers)
    client.close()
    if brokers and settings.CLICKHOUSE_KAFKA_FORMAT == "original":
        typer.echo(
            f"kafka_events reads protobuf: copy {EVENTS_PROTO} into ClickHouse's format_schemas folder"
        )
    return applied


@app.command()
def healthcheck() -> None:
    """Exit 0 when the server is ready (its /_ready, or without the web its Redis ping key), 1 otherwise."""
    settings = load_settings_or_exit()
    if not settings.DISABLE_WEB:
        _ask_ready_endpoint(settings)
        return
    from plugin_server.supervisor import PING_KEY  # imports the whole server: only on this path

    url = redis_url(settings)
    if url is None:
        typer.echo("no Redis configured and no embedded server running", err=True)
        raise typer.Exit(1)
    try:
        with redis.Redis.from_url(url, socket_timeout=5) as client:
            ping = client.get(PING_KEY)
    except redis.RedisError as error:
        typer.echo(f"cannot reach Redis: {error}", err=True)
        raise typer.Exit(1) from None
    if ping is None:
        typer.echo("no recent ping from a plugin server", err=True)
        raise typer.Exit(1)
    typer.echo(f"healthy: last ping {ping.decode()}")


def _ask_ready_endpoint(settings: Settings) -> None:
    """GET /_ready on this machine's web server; exit 1 unless it answers 200."""
    import httpx

    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(
        settings.WEB_HOSTNAME, settings.WEB_HOSTNAME
    )
    url = f"http://{f'[{host}]' if ':' in host else host}:{settings.WEB_PORT}/_ready"
    try:
        response = httpx.get(url, timeout=10)
    except httpx.HTTPError as error:
        typer.echo(f"cannot reach {url}: {error}", err=True)
        raise typer.Exit(1) from None
    if response.status_code != 200:
        typer.echo(f"not ready ({response.status_code}): {response.text}", err=True)
        raise typer.Exit(1)
    typer.echo(f"ready: {response.text}")


@teams_app.command("create")
def teams_create(
    name: Annotated[str, typer.Option(help="Team (project) name.")] = "Default Project",
    organization: Annotated[str, typer.Option(help="Organization name.")] = "Default Organization",
) -> None:
    """Create an organization and a team in it; print the team id and API token."""
    settings = load_settings_or_exit()
    with database_url(settings) as url, psycopg.connect(url, autocommit=True) as connection:
        if settings.AUTO_MIGRATE:
            apply_migrations(url)
        team = create_organization_and_team(connection, organization_name=organization, team_name=name)
    typer.echo(f"team id:   {team.team_id}\napi token: {team.api_token}")


@teams_app.command("list")
def teams_list() -> None:
    """Print every team: id, name, project token (for the capture API and SDKs) and organization."""
    settings = load_settings_or_exit()
    with database_url(settings) as url, psycopg.connect(url, autocommit=True) as connection:
        teams = list_teams(connection)
    if not teams:
        typer.echo("no team yet: create one with `plugin-server teams create --name NAME`")
        return
    rows = [("ID", "NAME", "TOKEN", "ORGANIZATION")]
    rows += [(str(t.team_id), t.name, t.api_token, t.organization_name) for t in teams]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    for row in rows:
        typer.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[3]
        )


@teams_app.command("token")
def teams_token(
    team: Annotated[int | None, typer.Option(help="Team id; needed when there are several teams.")] = None,
) -> None:
    """Print a team's project token alone (for scripts: TOKEN=$(plugin-server teams token))."""
    settings = load_settings_or_exit()
    with database_url(settings) as url, psycopg.connect(url, autocommit=True) as connection:
        teams = list_teams(connection)
    found = [t for t in teams if team is None or t.team_id == team]
    if len(found) != 1:
        problem = f"no team {team}" if team is not None else f"{len(teams)} teams: say which with --team"
        typer.echo(f"plugin-server: {problem if teams else 'no team yet'} (see `teams list`)", err=True)
        raise typer.Exit(1)
    typer.echo(found[0].api_token)


TeamOption = Annotated[int, typer.Option("--team", help="Team id (see `teams list`).")]
DistinctIdOption = Annotated[str, typer.Option("--distinct-id", help="Only distinct ids starting with this.")]
LimitOption = Annotated[int, typer.Option(help="How many, newest first.")]


@events_app.command("list")
def events_list(team: TeamOption, distinct_id: DistinctIdOption = "", limit: LimitOption = 20) -> None:
    """Print a team's newest stored events (Postgres' or ClickHouse's, by EVENT_STORE) as JSON lines."""
    settings = load_settings_or_exit()
    with database_url(settings) as url:
        events = read_stored(
            settings, url, lambda reads: reads.events.recent_events(team, distinct_id, limit)
        )
    for event in events:
        typer.echo(_json_line(event))


@persons_app.command("list")
def persons_list(team: TeamOption, distinct_id: DistinctIdOption = "", limit: LimitOption = 20) -> None:
    """Print a team's newest persons with their distinct ids as JSON lines."""
    for person in _browse(lambda connection: recent_persons(connection, team, distinct_id, limit)):
        typer.echo(_json_line(person))


def _browse(read: Callable[[psycopg.Connection[Any]], list[T]]) -> list[T]:
    settings = load_settings_or_exit()
    with database_url(settings) as url, psycopg.connect(url, autocommit=True) as connection:
        return read(connection)


def _json_line(row: Any) -> str:
    return json.dumps(dataclasses.asdict(row), default=str, ensure_ascii=False)


@dead_letters_app.command("list")
def dead_letters_list(limit: Annotated[int, typer.Option(help="How many to show.")] = 20) -> None:
    """Print the newest dead letters as JSON lines (reason, time, message)."""
    from plugin_server.dead_letters import open_dead_letters

    settings = load_settings_or_exit()
    entries = _run_async_redis(settings, lambda client: open_dead_letters(settings, client).newest(limit))
    for entry in entries:
        typer.echo(json.dumps(entry))


@dead_letters_app.command("replay")
def dead_letters_replay(
    limit: Annotated[int, typer.Option(help="Replay at most this many (0 = all).")] = 0,
) -> None:
    """Put dead letters back on the ingestion queue, oldest first."""
    from plugin_server.dead_letters import open_dead_letters

    settings = load_settings_or_exit()
    count = _run_async_redis(
        settings, lambda client: open_dead_letters(settings, client).replay(limit or None)
    )
    typer.echo(f"replayed {count} messages")


def _run_async_redis(settings: Settings, action: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
    url = redis_url(settings)
    if url is None:
        typer.echo("no Redis configured and no embedded server running", err=True)
        raise typer.Exit(1)

    async def run() -> T:
        client = aioredis.Redis.from_url(url)
        try:
            return await action(client)
        finally:
            await client.aclose()

    return asyncio.run(run())


def main() -> None:
    app(prog_name="plugin-server")


if __name__ == "__main__":
    main()
