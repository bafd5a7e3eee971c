"""posthog_event's foreign key to posthog_team, checked once per batch rather than once per row.

The key (`team_id REFERENCES posthog_team`, deferred) makes Postgres queue a trigger for every row a
COPY inserts and run, at commit, `SELECT 1 FROM ONLY posthog_team WHERE id = $1 FOR KEY SHARE` for
each: about 3 µs of its CPU per event, a fifth of what storing an event costs it. A batch's events
belong to a handful of teams. So the batch's transaction takes that lock itself, once per team (the
lock keeps a team from being deleted or its id changed until the commit, as the trigger's does), and
when every team is there, sets `session_replication_role` to `replica` until the commit: Postgres then
queues no such trigger, the way logical replication and pg_restore load rows whose references are known.

Only while that skips nothing else, checked in the same statement for every batch: posthog_event's
only INSERT trigger is this key's (no other foreign key, no trigger of an operator's) and it has no
rules. And only when the database role may set the parameter (a superuser, or a role granted SET on
it, PostgreSQL 15+) and lock posthog_team's rows (UPDATE on it), found out once by trying. Otherwise,
or when a team is missing, Postgres checks each row as before, and a missing team fails the batch as
it always did.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

from psycopg.errors import InsufficientPrivilege

log = logging.getLogger(__name__)

_SKIP_ROW_CHECKS = "SELECT set_config('session_replication_role', 'replica', true)"
# Locking rows takes UPDATE on the table (the key's own check runs as posthog_team's owner).
_MAY_LOCK_TEAMS = "SELECT FROM ONLY posthog_team WHERE false FOR KEY SHARE"
# TRIGGER_TYPE_INSERT is bit 2 of tgtype; `%%` is a `%` for the driver.
LOCK_TEAMS_AND_SKIP_ROW_CHECKS = f"""
{_SKIP_ROW_CHECKS}
WHERE (  -- posthog_event's INSERT triggers are the team key's one
    SELECT array_agg(tgconstraint) FROM pg_trigger
    WHERE tgrelid = 'posthog_event'::regclass AND tgtype & 4 <> 0
) = (
    SELECT array_agg(oid) FROM pg_constraint
    WHERE conrelid = 'posthog_event'::regclass AND contype = 'f' AND confrelid = 'posthog_team'::regclass
        AND pg_get_constraintdef(oid) LIKE 'FOREIGN KEY (team_id) REFERENCES %%posthog_team(id)%%'
)
AND NOT EXISTS (SELECT FROM pg_rewrite WHERE ev_class = 'posthog_event'::regclass)  -- no rules
AND (  -- every team is there, locked as the key's own check locks it
    SELECT count(*) FROM (SELECT FROM ONLY posthog_team WHERE id = ANY(%(teams)s) FOR KEY SHARE) AS locked
) = %(count)s
"""


class TeamReferences:
    """Transactions for writing events, with their teams' references checked once per batch where the
    database allows it (see the module's docstring)."""

    def __init__(self) -> None:
        self._permitted: bool | None = None  # whether the role may set the parameter and lock teams

    @contextlib.asynccontextmanager
    async def writing_events(self, connection: Any, team_ids: Iterable[int]) -> AsyncIterator[bool]:
        """Where to write events of `team_ids`: a transaction with the teams locked and the per-row
        checks off (yields True), or, where that cannot be done, a transaction with them on or, when
        the role may not set the parameter, autocommit as before (False)."""
        if not await self._may_skip_row_checks(connection):
            yield False
            return
        teams = sorted(set(team_ids))
        async with connection.transaction():
            cursor = await connection.execute(
                LOCK_TEAMS_AND_SKIP_ROW_CHECKS, {"teams": teams, "count": len(teams)}
            )
            yield await cursor.fetchone() is not None

    async def _may_skip_row_checks(self, connection: Any) -> bool:
        if self._permitted is None:
            try:
                async with connection.transaction():  # the setting ends with it
                    await connection.execute(_SKIP_ROW_CHECKS)
                    await connection.execute(_MAY_LOCK_TEAMS)
                self._permitted = True
            except InsufficientPrivilege:
                log.info(
                    "the database role may not set session_replication_role or lock posthog_team's "
                    "rows: posthog_event's team key is checked row by row"
                )
                self._permitted = False
        return self._permitted
