"""After a micro-batch is stored: match its events against their teams' actions, record the matches and
queue the hooks they fire.

Per batch: the actions come from memory (ActionStore), the persons that person or cohort filters need
from one query, and the matches are recorded and their hooks queued in one transaction. With
`write_action_events` (Postgres mode) the matches go to posthog_action_events and only newly recorded
ones fire hooks, so a batch ingested again (a redelivery, a retry) fires nothing twice.

Hooks as the original fired them: the team's `slack_incoming_webhook` for each matched action with
`post_to_slack`, and, if the organization has the `zapier` feature, each `action_performed` ee_hook of
a matched action. Each is a job on the Postgres job queue (see delivery.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg_pool import AsyncConnectionPool

from plugin_server.actions.celery_tasks import CeleryHookTasks
from plugin_server.actions.delivery import REST_HOOK, WEBHOOK, hook_job
from plugin_server.actions.lookups import Key, RestHooks, fetch_persons
from plugin_server.actions.messages import json_body, webhook_body
from plugin_server.actions.models import Action, EventFacts, Person
from plugin_server.actions.store import ActionStore
from plugin_server.ingestion.rules import format_iso
from plugin_server.ingestion.teams import OrganizationManager, TeamManager
from plugin_server.ingestion.types import PreparedEvent, Team
from plugin_server.jobs.queue import JobQueue, PluginJob
from plugin_server.services.metrics import get_metrics

log = logging.getLogger(__name__)

_RECORD_MATCHES = """
WITH matched AS (
    SELECT e.id AS event_id, k.uuid, k.action_id
    FROM unnest(%s::int[], %s::uuid[], %s::int[]) AS k(team_id, uuid, action_id)
    JOIN posthog_event e ON e.team_id = k.team_id AND e.uuid = k.uuid
), recorded AS (
    INSERT INTO posthog_action_events (event_id, action_id)
    SELECT event_id, action_id FROM matched
    ON CONFLICT (action_id, event_id) DO NOTHING
    RETURNING event_id, action_id
)
SELECT matched.uuid::text AS uuid, matched.action_id FROM recorded JOIN matched USING (event_id, action_id)
"""

Match = tuple[PreparedEvent, list[Action]]


@dataclass(frozen=True, slots=True)
class _Hook:
    uuid: str
    action_id: int
    job: PluginJob


def _uuid(text: str) -> str:
    """As Postgres writes it (ingestion checked the form: hyphenated hex, possibly upper-case)."""
    return text.lower()


def plugin_event(event: PreparedEvent) -> dict[str, Any]:
    """The event as hooks show it (the original's PluginEvent fields)."""
    return {
        "distinct_id": event.distinct_id,
        "ip": event.ip,
        "site_url": event.site_url,
        "team_id": event.team_id,
        "now": format_iso(event.now),
        "sent_at": None if event.sent_at is None else format_iso(event.sent_at),
        "uuid": event.uuid,
        "event": event.event,
        "properties": event.properties,
        "timestamp": format_iso(event.timestamp),
    }


class ActionService:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        store: ActionStore,
        jobs: JobQueue,
        *,
        teams: TeamManager,
        organizations: OrganizationManager,
        rest_hooks: RestHooks,
        write_action_events: bool,
        celery: CeleryHookTasks | None = None,
    ) -> None:
        self.store = store
        self._pool = pool
        self._jobs = jobs
        self._teams = teams
        self._organizations = organizations
        self._rest_hooks = rest_hooks
        self._write_action_events = write_action_events
        self._celery = celery

    async def on_stored(self, events: Sequence[PreparedEvent]) -> None:
        """Match, record and fire hooks for events just stored (recordings are left out).

        An unavailable database or Redis propagates, so that the batch is tried again (which records
        and fires nothing twice). Any other error is logged and the batch's actions skipped: the events
        are stored, and a bug here must not turn them into dead letters."""
        # Imported here: the batches module imports the pipeline, which imports this one.
        from plugin_server.ingestion.batches import TRANSIENT_ERRORS

        events = [event for event in events if not event.is_snapshot]
        if not events:
            return
        try:
            await self._on_stored(events)
        except TRANSIENT_ERRORS:
            raise
        except Exception:
            get_metrics().action_batch_failed()
            log.exception(
                "matching the actions of %d stored events failed; their hooks are skipped", len(events)
            )

    async def _on_stored(self, events: list[PreparedEvent]) -> None:
        persons: dict[Key, Person | None] = {}
        matches = await self._match(events, persons)
        if self._celery is not None:
            await self._celery.send(await self._of_teams_with_hooks(events))
            hooks: list[_Hook] = []
        else:
            hooks = await self._hooks(matches, persons)
        await self._record(matches, hooks)

    async def _match(self, events: list[PreparedEvent], persons: dict[Key, Person | None]) -> list[Match]:
        started = time.perf_counter()
        team_actions = await self.store.for_teams({event.team_id for event in events})
        wanted = [
            (event.team_id, event.distinct_id)
            for event in events
            if team_actions[event.team_id].needs_person(event.event)
        ]
        cohorts = {cohort for actions in team_actions.values() for cohort in actions.cohort_ids}
        await self._load_persons(persons, wanted, cohorts)
        matches = []
        for event in events:
            actions = team_actions[event.team_id]
            if not actions.actions:
                continue
            person = persons.get((event.team_id, event.distinct_id))
            found = actions.match(EventFacts(event.event, event.properties, event.elements, person))
            if found:
                matches.append((event, found))
        get_metrics().actions_matched(
            len(events), sum(len(found) for _, found in matches), time.perf_counter() - started
        )
        return matches

    async def _load_persons(
        self, persons: dict[Key, Person | None], keys: Sequence[Key], cohorts: set[int] | None = None
    ) -> None:
        """Look up the persons of keys not looked up yet (None: no person)."""
        missing = [key for key in dict.fromkeys(keys) if key not in persons]
        if missing:
            found = await fetch_persons(self._pool, missing, cohorts or ())
            for key in missing:
                persons[key] = found.get(key)

    async def _hooks(self, matches: list[Match], persons: dict[Key, Person | None]) -> list[_Hook]:
        if not matches:
            return []
        teams = await self._teams.get_teams({event.team_id for event, _ in matches})
        zapier = {team_id for team_id, team in teams.items() if team and await self._has_zapier(team)}
        rest_hooks = await self._rest_hooks.for_teams(zapier)
        firing: list[tuple[PreparedEvent, Action, str, str | None]] = []  # event, action, target, hook id
        for event, actions in matches:
            team = teams.get(event.team_id)
            if team is None:
                continue
            for action in actions:
                if team.slack_incoming_webhook and action.post_to_slack:
                    firing.append((event, action, team.slack_incoming_webhook, None))
                for hook in rest_hooks.get(team.id, ()):
                    if hook.resource_id == action.id:
                        firing.append((event, action, hook.target, hook.id))
        await self._load_persons(persons, [(event.team_id, event.distinct_id) for event, *_ in firing])
        hooks = []
        for event, action, target, hook_id in firing:
            person = persons.get((event.team_id, event.distinct_id))
            shown = plugin_event(event)
            if hook_id is None:
                body = webhook_body(target, action, shown, person, event.site_url or "")
                job = hook_job(WEBHOOK, event.team_id, {"url": target, "body": body})
            else:
                data = {**shown, "person": None if person is None else dict(person.row)}
                shown_hook = {"id": hook_id, "event": "action_performed", "target": target}
                body = json_body({"hook": shown_hook, "data": data})
                job = hook_job(REST_HOOK, event.team_id, {"url": target, "body": body, "hook_id": hook_id})
            hooks.append(_Hook(_uuid(event.uuid), action.id, job))
        return hooks

    async def _has_zapier(self, team: Team) -> bool:
        organization = await self._organizations.get_organization(team.organization_id)
        return organization is not None and "zapier" in organization.available_features

    async def _of_teams_with_hooks(self, events: list[PreparedEvent]) -> list[PreparedEvent]:
        teams = await self._teams.get_teams({event.team_id for event in events})
        rest_hooks = await self._rest_hooks.for_teams(teams)
        hooked = {
            team_id
            for team_id, team in teams.items()
            if team is not None and (team.slack_incoming_webhook or rest_hooks.get(team_id))
        }
        return [event for event in events if event.team_id in hooked]

    async def _record(self, matches: list[Match], hooks: list[_Hook]) -> None:
        if not hooks and not (self._write_action_events and matches):
            return
        async with self._pool.connection() as connection, connection.transaction():
            if self._write_action_events and matches:
                pairs = [(event, action.id) for event, actions in matches for action in actions]
                cursor = await connection.execute(
                    _RECORD_MATCHES,
                    (
                        [event.team_id for event, _ in pairs],
                        [event.uuid for event, _ in pairs],
                        [action_id for _, action_id in pairs],
                    ),
                )
                recorded = {(row["uuid"], row["action_id"]) for row in await cursor.fetchall()}
                hooks = [hook for hook in hooks if (hook.uuid, hook.action_id) in recorded]
            await self._jobs.enqueue_many([hook.job for hook in hooks], connection)
        if hooks:
            self._jobs.wake()
