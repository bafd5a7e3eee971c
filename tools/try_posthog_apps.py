"""Run every plugin of a PostHog/apps checkout through this server's plugin machinery, and print a table.

Their code is not part of this repository: point the tool at a checkout, e.g.

    git clone https://github.com/PostHog/apps /tmp/apps
    .venv/bin/python -m tools.try_posthog_apps /tmp/apps/packages [--only NAME ...]

Each plugin is installed from its folder into a fresh database (embedded Postgres and Valkey, or
DATABASE_URL / REDIS_URL), enabled for team 2 with a plausible config (the defaults of its
plugin.json, made-up values for the rest, a generated service account key for key attachments, and
the overrides in CONFIGS), set up, and given sample events (processEvent, onEvent, exportEvents),
one run of each scheduled task, and the jobs it queued (up to JOB_SECONDS; the sample events are also
stored, for historical exports). It runs twice: offline (every HTTP request fails), then with every
HTTP request answered by a stand-in (200 and `{}`; an OAuth token for token requests). Connections
of `pg`, `aws-sdk` and the like are not HTTP: they reach nothing in either run.

The verdict per plugin: works (offline: no error recorded or logged), needs network (it failed
offline where it reached out, by HTTP or a connection of its own; "works with the stand-in" when the
stand-in's answer was enough), missing module, or broken, with the first error.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
from benchmarks.plugin_step import plugin_event
from benchmarks.services import TEAM_ID, benchmark_services, fresh_database, running_plugins
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from psycopg.types.json import Jsonb
from tests.plugin_hosts import RunningPlugins

from plugin_server.plugins.admin import enable_plugin, install_plugin
from plugin_server.plugins.models import PluginAttachment
from plugin_server.plugins.run import PluginRunner
from plugin_server.services.geoip import GeoIP
from plugin_server.topology import open_plugins

MMDB = Path(__file__).parents[1] / "tests" / "assets" / "GeoLite2-City-Test.mmdb"
# Longest a plugin may take for its setup, events and tasks in one run.
PLUGIN_SECONDS = 45.0
# How long the work a plugin started without awaiting it may take to report.
SETTLE_SECONDS = 1.0
# Longest the jobs a plugin queued may run (a historical export is a job per page).
JOB_SECONDS = 20.0

# Config values that the made-up defaults would get wrong (formats the plugins check).
REDSHIFT_HOST = "trial.abc123xyz.us-east-1.redshift.amazonaws.com"
CONFIGS: dict[str, dict[str, str]] = {
    "posthog-hello-world-plugin": {"greeting": "Hej!"},
    "taxonomy-plugin": {"defaultNamingConvention": "snake_case"},
    "flatten-properties-plugin": {"separator": "__"},
    "downsampling-plugin": {"percentage": "50", "samplingMethod": "Distinct ID aware sampling"},
    "event-sequence-timer-plugin": {"eventsToTrack": "($pageview,purchase)"},
    "ingestion-alert-plugin": {"posthogHost": "https://posthog.example.com"},
    "posthog-pagerduty-plugin": {
        "posthogTrendUrl": "https://posthog.example.com/insights/AbC123",
        "posthogHost": "https://posthog.example.com",
    },
    "postgres-plugin": {"databaseUrl": "postgres://posthog:secret@db.example.com:5432/posthog"},
    # its historical export starts at the start of today: the tool's stored events are from 5 minutes ago
    "posthog-plugin-migrator3000": {
        "host": "posthog.example.com",
        "startDate": datetime.now(UTC).date().isoformat(),
    },
    "posthog-redshift-import-plugin": {"clusterHost": REDSHIFT_HOST},
    "redshift-plugin": {"clusterHost": REDSHIFT_HOST},
    "salesforce-plugin": {"salesforceHost": "https://trial.my.salesforce.com", "eventsToInclude": "purchase"},
}
# Attachments whose contents the plugin checks.
ATTACHMENTS: dict[str, dict[str, object]] = {
    "posthog-filter-out-plugin": {
        "filters": [{"key": "$browser", "type": "string", "operator": "is_not", "value": "Lynx"}]
    },
    "schema-enforcer-plugin": {
        "eventSchemaFile": {
            "eventSchemas": {"purchase": {"schema": {"amount": {"type": "string", "required": True}}}},
            "onlyIngestEventsFromFile": False,
        }
    },
}

NETWORK = re.compile(
    r"FetchError|request to .* failed|network timeout|ECONNREFUSED|Connection refused|connection failed|"
    r"NetworkingError|UnknownEndpoint|getaddrinfo|access token|could not connect|offline|timed out",
    re.IGNORECASE,
)
MISSING = re.compile(r"Cannot import|Cannot find module")


def events() -> list[dict[str, Any]]:
    """Sample events: a pageview, an autocapture, an identify with $set, a custom event with money."""

    def event(name: str, distinct_id: str, ip: str = "89.160.20.129", **properties: Any) -> dict[str, Any]:
        return plugin_event(TEAM_ID, name, distinct_id, properties, ip=ip)

    return [
        event(
            "$pageview",
            "user-1",
            **{"$current_url": "https://example.com/pricing?utm_source=x", "$os": "Mac OS X"},
        ),
        event(
            "$autocapture",
            "user-1",
            **{
                "$event_type": "click",
                "$elements": [{"tag_name": "button", "$el_text": "Buy", "attr__class": "cta"}],
            },
        ),
        event("$identify", "user-2", **{"$set": {"email": "someone@example.com", "name": "Some One"}}),
        event(
            "purchase",
            "user-2",
            amount="12.50",
            currency="EUR",
            **{"$browser": "Chrome", "$lib_version": "1.2.3"},
        ),
    ]


def service_account_key() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return json.dumps(
        {
            "type": "service_account",
            "project_id": "apps-trial",
            "private_key_id": "trial",
            "private_key": pem.decode(),
            "client_email": "trial@apps-trial.iam.gserviceaccount.com",
            "token_uri": "https://oauth2.googleapis.com/token",
        }
    ).encode()


def made_up(item: dict[str, Any]) -> str:
    """A plausible value for a config item without a default."""
    key = str(item.get("key", "")).lower()
    if item.get("choices"):
        return str(item["choices"][0])
    for words, value in (
        (("url", "endpoint", "host", "domain"), "https://example.com"),
        (("port",), "5432"),
        (("email",), "someone@example.com"),
        (("region",), "us-east-1"),
        (("minutes", "seconds", "interval", "size", "limit", "percentage", "megabytes"), "1"),
        (("events",), "$pageview"),
    ):
        if any(word in key for word in words):
            return value
    return f"trial-{item.get('key')}"


def config_of(folder: Path) -> tuple[dict[str, str], dict[str, PluginAttachment]]:
    """The plugin's config from its plugin.json (defaults, made-up values, CONFIGS) and attachments."""
    try:
        schema = json.loads((folder / "plugin.json").read_text()).get("config") or []
    except (OSError, ValueError):
        schema = []
    config: dict[str, str] = {}
    attachments: dict[str, PluginAttachment] = {}
    for item in schema if isinstance(schema, list) else []:
        key = item.get("key")
        if not key:
            continue
        if item.get("type") == "attachment":
            keyish = "json" in key.lower() or "key" in key.lower()
            contents = service_account_key() if keyish else b"event,property\n$pageview,$current_url\n"
            name = "key.json" if keyish else "data.csv"
            attachments[key] = PluginAttachment(
                key, "application/json" if keyish else "text/csv", name, contents
            )
        else:
            config[key] = str(item["default"]) if item.get("default") not in (None, "") else made_up(item)
    config.update(CONFIGS.get(folder.name, {}))
    for key, value in ATTACHMENTS.get(folder.name, {}).items():
        attachments[key] = PluginAttachment(
            key, "application/json", f"{key}.json", json.dumps(value).encode()
        )
    return config, attachments


class Outside:
    """The plugins' way out: every HTTP request is counted, and refused (offline) or answered."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.requests = 0
        self.name = "stand-in" if answer else "offline"

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if not self.answer:
            raise httpx.ConnectError("offline: the apps tool lets no request out", request=request)
        if request.method == "POST" and request.url.path.endswith("/token"):
            return httpx.Response(
                200, json={"access_token": "stand-in", "expires_in": 3600, "token_type": "Bearer"}
            )
        return httpx.Response(200, json={})


@dataclass
class Run:
    error: str | None  # None: it worked
    requests: int  # HTTP requests it made

    @property
    def network(self) -> bool:
        """Whether it failed where it reached out (an HTTP request, or a connection of its own)."""
        return self.error is not None and (self.requests > 0 or bool(NETWORK.search(self.error)))


async def run_plugin(running: RunningPlugins, database_url: str, folder: Path, outside: Outside) -> Run:
    config, attachments = config_of(folder)
    before, started = outside.requests, datetime.now(UTC)
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("UPDATE posthog_pluginconfig SET enabled = false")
        try:
            plugin = install_plugin(connection, folder)
        except Exception as error:  # not installable (no plugin.json, no main file)
            return Run(f"install: {error}", 0)
        config_id = enable_plugin(connection, plugin, TEAM_ID, config, attachments).id
    registry = running.plugins.registry
    await registry.reload()
    runner = PluginRunner(registry, running.services.hung)
    vm = registry.get(config_id)
    failure: str | None = None

    async def exercise() -> None:
        processed = [event for event in await runner.process_events(events()) if event is not None]
        await runner.on_events(processed)
        assert vm is not None
        async with vm.use() as instance:
            if vm.export_buffer is not None:
                await vm.export_buffer.flush()
            for task in instance.scheduled_tasks if instance is not None else ():
                await instance.run_task(task)
        await asyncio.sleep(SETTLE_SECONDS)  # work the plugin started without awaiting it (callbacks)
        await run_jobs(running, database_url)

    try:
        await asyncio.wait_for(exercise(), PLUGIN_SECONDS)
    except TimeoutError:
        failure = f"did not finish in {PLUGIN_SECONDS:g} s"
    except Exception as error:
        failure = f"{type(error).__name__}: {error}"
    await running.services.logs.flush()
    with psycopg.connect(database_url) as connection:
        row = connection.execute(
            "SELECT error FROM posthog_pluginconfig WHERE id = %s", (config_id,)
        ).fetchone()
        logged = connection.execute(
            """SELECT message FROM posthog_pluginlogentry
               WHERE plugin_config_id = %s AND type = 'ERROR' AND timestamp >= %s
               ORDER BY timestamp LIMIT 1""",
            (config_id, started),
        ).fetchone()
    recorded = row[0] if row else None
    if recorded:
        failure = f"{recorded.get('name', 'Error')}: {recorded.get('message')}"
    elif failure is None and logged:  # what it reported itself (console.error), e.g. an export it will retry
        failure = f"logged: {logged[0]}"
    return Run(failure, outside.requests - before)


async def run_jobs(running: RunningPlugins, database_url: str) -> None:
    """The jobs the plugin queued (its own, export retries, a historical export) that are due within
    JOB_SECONDS, until none is left."""
    stop = asyncio.Event()
    jobs, job_runner = running.services.jobs, running.plugins.job_runner
    runner = asyncio.create_task(jobs.run_forever(job_runner.run, stop_event=stop, concurrency=2))
    deadline = asyncio.get_running_loop().time() + JOB_SECONDS
    try:
        while asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.2)
            with psycopg.connect(database_url) as connection:
                row = connection.execute(
                    """SELECT count(*) AS waiting FROM plugin_server_jobs
                       WHERE status = 'running' OR (status = 'waiting' AND run_at < now() + interval '2 seconds')"""
                ).fetchone()
            if row is not None and not row[0]:
                break
    finally:
        stop.set()
        await runner
        with psycopg.connect(database_url, autocommit=True) as connection:
            connection.execute("DELETE FROM plugin_server_jobs")  # the next plugin starts with none


def store_events(database_url: str) -> None:
    """The sample events as stored events of the team (what a historical export reads), 5 minutes ago."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        for event in events():
            connection.execute(
                """INSERT INTO posthog_event (uuid, event, distinct_id, properties, team_id, timestamp)
                   VALUES (%s, %s, %s, %s, %s, now() - interval '5 minutes')""",
                (event["uuid"], event["event"], event["distinct_id"], Jsonb(event["properties"]), TEAM_ID),
            )


def verdict(first: Run, second: Run) -> tuple[str, str]:
    """(verdict, reason) from the offline run and the stand-in run."""
    if first.error is None:
        return "works", ""
    if MISSING.search(first.error):
        return "missing module", first.error
    if first.network:
        if second.error is None:
            return "needs network", f"works with the stand-in ({second.requests} requests answered)"
        return "needs network", f"with the stand-in: {second.error}"
    return "broken", first.error


async def run_all(
    packages: Path, database_url: str, redis_url: str, only: list[str]
) -> list[tuple[str, str, str]]:
    folders = sorted(path for path in packages.iterdir() if (path / "plugin.json").is_file())
    if only:
        folders = [path for path in folders if path.name in only]
    runs: dict[str, list[Run]] = {folder.name: [] for folder in folders}
    store_events(database_url)
    async with running_plugins(
        database_url, redis_url, geoip=GeoIP.from_file(MMDB), TASK_TIMEOUT=5
    ) as running:
        for outside in (Outside(answer=False), Outside(answer=True)):
            async with httpx.AsyncClient(transport=httpx.MockTransport(outside)) as http:
                services = dataclasses.replace(running.services, http=http)
                async with open_plugins(running.settings, services) as plugins:
                    trial = RunningPlugins(running.settings, services, plugins)
                    for folder in folders:
                        runs[folder.name].append(await run_plugin(trial, database_url, folder, outside))
                        print(f"  {outside.name}: {folder.name}: {runs[folder.name][-1].error or 'ok'}"[:200])
    return [(name, *verdict(*results)) for name, results in runs.items()]


def print_table(rows: list[tuple[str, str, str]]) -> None:
    width = max(len(name) for name, _, _ in rows)
    print(f"\n{'plugin'.ljust(width)}  {'verdict'.ljust(14)}  reason")
    for name, result, reason in rows:
        print(f"{name.ljust(width)}  {result.ljust(14)}  {reason[:160]}")
    counts: dict[str, int] = {}
    for _, result, _ in rows:
        counts[result] = counts.get(result, 0) + 1
    print("\n" + ", ".join(f"{count} {result}" for result, count in sorted(counts.items())))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("packages", type=Path, help="the packages/ folder of a PostHog/apps checkout")
    parser.add_argument("--only", nargs="*", default=[], help="only these plugin folders")
    options = parser.parse_args()
    with benchmark_services() as (server_url, redis_url):
        database_url = fresh_database(server_url, name="plugin_server_apps_trial")
        print_table(asyncio.run(run_all(options.packages, database_url, redis_url, options.only)))


if __name__ == "__main__":
    main()
