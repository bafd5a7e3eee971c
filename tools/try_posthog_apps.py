"""Run real public PostHog plugins (from a checkout of PostHog/apps) through this server's plugin machinery.

Their code is not part of this repository: point the tool at a checkout, e.g.

    git clone https://github.com/PostHog/apps /tmp/apps
    .venv/bin/python -m tools.try_posthog_apps /tmp/apps/packages

Each plugin is installed from its folder into a fresh database (embedded Postgres and Valkey, or
DATABASE_URL / REDIS_URL), enabled for team 2 with a sample config, set up, and given sample events
through the real PluginRunner; the tool prints what each event became and any plugin error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from benchmarks.plugin_step import plugin_event
from benchmarks.services import TEAM_ID, benchmark_services, fresh_database, plugin_host

from plugin_server.plugins.admin import enable_plugin, install_plugin
from plugin_server.plugins.host import PluginHost
from plugin_server.plugins.run import PluginRunner
from plugin_server.services.geoip import GeoIP

MMDB = Path(__file__).parents[1] / "tests" / "assets" / "GeoLite2-City-Test.mmdb"


@dataclass
class Trial:
    folder: str
    config: dict[str, Any]
    events: list[dict[str, Any]]
    shown: list[str] = field(default_factory=list)  # properties worth printing


def event(name: str, distinct_id: str = "user-1", **properties: Any) -> dict[str, Any]:
    return plugin_event(TEAM_ID, name, distinct_id, properties, ip=properties.pop("ip", "127.0.0.1"))


TRIALS = [
    Trial(
        "posthog-hello-world-plugin",
        {"greeting": "Hej!"},
        [event("$pageview"), event("$pageview"), event("$pageview")],
        ["greeting", "greeting_counter", "random_number"],
    ),
    Trial(
        "taxonomy-plugin",
        {"defaultNamingConvention": "snake_case"},
        [event("Signed Up"), event("buttonClicked"), event("$pageview")],
    ),
    Trial(
        "flatten-properties-plugin",
        {"separator": "__"},
        [event("nested", a={"b": {"c": 1}}, list=[1, {"x": 2}])],
        ["a__b__c", "list__0", "list__1__x"],
    ),
    Trial(
        "downsampling-plugin",
        {"percentage": "50", "samplingMethod": "Distinct ID aware sampling"},
        [event("$pageview", distinct_id=f"person-{n}") for n in range(10)],
    ),
    Trial(
        "posthog-plugin-geoip",
        {},
        [event("$pageview", ip="89.160.20.129"), event("$pageview", ip="127.0.0.1")],
        ["$geoip_city_name", "$geoip_country_code", "$geoip_time_zone"],
    ),
]


async def run_trial(host: PluginHost, database_url: str, packages: Path, trial: Trial) -> None:
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("UPDATE posthog_pluginconfig SET enabled = false")
        plugin = install_plugin(connection, packages / trial.folder)
        config_id = enable_plugin(connection, plugin, TEAM_ID, trial.config).id
    await host.registry.reload()
    runner = PluginRunner(host.registry, host.hung)
    results = await runner.process_events(trial.events)
    with psycopg.connect(database_url) as connection:
        row = connection.execute(
            "SELECT error FROM posthog_pluginconfig WHERE id = %s", (config_id,)
        ).fetchone()
    print(f"\n== {trial.folder} ({plugin.name})")
    for before, after in zip(trial.events, results, strict=True):
        if after is None:
            print(f"  {before['event']!r} ({before['distinct_id']}): dropped")
            continue
        shown = {key: after["properties"].get(key) for key in trial.shown}
        print(f"  {before['event']!r} -> {after['event']!r} {json.dumps(shown) if shown else ''}")
    if row and row[0]:
        print(f"  plugin error: {row[0].get('message')}")


async def main_async(packages: Path, database_url: str, redis_url: str) -> None:
    async with plugin_host(database_url, redis_url, geoip=GeoIP.from_file(MMDB)) as host:
        for trial in TRIALS:
            await run_trial(host, database_url, packages, trial)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("packages", type=Path, help="the packages/ folder of a PostHog/apps checkout")
    options = parser.parse_args()
    with benchmark_services() as (server_url, redis_url):
        database_url = fresh_database(server_url, name="plugin_server_apps_trial")
        asyncio.run(main_async(options.packages, database_url, redis_url))


if __name__ == "__main__":
    main()
