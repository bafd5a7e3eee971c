"""Generated capture requests, end to end on real Postgres and Redis: every event sent is either
refused at the door with a 4xx, or stored exactly once in the team of its token. Never a 5xx, never
a dead letter, never a row in another team.

Requests carry what clients get wrong or try on purpose: NUL characters and lone surrogates
anywhere, over-long and odd distinct ids, the server's own fields (`team_id`, `ip`, `now`...) in the
event, `$ip` properties, odd timestamps, session recordings, aliases and groups, deep nesting; sent
as JSON, gzip, lz64 or a base64 form.
"""

from __future__ import annotations

import base64
import gzip
import json
import uuid
from typing import Any

import psycopg
import redis.asyncio as aioredis
from hypothesis import event as event_kind
from hypothesis import given
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool

from plugin_server.db.teams import CreatedTeam, create_organization_and_team
from tests.integration.test_capture_api import QUEUE, api
from tests.integration.test_pipeline import pipeline
from tests.strategies import ENCODINGS, EVENT, OTHER_TEAM, on_services
from tests.unit.web.lz import lz64

Db = psycopg.Connection[Any]


def _request(client: Any, payload: Any, encoding: str, token: str) -> Any:
    text = json.dumps(payload)  # ASCII: lone surrogates written as \\udXXX escapes, as JS writes them
    if encoding == "json":
        return client.post(
            f"/batch?token={token}", content=text, headers={"Content-Type": "application/json"}
        )
    if encoding == "gzip":
        return client.post(f"/e?token={token}&compression=gzip-js", content=gzip.compress(text.encode()))
    if encoding == "lz64":
        return client.post("/e", data={"data": lz64(text), "compression": "lz64", "token": token})
    return client.post("/track", data={"data": base64.b64encode(text.encode()).decode(), "token": token})


@on_services(max_examples=150)
@given(events=st.lists(EVENT, min_size=1, max_size=4), encoding=ENCODINGS)
async def test_every_event_is_refused_or_stored_once_in_its_tokens_team(
    pool: AsyncConnectionPool[Any],
    aredis: aioredis.Redis,
    clean_db: Db,
    team: CreatedTeam,
    events: list[dict[str, Any]],
    encoding: str,
) -> None:
    if not clean_db.execute("SELECT 1 FROM posthog_team WHERE id = %s", (OTHER_TEAM,)).fetchone():
        create_organization_and_team(clean_db, team_id=OTHER_TEAM, team_name="other")
    for event in events:  # a uuid per event to find it by (unless the case is about the uuid)
        event.setdefault("uuid", str(uuid.uuid4()))
    await aredis.delete(QUEUE)

    async with api(pool, aredis) as client:
        response = await _request(client, events, encoding, team.api_token)

    messages = list(reversed(await aredis.lrange(QUEUE, 0, -1)))
    event_kind(f"{response.status_code} {response.json().get('attr') or ''}")
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        assert response.status_code in (400, 401, 413), response.text
        assert response.json()["detail"]
        assert messages == []  # all or nothing
        return
    assert len(messages) == len(events)
    outcome = await pipeline(pool).run(messages)
    assert outcome.dead_letters == [], outcome.dead_letters[0].reason
    assert outcome.stored == len(events)
    uuids = [str(uuid.UUID(str(event["uuid"]))) for event in events if _is_uuid(event.get("uuid"))]
    rows = clean_db.execute(
        "SELECT team_id FROM posthog_event WHERE uuid = ANY(%s::uuid[])"
        " UNION ALL SELECT team_id FROM posthog_sessionrecordingevent WHERE uuid = ANY(%s::uuid[])",
        (uuids, uuids),
    ).fetchall()
    assert sorted(row[0] for row in rows) == [team.team_id] * len(uuids)
    other_teams = "SELECT count(*) FROM {} WHERE team_id <> %s"
    for table in ("posthog_event", "posthog_sessionrecordingevent", "posthog_person"):
        assert clean_db.execute(other_teams.format(table), (team.team_id,)).fetchone() == (0,)


def _is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return value is not None and value != ""
