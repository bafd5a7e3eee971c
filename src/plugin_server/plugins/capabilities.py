"""What the plugins in force can do, as far as the scheduler needs to know: their scheduled tasks."""

from __future__ import annotations

import asyncio
from typing import Any

from psycopg_pool import AsyncConnectionPool

from plugin_server.plugins.loader import IN_FORCE_CTE
from plugin_server.plugins.registry import PluginRegistry


class CapabilityDiscovery:
    def __init__(self, registry: PluginRegistry) -> None:
        self._registry = registry
        self._background: set[asyncio.Task[Any]] = set()

    def discover(self) -> None:
        """Set up, in the background, the plugins whose capabilities were never recorded, so that
        their scheduled tasks are known before any event arrives (the rest stay lazy)."""
        for vm in self._registry.all():
            if "scheduled_tasks" not in vm.config.plugin.capabilities:
                task = asyncio.create_task(vm.get())
                self._background.add(task)
                task.add_done_callback(self._background.discard)


async def scheduled_tasks(pool: AsyncConnectionPool[Any]) -> dict[int, list[str]]:
    """Scheduled tasks of the configs in force, from the capabilities their plugins reported."""
    async with pool.connection() as connection:
        cursor = await connection.execute(
            f"""{IN_FORCE_CTE}
                SELECT p.id AS config_id, plugin.capabilities->'scheduled_tasks' AS tasks
                FROM in_force p JOIN posthog_plugin plugin ON plugin.id = p.plugin_id
                WHERE jsonb_typeof(plugin.capabilities->'scheduled_tasks') = 'array'"""
        )
        rows = await cursor.fetchall()
    return {row["config_id"]: [str(task) for task in row["tasks"]] for row in rows if row["tasks"]}
