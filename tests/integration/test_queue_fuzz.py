"""Generated queue messages through the worker's batch path on real Postgres: nothing raises, nothing
is lost. A message whose task arguments are well formed (as PostHog's capture writes them, whatever
the client put in `data`) is stored, in the team of its `team_id` argument; anything else (corrupt
envelopes, wrong argument types) becomes a dead letter with a reason.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import orjson
import psycopg
from hypothesis import given
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool

from plugin_server.db.teams import CreatedTeam
from plugin_server.ingestion.batches import process_until_done
from plugin_server.ingestion.celery import PROCESS_EVENT_TASK, encode_task
from plugin_server.ingestion.ordering import Turnstile
from tests.integration.test_pipeline import pipeline
from tests.strategies import EVENT, SCALAR, on_services

Db = psycopg.Connection[Any]
NOW = "2021-11-28T10:00:00.000Z"

# Any JSON scalar a producer could write as a task argument (orjson writes integers up to 64 bits).
_ARG = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(), st.text(max_size=8))
_DISTINCT_ID = st.one_of(st.text(min_size=1, max_size=250), st.integers(-(2**63), 2**63 - 1))
# Nesting past what orjson writes (254 levels) cannot be stored from any source: capture refuses it
# (test_capture_fuzz), a queue message holding it is a dead letter; these events leave it out.
_SHALLOW_EVENT = EVENT.map(
    lambda event: {**event, "properties": {k: v for k, v in event["properties"].items() if k != "deep"}}
)
_WELL_FORMED = st.tuples(
    _DISTINCT_ID,
    st.one_of(st.none(), st.ip_addresses().map(str)),
    st.sampled_from([None, "http://x"]),
    _SHALLOW_EVENT,
)


def _message(distinct_id: Any, ip: Any, site_url: Any, data: Any, team_id: Any, event_uuid: str) -> bytes:
    """A task as a Python producer writes it (lone surrogates as `\\udXXX` escapes, which orjson cannot)."""
    data = {**data, "uuid": event_uuid} if isinstance(data, dict) else data
    envelope = orjson.loads(encode_task(PROCESS_EVENT_TASK, [], queue="q"))
    body = json.dumps([[distinct_id, ip, site_url, data, team_id, NOW, NOW], {}, {}])
    envelope["body"] = base64.b64encode(body.encode()).decode()
    return orjson.dumps(envelope)


def _corrupt(message: bytes, how: int, junk: bytes) -> bytes:
    """A message broken one way: its JSON, its base64 body, its body's JSON, or replaced by junk."""
    envelope = orjson.loads(message)
    if how == 0:
        return message[: len(message) // 2]
    if how == 1:
        envelope["body"] = "%%" + envelope["body"]
    elif how == 2:
        envelope["body"] = base64.b64encode(junk).decode()
    else:
        return junk
    return orjson.dumps(envelope)


@on_services(max_examples=40)
@given(
    good=st.lists(_WELL_FORMED, max_size=4),
    odd_arguments=st.lists(st.tuples(SCALAR, SCALAR, SCALAR, st.one_of(SCALAR, EVENT), SCALAR), max_size=2),
    corrupt=st.lists(st.tuples(st.integers(0, 3), st.binary(max_size=40)), max_size=2),
)
async def test_every_message_is_stored_or_dead_lettered(
    pool: AsyncConnectionPool[Any],
    clean_db: Db,
    team: CreatedTeam,
    good: list[tuple[Any, Any, Any, dict[str, Any]]],
    odd_arguments: list[tuple[Any, Any, Any, Any, Any]],
    corrupt: list[tuple[int, bytes]],
) -> None:
    good_uuids = [str(uuid.uuid4()) for _ in good]
    messages = [
        _message(distinct_id, ip, site_url, data, team.team_id, event_uuid)
        for (distinct_id, ip, site_url, data), event_uuid in zip(good, good_uuids, strict=True)
    ]
    messages += [_message(*arguments, str(uuid.uuid4())) for arguments in odd_arguments]
    template = _message("d", None, None, {"event": "e"}, team.team_id, str(uuid.uuid4()))
    messages += [_corrupt(template, how, junk) for how, junk in corrupt]

    outcome = await process_until_done(pipeline(pool), messages, Turnstile().ticket())

    assert outcome.stored + len(outcome.dead_letters) == len(messages)
    assert all(reason for _, reason in outcome.dead_letters)
    stored = clean_db.execute(
        "SELECT uuid::text FROM posthog_event WHERE uuid = ANY(%s::uuid[])"
        " UNION ALL SELECT uuid::text FROM posthog_sessionrecordingevent WHERE uuid = ANY(%s::uuid[])",
        (good_uuids, good_uuids),
    ).fetchall()
    assert sorted(row[0] for row in stored) == sorted(good_uuids), [
        reason for _, reason in outcome.dead_letters
    ]
