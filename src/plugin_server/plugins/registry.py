"""The plugin configs in force in one worker, per team, kept in step with the database.

`reload()` reads the configs in force and keeps every VM whose config and plugin are unchanged
(same updated_at on both); new or changed configs get a new (lazy) VM, and the VMs of changed or
removed configs are torn down in the background. Then the code of each new VM's plugin is prepared
(`prepare_code`: a JS plugin's modules transpiled into the worker's cache), so that the first events
of a plugin do not wait for TypeScript's compiler to start; the VM is still set up at its first use.
`reload()` waits for that at most `prepare_patience` seconds (a worker starts consuming after it), and
leaves the rest to go on in the background: a plugin whose code takes long to compile cannot hold up
a worker's start, and so every other team's events.

With `idle_unload_seconds` > 0, a sweep every `idle_unload_seconds / 2` (at most every minute)
unloads the instances not used for that long (PluginVM.unload_if_idle); they are set up again on
their next use. The sweep starts with the first reload and stops on close.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

from psycopg_pool import AsyncConnectionPool

from plugin_server.plugins.loader import group_by_team, load_configs_in_force
from plugin_server.plugins.models import PluginConfigInForce
from plugin_server.plugins.vm import PluginVM

log = logging.getLogger(__name__)

PREPARE_PATIENCE_SECONDS = 5.0


class PluginRegistry:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        create_vm: Callable[[PluginConfigInForce], PluginVM],
        *,
        idle_unload_seconds: float = 0,
        prepare_code: Callable[[PluginConfigInForce], Awaitable[None]] | None = None,
        prepare_patience: float = PREPARE_PATIENCE_SECONDS,
    ) -> None:
        self._pool = pool
        self._create_vm = create_vm
        self._prepare_code = prepare_code
        self._prepare_patience = prepare_patience
        self._preparing: set[asyncio.Task[None]] = set()
        self._vms: dict[int, PluginVM] = {}
        self._by_team: dict[int, list[PluginVM]] = {}
        self._teardowns: set[asyncio.Task[Any]] = set()
        self._reload_lock = asyncio.Lock()
        self._idle_unload_seconds = idle_unload_seconds
        self._sweeper: asyncio.Task[None] | None = None

    def for_team(self, team_id: int) -> list[PluginVM]:
        """The team's plugin VMs in `order`."""
        return self._by_team.get(team_id, [])

    def get(self, plugin_config_id: int) -> PluginVM | None:
        return self._vms.get(plugin_config_id)

    def all(self) -> Iterable[PluginVM]:
        return self._vms.values()

    async def reload(self) -> None:
        async with self._reload_lock:
            configs = await load_configs_in_force(self._pool)
            old, self._vms = self._vms, {}
            new: list[PluginConfigInForce] = []
            for config in configs:
                previous = old.pop(config.id, None)
                if previous is not None and previous.config.version_key == config.version_key:
                    self._vms[config.id] = previous
                else:
                    if previous is not None:
                        self._teardown_later(previous)
                    self._vms[config.id] = self._create_vm(config)
                    new.append(config)
            for stale in old.values():
                self._teardown_later(stale)
            self._by_team = {
                team_id: [self._vms[config.id] for config in team_configs]
                for team_id, team_configs in group_by_team(configs).items()
            }
        log.info("plugins loaded: %d configs for %d teams", len(self._vms), len(self._by_team))
        await self._prepare_for_a_while(new)
        if self._idle_unload_seconds > 0 and self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_regularly())

    async def _prepare_for_a_while(self, configs: list[PluginConfigInForce]) -> None:
        """Prepare the code of the plugins of `configs`, waiting `prepare_patience` seconds at most: the
        rest goes on in the background."""
        if not configs or self._prepare_code is None:
            return
        preparing = asyncio.create_task(_prepare_each(self._prepare_code, configs))
        self._preparing.add(preparing)
        preparing.add_done_callback(self._preparing.discard)
        await asyncio.wait({preparing}, timeout=self._prepare_patience)

    def unload_idle(self, idle_seconds: float | None = None) -> int:
        """Start unloading (in the background) every instance idle for `idle_seconds` (default:
        `idle_unload_seconds`); how many. `settle()` waits for them."""
        seconds = self._idle_unload_seconds if idle_seconds is None else idle_seconds
        idle = [vm for vm in self._vms.values() if vm.is_idle(seconds)]
        for vm in idle:
            self._track(vm.unload_if_idle(seconds))
        if idle:
            log.info("unloading %d plugin instances idle for %gs", len(idle), seconds)
        return len(idle)

    async def settle(self) -> None:
        """Wait for the teardowns and idle unloads running in the background."""
        while self._teardowns:
            await asyncio.gather(*self._teardowns, return_exceptions=True)

    async def _sweep_regularly(self) -> None:
        interval = min(self._idle_unload_seconds / 2, 60.0)
        while True:
            await asyncio.sleep(interval)
            try:
                self.unload_idle()
            except Exception:
                log.exception("unloading idle plugins failed")

    async def close(self) -> None:
        """Tear down every VM (on shutdown) and wait for teardowns still running; stop preparing code."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        preparing = list(self._preparing)
        for task in preparing:
            task.cancel()
        for vm in self._vms.values():
            self._teardown_later(vm)
        self._vms, self._by_team = {}, {}
        await asyncio.gather(*preparing, *self._teardowns, return_exceptions=True)

    def _teardown_later(self, vm: PluginVM) -> None:
        self._track(vm.teardown())

    def _track(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(work)
        self._teardowns.add(task)
        task.add_done_callback(self._teardowns.discard)


async def _prepare_each(
    prepare_code: Callable[[PluginConfigInForce], Awaitable[None]], configs: list[PluginConfigInForce]
) -> None:
    """Prepare the code of each plugin of `configs` once; a plugin whose code fails here fails again at
    its setup, which records the error where its users look."""
    plugins = {(config.plugin.id, config.plugin.updated_at): config for config in configs}
    for config in plugins.values():
        try:
            await prepare_code(config)
        except Exception as error:
            log.debug("preparing the code of plugin %d failed: %s", config.plugin.id, error)
