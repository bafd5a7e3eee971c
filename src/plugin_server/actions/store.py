"""Every team's actions, held in memory per worker as the original's ActionManager held them.

Loaded whole at start and every 5 minutes; one action is fetched again on a `reload-action` pub/sub
message and dropped on `drop-action` (both carry `{"teamId": ..., "actionId": ...}`). A team's actions
are compiled for matching when first needed after a change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

import orjson
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from plugin_server.actions.matcher import TeamActions
from plugin_server.actions.models import Action, action_from_row

log = logging.getLogger(__name__)

RELOAD_ACTION_CHANNEL = "reload-action"
DROP_ACTION_CHANNEL = "drop-action"
RELOAD_ALL_SECONDS = 300.0

_SELECT_ACTIONS = """
SELECT a.id, a.team_id, a.name, a.post_to_slack, a.slack_message_format,
       COALESCE(json_agg(to_jsonb(s)) FILTER (WHERE s.id IS NOT NULL), '[]') AS steps
FROM posthog_action a LEFT JOIN posthog_actionstep s ON s.action_id = a.id
WHERE NOT a.deleted {where}
GROUP BY a.id
"""

_NO_ACTIONS = TeamActions(())


class ActionStore:
    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self._pool = pool
        self._actions: dict[int, dict[int, Action]] = {}
        self._compiled: dict[int, TeamActions] = {}
        self._loaded = False

    async def reload_all(self) -> None:
        actions: dict[int, dict[int, Action]] = {}
        for action in await self._fetch(""):
            actions.setdefault(action.team_id, {})[action.id] = action
        self._actions, self._compiled, self._loaded = actions, {}, True
        log.debug("loaded %d actions of %d teams", sum(map(len, actions.values())), len(actions))

    async def reload_action(self, team_id: int, action_id: int) -> None:
        """Fetch one action again; one that is gone or deleted leaves the cache."""
        found = await self._fetch("AND a.id = %s", (action_id,))
        self.drop_action(team_id, action_id)
        for action in found:
            self._actions.setdefault(action.team_id, {})[action.id] = action
            self._compiled.pop(action.team_id, None)

    def drop_action(self, team_id: int, action_id: int) -> None:
        if self._actions.get(team_id, {}).pop(action_id, None) is not None:
            self._compiled.pop(team_id, None)

    async def for_teams(self, team_ids: Iterable[int]) -> dict[int, TeamActions]:
        """The compiled actions of each team (a team without actions gets an empty set)."""
        if not self._loaded:
            await self.reload_all()
        return {team_id: self._team(team_id) for team_id in team_ids}

    def _team(self, team_id: int) -> TeamActions:
        compiled = self._compiled.get(team_id)
        if compiled is None:
            actions = self._actions.get(team_id)
            compiled = TeamActions(actions.values()) if actions else _NO_ACTIONS
            self._compiled[team_id] = compiled
        return compiled

    async def _fetch(self, where: str, params: tuple[Any, ...] = ()) -> list[Action]:
        async with self._pool.connection() as connection:
            cursor = await connection.execute(_SELECT_ACTIONS.format(where=where), params)
            rows = await cursor.fetchall()
        return [action_from_row(row) for row in rows]

    async def keep_fresh(self, redis: aioredis.Redis) -> None:
        """Apply reload/drop messages as they come, and reload everything every 5 minutes (forever)."""
        await asyncio.gather(self._listen(redis), self._reload_periodically())

    async def _reload_periodically(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_ALL_SECONDS)
            try:
                await self.reload_all()
            except Exception as error:
                log.error("reloading actions failed (%s); keeping the ones loaded", error)

    async def _listen(self, redis: aioredis.Redis) -> None:
        while True:
            try:
                async with redis.pubsub() as pubsub:
                    await pubsub.subscribe(RELOAD_ACTION_CHANNEL, DROP_ACTION_CHANNEL)
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            await self.apply_message(message["channel"], message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.error("action reload listener failed (%s); subscribing again", error)
                await asyncio.sleep(1.0)

    async def apply_message(self, channel: bytes | str, data: bytes | str) -> None:
        """Handle one `reload-action` or `drop-action` message; a malformed one is logged and skipped."""
        name = channel.decode() if isinstance(channel, bytes) else channel
        try:
            body = orjson.loads(data)
            team_id, action_id = int(body["teamId"]), int(body["actionId"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("ignoring malformed %s message %.200r", name, data)
            return
        if name == DROP_ACTION_CHANNEL:
            self.drop_action(team_id, action_id)
        else:
            await self.reload_action(team_id, action_id)
