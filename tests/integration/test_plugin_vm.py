"""PluginVM with real Python plugins on the real database and Redis: lazy setup, retries with backoff,
disabling after too many failures, capabilities, teardown, shared setup and hung setup marks."""

from __future__ import annotations

import asyncio
import json
import textwrap
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from plugin_server.db.teams import CreatedTeam
from plugin_server.plugins import vm as vm_module
from plugin_server.plugins.admin import enable_plugin, install_plugin
from plugin_server.plugins.instance import PluginInstance
from plugin_server.plugins.loader import load_configs_in_force, resolve_plugin_code
from plugin_server.plugins.meta.logs import PluginLogger, PluginLogWriter
from plugin_server.plugins.meta.storage import Cursor, PluginStorage
from plugin_server.plugins.models import PluginConfigInForce
from plugin_server.plugins.runtime_py import PythonPlugin
from plugin_server.plugins.tracking import SETUP_LABEL, CallTracker, HungMarks, hung_key
from plugin_server.plugins.vm import MAX_SETUP_ATTEMPTS, PluginVM
from tests.conftest import Counted, FakeClock

Db = psycopg.Connection[Any]

# Fails its first `fail_times` setups (counted in storage, which outlives each attempt's module).
FLAKY_SETUP = """
import asyncio

async def setup_plugin(meta):
    attempts = await meta.utils.cursor.increment("setup attempts")
    await asyncio.sleep(float(meta.config.get("setup_seconds", 0)))
    if attempts <= int(meta.config.get("fail_times", 0)):
        raise ValueError(f"setup failed (attempt {attempts})")

def process_event(event, meta):
    return event
"""

TEARDOWN_SOURCE = """
async def teardown_plugin(meta):
    if meta.config.get("teardown") == "throw":
        raise RuntimeError("cannot let go")
    await meta.storage.set("torn down", True)
"""


@pytest.fixture
async def writer(pool: AsyncConnectionPool[Any]) -> PluginLogWriter:
    """A log writer that stores only when the test flushes it."""
    return PluginLogWriter(pool, flush_interval=3600)


@pytest.fixture
def hung(aredis: aioredis.Redis) -> HungMarks:
    return HungMarks(aredis)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The VM's monotonic clock, moved by hand (only the vm module's, not the event loop's)."""
    fake = FakeClock()
    monkeypatch.setattr(vm_module, "time", SimpleNamespace(monotonic=fake))
    return fake


def install(
    db: Db, tmp_path: Path, team: CreatedTeam, source: str, config: dict[str, Any] | None = None
) -> int:
    """Install a Python plugin folder and enable it for the team; return the config id."""
    folder = tmp_path / f"plugin-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    (folder / "plugin.json").write_text(json.dumps({"name": "vm test plugin", "main": "index.py"}))
    (folder / "index.py").write_text(textwrap.dedent(source))
    plugin = install_plugin(db, folder)
    return enable_plugin(db, plugin, team.team_id, config or {}).id


async def config_in_force(pool: AsyncConnectionPool[Any], config_id: int) -> PluginConfigInForce:
    [config] = [config for config in await load_configs_in_force(pool) if config.id == config_id]
    return config


def make_vm(
    config: PluginConfigInForce,
    *,
    pool: AsyncConnectionPool[Any],
    writer: PluginLogWriter,
    hung: HungMarks,
    first_retry_seconds: float = 3.0,
) -> PluginVM:
    """A VM whose instances are real Python plugins with config, storage, cursor and logger in meta."""
    instance_id = str(uuid.uuid4())
    logger = PluginLogger(
        writer,
        team_id=config.config.team_id or 0,
        plugin_id=config.plugin.id,
        plugin_config_id=config.id,
        instance_id=instance_id,
    )

    async def create(vm: PluginVM) -> PluginInstance:
        code = resolve_plugin_code(vm.config.plugin, Path.cwd())
        meta = SimpleNamespace(
            config=dict(vm.config.config.config),
            global_={},
            storage=PluginStorage(pool, vm.config.id),
            utils=SimpleNamespace(cursor=Cursor(pool, vm.config.id)),
            logger=vm.logger,
        )
        return PythonPlugin.load(
            code, meta, plugin_config_id=vm.config.id, timeout=5, tracker=CallTracker(None)
        )

    return PluginVM(
        config,
        instance_id=instance_id,
        pool=pool,
        logger=logger,
        create=create,
        hung=hung,
        first_retry_seconds=first_retry_seconds,
    )


def stored(db: Db, config_id: int, key: str) -> Any:
    row = db.execute(
        "SELECT value FROM posthog_pluginstorage WHERE plugin_config_id = %s AND key = %s", (config_id, key)
    ).fetchone()
    return json.loads(row[0]) if row else None


def attempts(db: Db, config_id: int) -> int:
    return int(stored(db, config_id, "setup attempts") or 0)


def config_state(db: Db, config_id: int) -> tuple[Any, bool]:
    row = db.execute("SELECT error, enabled FROM posthog_pluginconfig WHERE id = %s", (config_id,)).fetchone()
    assert row is not None
    return row[0], row[1]


async def log_entries(writer: PluginLogWriter, db: Db, config_id: int) -> list[tuple[str, str, str]]:
    """(source, type, message) of the config's stored log entries, oldest first."""
    await writer.flush()
    rows = db.execute(
        "SELECT source, type, message FROM posthog_pluginlogentry WHERE plugin_config_id = %s "
        "ORDER BY timestamp, id",
        (config_id,),
    ).fetchall()
    return [(row[0], row[1], row[2]) for row in rows]


async def poll_until(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.002)


def capability_updates(statements: list[str]) -> int:
    return sum("UPDATE posthog_plugin SET capabilities" in statement for statement in statements)


@dataclass(frozen=True)
class Bed:
    """What each test's plugin configs and VMs stand on: the real database, pool, log writer and hung marks."""

    db: Db
    tmp_path: Path
    team: CreatedTeam
    pool: AsyncConnectionPool[Any]
    writer: PluginLogWriter
    hung: HungMarks

    def install(self, source: str, config: dict[str, Any] | None = None) -> int:
        return install(self.db, self.tmp_path, self.team, source, config)

    async def vm(self, config_id: int, *, first_retry_seconds: float = 3.0) -> PluginVM:
        """A fresh VM of the config as it is in force now."""
        config = await config_in_force(self.pool, config_id)
        return make_vm(
            config,
            pool=self.pool,
            writer=self.writer,
            hung=self.hung,
            first_retry_seconds=first_retry_seconds,
        )

    async def installed_vm(
        self, source: str, config: dict[str, Any] | None = None, **vm_options: float
    ) -> tuple[int, PluginVM]:
        config_id = self.install(source, config)
        return config_id, await self.vm(config_id, **vm_options)

    def attempts(self, config_id: int) -> int:
        return attempts(self.db, config_id)

    def config_state(self, config_id: int) -> tuple[Any, bool]:
        return config_state(self.db, config_id)

    async def log_entries(self, config_id: int) -> list[tuple[str, str, str]]:
        return await log_entries(self.writer, self.db, config_id)


@pytest.fixture
def bed(
    tmp_path: Path,
    clean_db: Db,
    team: CreatedTeam,
    pool: AsyncConnectionPool[Any],
    writer: PluginLogWriter,
    hung: HungMarks,
) -> Bed:
    return Bed(clean_db, tmp_path, team, pool, writer, hung)


# ---------------------------------------------------------------- setup failures, retries, disabling


async def test_a_failing_setup_is_skipped_recorded_and_retried_after_the_backoff(
    bed: Bed, clock: FakeClock
) -> None:
    config_id, vm = await bed.installed_vm(FLAKY_SETUP, {"fail_times": 2})

    assert await vm.get() is None
    assert bed.attempts(config_id) == 1
    error, enabled = bed.config_state(config_id)
    assert (error["message"], error["name"], enabled) == ("setup failed (attempt 1)", "ValueError", True)
    assert ("PLUGIN", "ERROR", "setup failed (attempt 1)") in await bed.log_entries(config_id)

    # 3 s before the second attempt, then 6 s before the third: no setup runs while waiting.
    for wait, expected_attempts in ((2.9, 1), (0.2, 2), (5.8, 2)):
        clock.now += wait
        assert await vm.get() is None
        assert bed.attempts(config_id) == expected_attempts
    assert bed.config_state(config_id)[0]["message"] == "setup failed (attempt 2)"

    clock.now += 0.3
    instance = await vm.get()
    assert instance is not None and await vm.get() is instance
    assert bed.attempts(config_id) == 3
    assert bed.config_state(config_id) == (None, True)  # the error is cleared on success
    entries = await bed.log_entries(config_id)
    assert entries[-1] == ("SYSTEM", "INFO", f"Plugin loaded (instance ID {vm.instance_id}).")
    assert sum(entry[1] == "ERROR" for entry in entries) == 2


async def test_the_config_is_disabled_after_too_many_failed_setups(bed: Bed) -> None:
    # Backoffs of 1 ms, 2 ms ... 256 ms: about half a second for all attempts.
    config_id, vm = await bed.installed_vm(FLAKY_SETUP, {"fail_times": 1000}, first_retry_seconds=0.001)

    async def disabled() -> bool:
        assert await vm.get() is None
        return not bed.config_state(config_id)[1]

    await poll_until(disabled)
    assert bed.attempts(config_id) == MAX_SETUP_ATTEMPTS
    entries = await bed.log_entries(config_id)
    assert sum(entry[:2] == ("PLUGIN", "ERROR") for entry in entries) == MAX_SETUP_ATTEMPTS
    assert entries[-1][:2] == ("SYSTEM", "ERROR")
    assert f"failed to set up {MAX_SETUP_ATTEMPTS} times" in entries[-1][2]
    assert "Disabling it due to too many retries" in entries[-1][2]

    await asyncio.sleep(0.3)  # longer than the last backoff: still no further attempt
    assert await vm.get() is None
    assert bed.attempts(config_id) == MAX_SETUP_ATTEMPTS


async def test_a_setup_marked_hung_counts_as_a_failed_attempt_and_the_mark_is_removed(
    bed: Bed, aredis: aioredis.Redis, clock: FakeClock
) -> None:
    config_id = bed.install(FLAKY_SETUP)
    await aredis.sadd(hung_key(config_id), SETUP_LABEL, "onEvent:some-event")
    vm = await bed.vm(config_id)

    assert await vm.get() is None
    assert bed.attempts(config_id) == 0  # setupPlugin was not entered again
    error = bed.config_state(config_id)[0]
    assert error["name"] == "PluginTimeout"
    assert "setupPlugin ran for longer than TASK_TIMEOUT" in error["message"]
    assert await bed.hung.of(config_id) == {"onEvent:some-event"}  # only the setup mark is taken

    clock.now += 3
    assert await vm.get() is not None
    assert bed.attempts(config_id) == 1
    assert bed.config_state(config_id) == (None, True)


# ---------------------------------------------------------------- shared setup, capabilities


async def test_concurrent_gets_share_one_setup(bed: Bed) -> None:
    config_id, vm = await bed.installed_vm(FLAKY_SETUP, {"setup_seconds": 0.1})

    instances = await asyncio.gather(*(vm.get() for _ in range(8)))

    assert instances[0] is not None and all(instance is instances[0] for instance in instances)
    assert bed.attempts(config_id) == 1
    loaded = [entry for entry in await bed.log_entries(config_id) if "Plugin loaded" in entry[2]]
    assert len(loaded) == 1


async def test_a_caller_that_gives_up_does_not_cancel_the_setup_others_wait_for(bed: Bed) -> None:
    config_id, vm = await bed.installed_vm(FLAKY_SETUP, {"setup_seconds": 0.2})

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(vm.get(), 0.05)
    assert await vm.get() is not None
    assert bed.attempts(config_id) == 1


async def test_capabilities_are_written_only_when_they_change(bed: Bed, counted: Counted) -> None:
    pool, statements = counted
    bed = replace(bed, pool=pool)  # the VMs' statements are counted (the log writer keeps its own pool)
    source = """
        def process_event(event, meta):
            return event

        async def run_every_hour(meta):
            pass

        async def send(payload, meta):
            pass

        jobs = {"send": send}
        """
    config_id = bed.install(source)

    assert await (await bed.vm(config_id)).get()
    row = bed.db.execute("SELECT capabilities FROM posthog_plugin").fetchone()
    assert row == ({"methods": ["processEvent"], "scheduled_tasks": ["runEveryHour"], "jobs": ["send"]},)
    assert capability_updates(statements) == 1

    # A new VM of the same code (another worker, or after a reload) finds them unchanged.
    assert await (await bed.vm(config_id)).get()
    assert capability_updates(statements) == 1

    # New code with another method: written again.
    bed.install(textwrap.dedent(source) + "\ndef on_event(event, meta):\n    pass\n")
    assert await (await bed.vm(config_id)).get()
    assert capability_updates(statements) == 2
    row = bed.db.execute("SELECT capabilities FROM posthog_plugin").fetchone()
    assert row is not None and row[0]["methods"] == ["processEvent", "onEvent"]


# ---------------------------------------------------------------- teardown


async def torn_down(
    bed: Bed, config: dict[str, Any] | None = None, *, set_up: bool = True
) -> tuple[int, PluginVM]:
    """Install TEARDOWN_SOURCE, set its VM up (unless not `set_up`) and tear it down."""
    config_id, vm = await bed.installed_vm(TEARDOWN_SOURCE, config)
    if set_up:
        assert await vm.get() is not None
    await vm.teardown()
    return config_id, vm


async def test_teardown_runs_teardown_plugin_and_logs_the_unload(bed: Bed) -> None:
    config_id, vm = await torn_down(bed)

    assert stored(bed.db, config_id, "torn down") is True
    entries = await bed.log_entries(config_id)
    assert entries[-1] == ("SYSTEM", "INFO", f"Plugin unloaded (instance ID {vm.instance_id}).")
    assert await vm.get() is None  # a torn-down VM is not set up again
    assert bed.config_state(config_id) == (None, True)


async def test_a_throwing_teardown_records_the_error(bed: Bed) -> None:
    config_id, vm = await torn_down(bed, {"teardown": "throw"})

    error = bed.config_state(config_id)[0]
    assert (error["message"], error["name"]) == ("cannot let go", "RuntimeError")
    entries = await bed.log_entries(config_id)
    assert ("SYSTEM", "ERROR", f"Plugin failed to unload (instance ID {vm.instance_id}).") in entries
    assert ("PLUGIN", "ERROR", "cannot let go") in entries
    assert not any("Plugin unloaded" in entry[2] for entry in entries)


async def test_teardown_of_a_vm_never_set_up_runs_nothing(bed: Bed) -> None:
    config_id, vm = await torn_down(bed, set_up=False)

    assert stored(bed.db, config_id, "torn down") is None
    assert await bed.log_entries(config_id) == []
    assert await vm.get() is None
