"""Generated events_plugin_ingestion messages through the Kafka codec and the pipeline, on real
Postgres: every message is either stored or a dead letter with a reason, never an exception; a
well-formed message is stored exactly once, in the team its `team_id` or `token` names.

Both formats are generated: the 2021 capture's (`team_id`) and today's (`token`), with the server's
fields odd or missing, `data` as a JSON string or an object, and broken messages.
"""

from __future__ import annotations

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
from plugin_server.ingestion.ordering import Turnstile
from plugin_server.sources.kafka.codec import KafkaCodec
from tests.integration.test_pipeline import pipeline
from tests.strategies import EVENT, SCALAR, on_services

Db = psycopg.Connection[Any]
NOW = "2021-11-28T10:00:00.000Z"

# Nesting past what orjson writes cannot be stored from any source (see test_queue_fuzz).
_SHALLOW_EVENT = EVENT.map(
    lambda event: {**event, "properties": {k: v for k, v in event["properties"].items() if k != "deep"}}
)
_DISTINCT_ID = st.one_of(st.text(min_size=1, max_size=250), st.integers(-(2**63), 2**63 - 1))
_WELL_FORMED = st.tuples(
    _DISTINCT_ID,
    st.one_of(st.none(), st.ip_addresses().map(str)),
    _SHALLOW_EVENT,
    st.booleans(),  # by token (today's capture) rather than team id (2021's)
    st.booleans(),  # data as a JSON string (both captures) rather than an object
)
_FIELD_NAMES = st.sampled_from(["team_id", "token", "data", "distinct_id", "now", "sent_at", "ip", "uuid"])


def _message(fields: dict[str, Any], data: Any, data_as_text: bool) -> bytes:
    """A message as capture writes it; lone surrogates as `\\udXXX` escapes, which orjson cannot."""
    return json.dumps({**fields, "data": json.dumps(data) if data_as_text else data}).encode()


def _well_formed(
    team: CreatedTeam, event_uuid: str, distinct_id: Any, ip: Any, data: Any, by_token: bool, as_text: bool
) -> bytes:
    owner = {"token": team.api_token} if by_token else {"team_id": team.team_id}
    fields = {"uuid": event_uuid, "distinct_id": distinct_id, "ip": ip, "site_url": "http://x", "now": NOW}
    return _message({**fields, "sent_at": NOW, **owner}, data, as_text)


def _broken(template: bytes, how: int, field: str, value: Any, junk: bytes) -> bytes:
    """A message broken one way: cut short, one field replaced by any JSON scalar, or junk."""
    if how == 0:
        return template[: len(template) // 2]
    if how == 1:
        return json.dumps({**orjson.loads(template), field: value}).encode()
    return junk


@on_services(max_examples=40)
@given(
    good=st.lists(_WELL_FORMED, max_size=4),
    broken=st.lists(
        st.tuples(st.integers(0, 2), _FIELD_NAMES, SCALAR, st.binary(max_size=40)),
        max_size=3,
    ),
)
async def test_every_kafka_message_is_stored_or_dead_lettered(
    pool: AsyncConnectionPool[Any],
    clean_db: Db,
    team: CreatedTeam,
    good: list[tuple[Any, Any, dict[str, Any], bool, bool]],
    broken: list[tuple[int, str, Any, bytes]],
) -> None:
    good_uuids = [str(uuid.uuid4()) for _ in good]
    messages = [
        _well_formed(team, event_uuid, *arguments)
        for arguments, event_uuid in zip(good, good_uuids, strict=True)
    ]
    template = _well_formed(team, str(uuid.uuid4()), "d", None, {"event": "e"}, False, True)
    messages += [_broken(template, *arguments) for arguments in broken]
    ingestion = pipeline(pool)
    ingestion.codec = KafkaCodec(ingestion.teams)

    outcome = await process_until_done(ingestion, messages, Turnstile().ticket())

    assert outcome.stored + len(outcome.dead_letters) == len(messages)
    assert all(reason for _, reason in outcome.dead_letters)
    stored = clean_db.execute(
        "SELECT uuid::text, team_id FROM posthog_event WHERE uuid = ANY(%s::uuid[])"
        " UNION ALL SELECT uuid::text, team_id FROM posthog_sessionrecordingevent"
        " WHERE uuid = ANY(%s::uuid[])",
        (good_uuids, good_uuids),
    ).fetchall()
    reasons = [reason for _, reason in outcome.dead_letters]
    assert sorted(row[0] for row in stored) == sorted(good_uuids), reasons
    assert {row[1] for row in stored} <= {team.team_id}
