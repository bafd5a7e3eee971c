"""The ingestion pipeline for one micro-batch of queue messages.

decode -> prepare (timestamps, name, $set, elements) -> team -> $ip -> definitions -> campaign and
initial properties -> groups -> persons (in claim order; the person, distinct-id and group rows
written go to the person sink) -> store (events to the event sink) -> actions (matches, hooks) ->
first-event flag.

A message that cannot be ingested (malformed, unknown task, invalid event, unknown team) becomes a
dead letter with its reason; the rest of the batch goes on. Errors of the database itself propagate,
so the caller can retry the batch or split it. The work comes in two halves: `process` (decode and the
plugins' processEvent) and `ingest` (everything after), which changes none of the events it is given,
so a caller can ingest a processed batch again, or event by event, without running plugins again.
`ingest` is itself `apply_persons` then `store`: the person step is the only one kept in claim order,
so a caller hands the turn on after it, and can store again (or event by event) without redoing it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from plugin_server.actions.service import ActionService
from plugin_server.ingestion.definitions import DefinitionsManager
from plugin_server.ingestion.groups import (
    GroupRow,
    GroupTypeManager,
    add_group_properties,
    group_pairs,
    groupidentify_pair,
    identified_group,
)
from plugin_server.ingestion.message_fields import MalformedMessage, parse_now
from plugin_server.ingestion.persons import Key, PersonManager, PersonRow, PersonUpdate
from plugin_server.ingestion.rules import add_campaign_and_initial_properties, apply_ip, prepare_event
from plugin_server.ingestion.teams import TeamManager
from plugin_server.ingestion.types import InvalidEvent, PreparedEvent, RawEvent, Team
from plugin_server.jobs.queue import JobQueue, PluginJob
from plugin_server.plugins.run import PluginRunner
from plugin_server.services.metrics import get_metrics
from plugin_server.sinks import EventSink, PersonSink
from plugin_server.sources import MessageCodec
from plugin_server.sources.celery_redis import CeleryCodec

log = logging.getLogger(__name__)

PLUGIN_METRICS_EVENT = "$$plugin_metrics"
DeadLetter = tuple[bytes, str]


@dataclass
class BatchOutcome:
    """What became of a batch: events stored, dropped by plugins, and messages sent to the dead
    letter store."""

    stored: int = 0
    dropped: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)


@dataclass
class ProcessedBatch:
    """A batch after decoding and processEvent: the events left to ingest, each with the message it came
    from (a dead letter keeps the original message), and what processing dropped or dead-lettered."""

    events: list[tuple[bytes, RawEvent]]
    outcome: BatchOutcome

    def one_by_one(self) -> list[ProcessedBatch]:
        """A batch per event, with nothing of this batch's outcome (count that once, separately)."""
        return [ProcessedBatch([pair], BatchOutcome()) for pair in self.events]

    def by_team(self) -> dict[Any, ProcessedBatch]:
        """A batch per team (the `team_id` the event came with), each with nothing of this batch's
        outcome."""
        teams: dict[Any, ProcessedBatch] = {}
        for message, event in self.events:
            team_id = event.get("team_id")
            batch = teams.get(team_id)
            if batch is None:
                batch = teams[team_id] = ProcessedBatch([], BatchOutcome())
            batch.events.append((message, event))
        return teams

    @classmethod
    def merged(cls, batches: Sequence[ProcessedBatch]) -> ProcessedBatch:
        """One batch of the events and outcomes of several."""
        outcome = BatchOutcome()
        for batch in batches:
            outcome.dropped += batch.outcome.dropped
            outcome.dead_letters.extend(batch.outcome.dead_letters)
        return cls([pair for batch in batches for pair in batch.events], outcome)


@dataclass
class _Item:
    message: bytes
    raw: RawEvent
    event: PreparedEvent
    team: Team


@dataclass
class PersonsApplied:
    """A batch whose person step is done: its events, ready to store, the outcome so far, and the
    persons the step left (see PersonChanges.persons)."""

    items: list[_Item]
    outcome: BatchOutcome
    persons: dict[Key, PersonRow] = field(default_factory=dict)

    def one_by_one(self) -> list[tuple[bytes, PersonsApplied]]:
        """Each event as a batch of its own, with the message it came from (and none of the outcome)."""
        return [(item.message, PersonsApplied([item], BatchOutcome(), self.persons)) for item in self.items]


class EventPipeline:
    """Runs every ingestion step over a micro-batch; the managers hold the per-worker caches."""

    def __init__(
        self,
        *,
        teams: TeamManager,
        definitions: DefinitionsManager,
        groups: GroupTypeManager,
        persons: PersonManager,
        sink: EventSink,
        person_sink: PersonSink,
        plugins: PluginRunner | None = None,
        jobs: JobQueue | None = None,
        actions: ActionService | None = None,
        codec: MessageCodec | None = None,
    ) -> None:
        self.codec: MessageCodec = codec or CeleryCodec()
        self.teams = teams
        self.definitions = definitions
        self.groups = groups
        self.persons = persons
        self.sink = sink
        self.person_sink = person_sink
        self.plugins = plugins
        self.jobs = jobs
        self.actions = actions

    async def run(
        self, messages: Sequence[bytes], wait_for_person_turn: Callable[[], Awaitable[None]] | None = None
    ) -> BatchOutcome:
        return await self.ingest(await self.process(messages), wait_for_person_turn)

    async def process(self, messages: Sequence[bytes]) -> ProcessedBatch:
        return await self.run_plugins(await self.decode(messages))

    async def decode(self, messages: Sequence[bytes]) -> ProcessedBatch:
        """The events of the messages, before plugins (plugin jobs are queued; bad messages are dead
        letters)."""
        outcome = BatchOutcome()
        return ProcessedBatch(await self._decode(messages, outcome), outcome)

    async def run_plugins(self, batch: ProcessedBatch) -> ProcessedBatch:
        """The decoded batch after its teams' processEvent (its outcome counts the events dropped)."""
        if self.plugins is None:
            return batch
        outcome = replace(batch.outcome, dead_letters=list(batch.outcome.dead_letters))
        return ProcessedBatch(await self._process_with_plugins(batch.events, outcome), outcome)

    async def ingest(
        self, batch: ProcessedBatch, wait_for_person_turn: Callable[[], Awaitable[None]] | None = None
    ) -> BatchOutcome:
        """Everything after processEvent; the outcome includes the processing's. Repeatable."""
        return await self.store(await self.apply_persons(batch, wait_for_person_turn))

    async def apply_persons(
        self, batch: ProcessedBatch, wait_for_person_turn: Callable[[], Awaitable[None]] | None = None
    ) -> PersonsApplied:
        """Every step up to and including the person step (persons, distinct ids and groups written, and
        passed to the person sink), which waits for the batch's turn: once this returns, the next batch
        of its teams may take its turn while this one is stored (`store`)."""
        outcome = replace(batch.outcome, dead_letters=list(batch.outcome.dead_letters))
        items = await self._prepare(batch.events, outcome)
        groups = await self._enrich(items)
        if wait_for_person_turn is not None:
            await wait_for_person_turn()
        changes = await self.persons.process_batch([_person_update(item.event) for item in items])
        try:
            await self.person_sink.write([*changes.rows, *groups])
        except BaseException:
            # answered again by the next person step (a retry of this one finds them in Postgres already)
            self.persons.hand_back(changes)
            raise
        await self.persons.delivered(changes)
        return PersonsApplied(items, outcome, changes.persons)

    async def store(self, applied: PersonsApplied) -> BatchOutcome:
        """Store the events of a batch whose person step is done, then match actions, mark first events
        and call the plugins' onEvent. Repeatable, without running the person step again."""
        items = applied.items
        await self.sink.write([item.event for item in items], applied.persons)
        if self.actions is not None:
            await self.actions.on_stored([item.event for item in items])
        outcome = replace(applied.outcome, dead_letters=list(applied.outcome.dead_letters))
        outcome.stored = len(items)
        get_metrics().batch_ingested(outcome.stored, outcome.dropped)
        await self._mark_first_events(items)
        captures = [item.raw for item in items if not item.event.is_snapshot]
        if self.plugins is not None and captures:
            await self.plugins.on_events(captures)
        return outcome

    async def _decode(self, messages: Sequence[bytes], outcome: BatchOutcome) -> list[tuple[bytes, RawEvent]]:
        decoded = []
        for message in messages:
            try:
                carried = await self.codec.decode(message)
                if not isinstance(carried, PluginJob):
                    decoded.append((message, carried))
                elif self.jobs is not None:
                    await self.jobs.enqueue(carried)
                else:
                    raise MalformedMessage("no job queue for a plugin job")
            except (MalformedMessage, ValueError, TypeError) as error:
                outcome.dead_letters.append((message, f"malformed message: {error}"))
        return decoded

    async def _process_with_plugins(
        self, raw_events: list[tuple[bytes, RawEvent]], outcome: BatchOutcome
    ) -> list[tuple[bytes, RawEvent]]:
        assert self.plugins is not None
        processed = await self.plugins.process_events([raw for _, raw in raw_events])
        kept = [(message, event) for (message, _), event in zip(raw_events, processed, strict=True) if event]
        outcome.dropped += len(raw_events) - len(kept)
        return kept

    async def _prepare(self, raw_events: list[tuple[bytes, RawEvent]], outcome: BatchOutcome) -> list[_Item]:
        prepared = []
        for message, raw in raw_events:
            try:
                prepared.append((message, raw, prepare_event(raw)))
            except InvalidEvent as error:
                outcome.dead_letters.append((message, f"invalid event: {error}"))
        teams = await self.teams.get_teams({event.team_id for _, _, event in prepared})
        items = []
        for message, raw, event in prepared:
            team = teams.get(event.team_id)
            if team is None:
                reason = f"No team found with ID {event.team_id}. Can't ingest event."
                outcome.dead_letters.append((message, reason))
            else:
                items.append(_Item(message, raw, event, team))
        return items

    async def _enrich(self, items: list[_Item]) -> list[GroupRow]:
        """$ip, definitions, campaign/initial properties and groups, in the original's order; answer the
        groups that `$groupidentify` events set."""
        captures = [item for item in items if not item.event.is_snapshot]
        for item in captures:
            apply_ip(item.event.properties, item.event.ip, item.team.anonymize_ips)
        await self.definitions.record(
            (item.event.team_id, item.event.event, item.event.properties)
            for item in captures
            if item.event.event != PLUGIN_METRICS_EVENT
        )
        # Ordered, so that the first group type seen gets the lowest index, as in the original.
        wanted: dict[tuple[int, str], None] = {}
        for item in captures:
            add_campaign_and_initial_properties(item.event.properties)
            for group_type, _ in group_pairs(item.event.properties):
                wanted[(item.event.team_id, group_type)] = None
            identified = groupidentify_pair(item.event.event, item.event.properties)
            if identified is not None:
                wanted[(item.event.team_id, identified[0])] = None
        if not wanted:
            return []
        indexes = await self.groups.resolve(wanted)
        groups = []
        for item in captures:
            event = item.event
            add_group_properties(event.properties, event.team_id, indexes)
            group = identified_group(event.team_id, event.event, event.properties, event.timestamp, indexes)
            if group is not None:
                groups.append(group)
        return groups

    async def _mark_first_events(self, items: list[_Item]) -> None:
        first = {
            item.team.id: item.team
            for item in items
            if not item.team.ingested_event and not item.event.is_snapshot
        }
        for team in first.values():
            await self.teams.mark_ingested_event(team)


def event_of(message: bytes) -> RawEvent | None:
    """The event a Celery queue message carries; None for other tasks and unreadable messages."""
    return CeleryCodec().peek(message)


def message_age_seconds(message: bytes | None) -> float:
    """How long ago the event in a Celery queue `message` was captured (from its `now`); 0 when there
    is none or it cannot be read. The queue's lag is this age of its oldest message."""
    event = event_of(message) if message else None
    captured = parse_now(event["now"]) if event else None
    if captured is None:
        return 0.0
    return max(0.0, (datetime.now(UTC) - captured).total_seconds())


def message_context(message: bytes, codec: MessageCodec) -> dict[str, Any]:
    """The log context of one message: team_id and event_uuid, where it carries an event."""
    event = codec.peek(message)
    return {} if event is None else {"team_id": event.get("team_id"), "event_uuid": event.get("uuid")}


def _person_update(event: PreparedEvent) -> PersonUpdate:
    # A recording's person is created "now", a capture's at sent_at (as in the original). Positional:
    # a call with keywords costs more, and this runs for every event.
    created_at = event.now if event.is_snapshot else event.sent_at or event.now
    return PersonUpdate(event.team_id, event.distinct_id, event.event, event.properties, created_at)
