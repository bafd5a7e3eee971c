"""The life of one plugin config in a worker: loaded lazily, set up with retries, torn down.

The first call that needs the plugin loads its code and runs setupPlugin. Until that succeeds the
plugin is skipped (its events go on without it). A failing setup is retried after 3, 6, 12 ... seconds;
after MAX_SETUP_ATTEMPTS failures the config is disabled, as the original did.

An instance that has not been used for a while can be unloaded (`unload_if_idle`, called by the
registry's idle sweep): teardownPlugin runs, its memory (a JS plugin's isolate) is freed, and the next
use sets it up again. Callers that hold the instance across awaits do so inside `use()`, so an instance
in use is never unloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from plugin_server.plugins.export import ExportBuffer
from plugin_server.plugins.historical import HistoricalExport
from plugin_server.plugins.instance import PluginInstance, PluginTimeout, capabilities
from plugin_server.plugins.meta.errors import clear_plugin_error, disable_plugin_config, record_plugin_error
from plugin_server.plugins.meta.logs import PluginLogger
from plugin_server.plugins.meta.metrics import PluginMetrics
from plugin_server.plugins.models import PluginConfigInForce
from plugin_server.plugins.tracking import SETUP_LABEL, HungMarks
from plugin_server.services.metrics import PluginLabels

log = logging.getLogger(__name__)

MAX_SETUP_ATTEMPTS = 10
FIRST_RETRY_SECONDS = 3.0

InstanceFactory = Callable[["PluginVM"], Awaitable[PluginInstance]]


class PluginVM:
    """Lazily creates and sets up the plugin instance of one config; `get()` is what callers use."""

    def __init__(
        self,
        config: PluginConfigInForce,
        *,
        instance_id: str,
        pool: AsyncConnectionPool[Any],
        logger: PluginLogger,
        create: InstanceFactory,
        hung: HungMarks,
        first_retry_seconds: float = FIRST_RETRY_SECONDS,
    ) -> None:
        self.config = config
        self.labels = PluginLabels(config.id, config.plugin.name, config.config.team_id or 0)
        self.instance_id = instance_id
        self.logger = logger
        self._pool = pool
        self._create = create
        self._hung = hung
        self._first_retry = first_retry_seconds
        self._instance: PluginInstance | None = None
        self._loading: asyncio.Task[PluginInstance | None] | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._closed = False
        self._last_used = time.monotonic()
        self._in_use = 0
        self._unloading: asyncio.Event | None = None
        # Whether this VM set the config's error: `config.error` is the row as loaded, so it does not
        # show an error recorded since, which a successful setup must clear all the same.
        self._error_recorded = False
        # Set by instances.InstanceFactory when the instance is created: the plugin's metrics, export buffer
        # and historical export.
        self.metrics: PluginMetrics | None = None
        self.export_buffer: ExportBuffer | None = None
        self.historical_export: HistoricalExport | None = None  # for plugins with exportEvents

    @property
    def plugin_config_id(self) -> int:
        return self.config.id

    @property
    def name(self) -> str:
        return f"{self.config.plugin.name} ({self.config.id})"

    @property
    def loaded(self) -> bool:
        """Whether the instance is set up now (not waiting for a first use or a reload after unloading)."""
        return self._instance is not None

    def lacks(self, method: str) -> bool:
        """Whether the set-up instance has no `method` (False while none is set up: not known yet). Every
        instance of a VM runs the same code (a changed plugin or config gets a new VM), so it holds for
        the VM's next instances too."""
        return self._instance is not None and method not in self._instance.methods

    async def get(self) -> PluginInstance | None:
        """The set-up instance, or None while it cannot be had (failed setup, waiting to retry).

        A caller that awaits while holding the instance should hold it inside `use()` instead."""
        self._last_used = time.monotonic()
        if self._instance is not None:
            return self._instance
        if self._closed or self._failures >= MAX_SETUP_ATTEMPTS or time.monotonic() < self._retry_at:
            return None
        if self._loading is None:
            self._loading = asyncio.create_task(self._load())
        # shield: a caller that gives up waiting must not cancel the setup others wait for
        return await asyncio.shield(self._loading)

    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator[PluginInstance | None]:
        """`get()`, with the instance kept from being unloaded as idle until the block ends."""
        self._in_use += 1
        try:
            yield await self.get()
        finally:
            self._in_use -= 1
            self._last_used = time.monotonic()

    def is_idle(self, idle_seconds: float) -> bool:
        """Whether the instance is set up, not in use, and was last used `idle_seconds` ago or more."""
        return (
            self._instance is not None
            and not self._in_use
            and self._loading is None
            and self._unloading is None
            and time.monotonic() - self._last_used >= idle_seconds
        )

    async def unload_if_idle(self, idle_seconds: float) -> bool:
        """Tear the instance down if it is set up, not in use, and unused for `idle_seconds`; the next
        `get()` sets it up again. Whether it was unloaded."""
        instance = self._instance
        if instance is None or not self.is_idle(idle_seconds):
            return False
        self._instance, export_buffer, self.export_buffer = None, self.export_buffer, None
        self._unloading = unloading = asyncio.Event()
        try:
            await self._tear_down(instance, export_buffer, "Plugin unloaded after being idle")
        finally:
            self._unloading = None
            unloading.set()
        return True

    async def record_error(
        self, error: BaseException | str, event: dict[str, Any] | None = None, *, function: str, outcome: str
    ) -> None:
        """Store the error as the config's last one and in the plugin's log, and tell the server's log
        which plugin failed in which `function`, and what happens next (`outcome`: retried or not)."""
        self._error_recorded = True
        described = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        log.warning("plugin %s failed in %s: %s; %s", self.name, function, described, outcome)
        await record_plugin_error(self._pool, self.logger, self.config.id, error, event)

    async def teardown(self) -> None:
        """Run teardownPlugin (if it was set up) and forget the instance."""
        self._closed = True
        if self._unloading is not None:  # an idle unload under way: let it finish its teardown
            await self._unloading.wait()
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
            with contextlib.suppress(BaseException):
                await self._loading
        instance, self._instance = self._instance, None
        if instance is not None:
            await self._tear_down(instance, self.export_buffer, "Plugin unloaded")

    async def _tear_down(
        self, instance: PluginInstance, export_buffer: ExportBuffer | None, unloaded: str
    ) -> None:
        """Export what is buffered, run teardownPlugin, and log how it went (errors are recorded)."""
        try:
            if export_buffer is not None:
                await export_buffer.flush()
            await instance.teardown()
            self.logger.system("INFO", f"{unloaded} (instance ID {self.instance_id}).")
        except Exception as error:
            self.logger.system("ERROR", f"Plugin failed to unload (instance ID {self.instance_id}).")
            await self.record_error(error, function="teardownPlugin", outcome="unloaded all the same")

    async def _load(self) -> PluginInstance | None:
        loading_since = datetime.now(UTC)
        try:
            if self._unloading is not None:  # set up again only once the idle instance is torn down
                await self._unloading.wait()
            if await self._hung.take(self.config.id, SETUP_LABEL):
                raise PluginTimeout(
                    "setupPlugin ran for longer than TASK_TIMEOUT and its worker was replaced"
                )
            instance = await self._create(self)
            await instance.setup()
        except Exception as error:
            await self._setup_failed(error)
            return None
        finally:
            self._loading = None
        self._instance = instance
        self._failures = 0
        self.logger.system("INFO", f"Plugin loaded (instance ID {self.instance_id}).")
        if self.config.config.error is not None or self._error_recorded:
            # An error recorded while it was set up (one of its timers') is new: it stays.
            await clear_plugin_error(self._pool, self.config.id, older_than=loading_since)
        await self._store_capabilities(instance)
        return instance

    async def _setup_failed(self, error: Exception) -> None:
        self._failures += 1
        if self._failures >= MAX_SETUP_ATTEMPTS:
            await self.record_error(
                error, function="setupPlugin", outcome=f"disabled after {self._failures} failed attempts"
            )
            message = f"Plugin {self.name} failed to set up {self._failures} times. Disabling it due to too many retries."
            self.logger.system("ERROR", message)
            await disable_plugin_config(self._pool, self.config.id)
            return
        delay = self._first_retry * 2 ** (self._failures - 1)
        self._retry_at = time.monotonic() + delay
        outcome = f"retried in {delay:.0f}s (attempt {self._failures} of {MAX_SETUP_ATTEMPTS})"
        await self.record_error(error, function="setupPlugin", outcome=outcome)

    async def _store_capabilities(self, instance: PluginInstance) -> None:
        found = capabilities(instance)
        if found == self.config.plugin.capabilities:
            return
        async with self._pool.connection() as connection:
            await connection.execute(
                "UPDATE posthog_plugin SET capabilities = %s WHERE id = %s",
                (Jsonb(found), self.config.plugin.id),
            )
