"""Running the team's plugins over a micro-batch: processEvent before storing, onEvent after.

Teams run at the same time; processEvent runs plugin by plugin in the team's `order`, each plugin over the whole batch at once
(one call per plugin per batch for the JS runtime), while every event keeps its own outcome: a plugin
that returns nothing drops that event, a plugin that fails on an event leaves that event as it was
before the plugin (the error goes to posthog_pluginconfig.error and the plugin's logs), and the
stored event lists the plugins that succeeded, failed and are deferred (onEvent/exportEvents).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from structlog.contextvars import bound_contextvars

from plugin_server.ingestion.types import RawEvent
from plugin_server.plugins.instance import PluginInstance, PluginTimeout
from plugin_server.plugins.registry import PluginRegistry
from plugin_server.plugins.tracking import HungMarks, on_event_label
from plugin_server.plugins.vm import PluginVM
from plugin_server.services.metrics import ON_EVENT, PROCESS_EVENT, get_metrics

SNAPSHOT_EVENT = "$snapshot"
DEFERRED_METHODS = frozenset({"onEvent", "exportEvents"})


class PluginRunner:
    def __init__(self, registry: PluginRegistry, hung: HungMarks, *, on_event_concurrency: int = 10) -> None:
        self.registry = registry
        self._hung = hung
        self._on_event_concurrency = on_event_concurrency

    async def process_events(self, events: Sequence[RawEvent]) -> list[RawEvent | None]:
        """Each event after its team's processEvent chain, or None where a plugin dropped it."""
        results: list[RawEvent | None] = list(events)
        by_team: dict[Any, list[int]] = defaultdict(list)
        for index, event in enumerate(events):
            if event.get("event") != SNAPSHOT_EVENT:
                by_team[event.get("team_id")].append(index)
        chains = {
            team_id: vms
            for team_id in by_team
            if isinstance(team_id, int) and (vms := self.registry.for_team(team_id))
        }
        # Hung marks (a Redis round trip) only of the plugins that may have processEvent (see `lacks`).
        hung = await self._hung.of_many(
            vm.plugin_config_id for vms in chains.values() for vm in vms if not vm.lacks("processEvent")
        )
        # Teams' chains run at the same time: a plugin config belongs to one team (its own isolate), so
        # one team's slow plugin does not hold up the others' (each chain writes only its own indexes).
        # A chain that fails (e.g. Redis is down) fails the call once every chain is over, not before.
        ends = await asyncio.gather(
            *(
                self._run_chain(vms, by_team[team_id], events, results, hung)
                for team_id, vms in chains.items()
            ),
            return_exceptions=True,
        )
        for end in ends:
            if isinstance(end, BaseException):
                raise end
        return results

    async def _run_chain(
        self,
        vms: list[PluginVM],
        indexes: list[int],
        events: Sequence[RawEvent],
        results: list[RawEvent | None],
        hung: dict[int, frozenset[str]],
    ) -> None:
        ran: list[str] = []  # the plugins whose processEvent ran, in order
        failed: dict[int, list[str]] = defaultdict(list)  # of an event, those that failed on it
        deferred: list[str] = []
        for vm in vms:
            async with vm.use() as instance:
                if instance is None:
                    continue
                alive = [index for index in indexes if results[index] is not None]
                if "processEvent" in instance.methods and alive:
                    marks = hung.get(vm.plugin_config_id, frozenset())
                    await self._process_with(vm, instance, alive, results, failed, marks)
                    ran.append(vm.name)
                if instance.methods & DEFERRED_METHODS:
                    deferred.append(vm.name)
        if ran or deferred:
            _tag(indexes, events, results, ran, failed, deferred)

    async def _process_with(
        self,
        vm: PluginVM,
        instance: PluginInstance,
        alive: list[int],
        results: list[RawEvent | None],
        failed: dict[int, list[str]],
        hung: frozenset[str],
    ) -> None:
        given = [results[index] for index in alive]
        errors: list[tuple[BaseException, RawEvent]] = []
        name = vm.name  # a property that formats the name: once per batch, not per event
        with get_metrics().plugin_call(vm.labels, PROCESS_EVENT, len(given)) as call:
            outcomes = await instance.process_events(given, hung)  # type: ignore[arg-type]
            for index, before, outcome in zip(alive, given, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    failed[index].append(name)
                    errors.append((outcome, before))  # type: ignore[arg-type]
                else:
                    results[index] = outcome
            call.errors = len(errors)
        if errors:
            with bound_contextvars(**vm.labels.log_context()):
                await self._record_errors(vm, errors)

    async def _record_errors(self, vm: PluginVM, errors: list[tuple[BaseException, RawEvent]]) -> None:
        """The first error of a batch goes to posthog_pluginconfig.error; every one goes to the logs."""
        first_error, first_event = errors[0]
        outcome = f"{len(errors)} event(s) of the batch go on without its change (not retried)"
        await vm.record_error(first_error, first_event, function="processEvent", outcome=outcome)
        for error, event in errors[1:]:
            vm.logger.plugin_error(f"{type(error).__name__}: {error} (event {event.get('uuid')})")

    async def on_events(self, events: Sequence[RawEvent]) -> None:
        """onEvent of every plugin of each event's team, plugins in parallel; errors are recorded."""
        by_team: dict[Any, list[RawEvent]] = defaultdict(list)
        for event in events:
            by_team[event.get("team_id")].append(event)
        work = [
            (vm, team_events)
            for team_id, team_events in by_team.items()
            if isinstance(team_id, int)
            for vm in self.registry.for_team(team_id)
        ]
        if not work:
            return
        # As for processEvent: a team of processEvent-only plugins makes no Redis round trip here.
        hung = await self._hung.of_many(vm.plugin_config_id for vm, _ in work if not vm.lacks("onEvent"))
        await asyncio.gather(
            *(
                self._on_events_of(vm, team_events, hung.get(vm.plugin_config_id, frozenset()))
                for vm, team_events in work
            )
        )

    async def _on_events_of(self, vm: PluginVM, events: list[RawEvent], hung: frozenset[str]) -> None:
        async with vm.use() as instance:  # not unloaded as idle while its onEvent calls run
            if instance is not None:
                await self._on_events_with(vm, instance, events, hung)

    async def _on_events_with(
        self, vm: PluginVM, instance: PluginInstance, events: list[RawEvent], hung: frozenset[str]
    ) -> None:
        if vm.export_buffer is not None:
            await vm.export_buffer.add(events)
        if "onEvent" not in instance.methods:
            return
        slots = asyncio.Semaphore(self._on_event_concurrency)

        with get_metrics().plugin_call(vm.labels, ON_EVENT, len(events)) as call:

            async def one(event: RawEvent) -> None:
                async with slots:
                    try:
                        if on_event_label(str(event.get("uuid"))) in hung:
                            raise PluginTimeout("onEvent ran too long on this event before; it was skipped")
                        await instance.on_event(event)
                    except Exception as error:
                        call.errors += 1
                        with bound_contextvars(**vm.labels.log_context(), event_uuid=event.get("uuid")):
                            await vm.record_error(error, event, function="onEvent", outcome="not retried")

            await asyncio.gather(*(one(event) for event in events))


def _tag(
    indexes: list[int],
    events: Sequence[RawEvent],
    results: list[RawEvent | None],
    ran: list[str],
    failed: dict[int, list[str]],
    deferred: list[str],
) -> None:
    """$plugins_succeeded, $plugins_failed and $plugins_deferred on each event still there. An event
    still there went through every plugin that ran (a dropped one stays dropped). A plugin's result
    is tagged in place; an event that is still the caller's (`events`: no plugin replaced it) is
    tagged on a copy."""
    for index in indexes:
        event = results[index]
        if event is None:
            continue
        properties = event.get("properties")
        if event is events[index]:
            properties = dict(properties) if isinstance(properties, dict) else {}
            results[index] = event = {**event, "properties": properties}
        elif not isinstance(properties, dict):
            properties = event["properties"] = {}
        failures = failed.get(index)
        if failures is None:
            properties["$plugins_succeeded"] = ran.copy()
            properties["$plugins_failed"] = []
        else:
            properties["$plugins_succeeded"] = [name for name in ran if name not in failures]
            properties["$plugins_failed"] = failures.copy()
        properties["$plugins_deferred"] = deferred.copy()
