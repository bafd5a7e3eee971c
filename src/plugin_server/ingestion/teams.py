"""Teams and organizations, read from Postgres and cached per worker for a short time (30 s by default).

A micro-batch asks for all its teams at once: every team that is not cached (or whose entry expired)
is fetched in one query, and a team that does not exist is cached as None like a found one.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from cachetools import TTLCache
from psycopg_pool import AsyncConnectionPool

from plugin_server.ingestion.batch_cache import BatchCache, Clock
from plugin_server.ingestion.types import Team

log = logging.getLogger(__name__)


# posthog_team.id is a Postgres integer: ids outside its range cannot exist and are not queried.
_INT4_MIN, _INT4_MAX = -(2**31), 2**31 - 1

_SELECT_TEAMS = """
    SELECT id, uuid, organization_id, name, api_token, anonymize_ips, ingested_event,
           session_recording_opt_in, slack_incoming_webhook
    FROM posthog_team WHERE id = ANY(%s::int[])
"""

_SELECT_TEAM_BY_TOKEN = """
    SELECT id, uuid, organization_id, name, api_token, anonymize_ips, ingested_event,
           session_recording_opt_in, slack_incoming_webhook
    FROM posthog_team WHERE api_token = %s
"""

_SET_INGESTED_EVENT = """
    UPDATE posthog_team SET ingested_event = true WHERE id = %s AND NOT ingested_event RETURNING id
"""

_SELECT_ORGANIZATION = """
    SELECT id, name, available_features, plugins_access_level, for_internal_metrics
    FROM posthog_organization WHERE id = %s
"""


def _team_from_row(row: dict[str, Any]) -> Team:
    return Team(
        id=row["id"],
        uuid=str(row["uuid"]),
        organization_id=str(row["organization_id"]),
        name=row["name"],
        api_token=row["api_token"],
        anonymize_ips=row["anonymize_ips"],
        ingested_event=row["ingested_event"],
        session_recording_opt_in=row["session_recording_opt_in"],
        slack_incoming_webhook=row["slack_incoming_webhook"],
    )


class TeamManager:
    """Team lookups for whole batches, cached per team for `ttl` seconds (at most `max_teams` entries)."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        *,
        ttl: float = 30,
        max_teams: int = 10_000,
        clock: Clock = time.monotonic,
    ) -> None:
        self._pool = pool
        self._teams: BatchCache[int, Team | None] = BatchCache(
            self._fetch, lambda: None, ttl=ttl, maxsize=max_teams, clock=clock
        )
        self._by_token: TTLCache[str, Team | None] = TTLCache(maxsize=max_teams, ttl=ttl, timer=clock)

    async def get_teams(self, team_ids: Iterable[int]) -> dict[int, Team | None]:
        """Every asked team, None for those that do not exist; one query for all the cache misses."""
        return await self._teams.get_many(team_ids)

    async def get_team(self, team_id: int) -> Team | None:
        return (await self.get_teams([team_id]))[team_id]

    async def get_team_by_token(self, api_token: str) -> Team | None:
        """The team whose `api_token` this is (the capture API's lookup), None if there is none."""
        try:
            return self._by_token[api_token]
        except KeyError:
            pass
        async with self._pool.connection() as connection:
            cursor = await connection.execute(_SELECT_TEAM_BY_TOKEN, (api_token,))
            row = await cursor.fetchone()
        team = self._by_token[api_token] = None if row is None else _team_from_row(row)
        return team

    async def mark_ingested_event(self, team: Team) -> None:
        """Set the team's `ingested_event` flag once, when its first event was stored.

        The original also sent "first team event ingested" to PostHog Cloud for every member of the
        organization; this server sends nothing outside and logs the milestone instead.
        """
        if team.ingested_event:
            return
        async with self._pool.connection() as connection:
            cursor = await connection.execute(_SET_INGESTED_EVENT, (team.id,))
            first = await cursor.fetchone() is not None
        if first:
            log.info("first event ingested for team %s (%s)", team.id, team.uuid)
        self._teams.put(team.id, replace(team, ingested_event=True))

    async def _fetch(self, team_ids: list[int]) -> dict[int, Team]:
        valid = [team_id for team_id in team_ids if _INT4_MIN <= team_id <= _INT4_MAX]
        if not valid:
            return {}
        async with self._pool.connection() as connection:
            cursor = await connection.execute(_SELECT_TEAMS, (valid,))
            rows = await cursor.fetchall()
        return {row["id"]: _team_from_row(row) for row in rows}


@dataclass(frozen=True, slots=True)
class Organization:
    id: str
    name: str
    available_features: tuple[str, ...]
    plugins_access_level: int
    for_internal_metrics: bool


class OrganizationManager:
    """Organization lookups cached for `ttl` seconds; a missing organization is cached as None."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        *,
        ttl: float = 30,
        max_organizations: int = 10_000,
        clock: Clock = time.monotonic,
    ) -> None:
        self._pool = pool
        self._cache: TTLCache[str, Organization | None] = TTLCache(
            maxsize=max_organizations, ttl=ttl, timer=clock
        )

    async def get_organization(self, organization_id: str) -> Organization | None:
        try:
            return self._cache[organization_id]
        except KeyError:
            organization = self._cache[organization_id] = await self._fetch(organization_id)
            return organization

    async def _fetch(self, organization_id: str) -> Organization | None:
        try:
            key = uuid.UUID(organization_id)
        except ValueError:
            return None  # not a uuid, so no such organization (Postgres would reject the query)
        async with self._pool.connection() as connection:
            cursor = await connection.execute(_SELECT_ORGANIZATION, (key,))
            row = await cursor.fetchone()
        if row is None:
            return None
        return Organization(
            id=str(row["id"]),
            name=row["name"],
            available_features=tuple(row["available_features"]),
            plugins_access_level=row["plugins_access_level"],
            for_internal_metrics=row["for_internal_metrics"],
        )
