"""JavaScript plugins installed as folders and run through the real plugin machinery (loader, transpiler,
runtime): a plugin of several files, whose relative imports resolve; and the errors its author reads
in posthog_pluginconfig.error: one naming every missing module, a RetryError's JavaScript stack."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import psycopg

from plugin_server.db.teams import CreatedTeam
from plugin_server.plugins.run import PluginRunner
from tests.plugin_hosts import RunningPlugins, install_files

Db = psycopg.Connection[Any]

SCHEMA_LIKE = {
    "plugin.json": json.dumps({"name": "files test", "main": "src/index.ts"}),
    "src/index.ts": """
        import { PluginEvent } from '@posthog/plugin-scaffold'
        import { Meta } from './types'
        import { isValid } from './lib'
        export function processEvent(event: PluginEvent, { config }: Meta): PluginEvent {
            event.properties.valid = isValid(event, config.required)
            return event
        }
    """,
    "src/types.ts": """
        import { PluginMeta } from 'posthog-plugins'
        export type Meta = PluginMeta & { config: { required: string } }
    """,
    "src/lib.ts": """
        import rules from './rules.json'
        export function isValid(event: { properties: Record<string, unknown> }, required: string): boolean {
            return rules.strict && required in event.properties
        }
    """,
    "src/rules.json": '{"strict": true}',
}


def install(db: Db, tmp_path: Path, team: CreatedTeam, files: dict[str, str], config: dict[str, Any]) -> int:
    return install_files(db, tmp_path, team, files, config)[1]


def event(team: CreatedTeam, **properties: Any) -> dict[str, Any]:
    return {
        "uuid": str(uuid.uuid4()),
        "event": "$pageview",
        "distinct_id": "someone",
        "team_id": team.team_id,
        "properties": properties,
    }


async def test_a_plugin_of_several_files_runs(
    clean_db: Db, tmp_path: Path, team: CreatedTeam, running: RunningPlugins
) -> None:
    install(clean_db, tmp_path, team, SCHEMA_LIKE, {"required": "plan"})
    await running.plugins.registry.reload()
    runner = PluginRunner(running.plugins.registry, running.services.hung)
    with_plan, without = await runner.process_events([event(team, plan="pro"), event(team)])
    assert with_plan is not None and with_plan["properties"]["valid"] is True
    assert without is not None and without["properties"]["valid"] is False


async def test_every_missing_module_is_named_in_the_config_error(
    clean_db: Db, tmp_path: Path, team: CreatedTeam, running: RunningPlugins
) -> None:
    files = {
        **SCHEMA_LIKE,
        "src/lib.ts": "import get from 'lodash.get'\nimport set from 'lodash.set'\nexport const isValid = get || set",
        "src/index.ts": "import { isValid } from './lib'\nimport { nope } from './nope'\nexport const processEvent = isValid || nope",
    }
    config_id = install(clean_db, tmp_path, team, files, {})
    await running.plugins.registry.reload()
    [passed] = await PluginRunner(running.plugins.registry, running.services.hung).process_events(
        [event(team)]
    )
    assert passed is not None  # the plugin is skipped, the event goes on
    [error] = clean_db.execute(
        "SELECT error FROM posthog_pluginconfig WHERE id = %s", (config_id,)
    ).fetchone() or [None]
    assert error["message"] == (
        "Cannot import 'lodash.get', 'lodash.set'! These packages are not provided by PostHog in plugins. "
        "Cannot find module './nope' from 'src/index.ts'."
    )


async def test_a_retry_error_in_setup_plugin_keeps_its_javascript_stack(
    clean_db: Db, tmp_path: Path, team: CreatedTeam, running: RunningPlugins
) -> None:
    files = {
        "plugin.json": json.dumps({"name": "retry test", "main": "index.ts"}),
        "index.ts": """
            import { RetryError } from '@posthog/plugin-scaffold'
            import { connect } from './connect'
            export async function setupPlugin() { await connect() }
            export function processEvent(event) { return event }
        """,
        "connect.ts": """
            export async function connect(): Promise<void> {
                throw new RetryError('the warehouse is not up yet')
            }
        """,
    }
    config_id = install(clean_db, tmp_path, team, files, {})
    await running.plugins.registry.reload()
    await PluginRunner(running.plugins.registry, running.services.hung).process_events([event(team)])
    [error] = clean_db.execute(
        "SELECT error FROM posthog_pluginconfig WHERE id = %s", (config_id,)
    ).fetchone() or [None]
    assert (error["name"], error["message"]) == ("RetryError", "the warehouse is not up yet")
    assert error["stack"].startswith("RetryError: the warehouse is not up yet\n    at connect (")
    assert (
        f"at connect (plugin-{config_id}/connect.ts:3:11)" in error["stack"]
        and "Traceback" not in error["stack"]
    )
