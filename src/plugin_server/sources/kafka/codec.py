"""The JSON messages of events_plugin_ingestion, as PostHog capture wrote them in 2021
(`{uuid, distinct_id, ip, site_url, data, team_id, now, sent_at}`, `data` a JSON string) and as
today's capture writes them (a `token` instead of `team_id`, plus `event` and `timestamp` copies).

The raw event is built by `message_fields.raw_event`, as for Celery: the message's fields win over
the client's copies in `data`. A token is resolved to its team through the team manager; a message
with neither a team id nor a known token cannot be ingested (a dead letter).
"""

from __future__ import annotations

import hashlib
from typing import Any

from plugin_server.ingestion.message_fields import (
    MalformedMessage,
    distinct_id_text,
    raw_event,
    read_json,
    unix_ms,
)
from plugin_server.ingestion.teams import TeamManager
from plugin_server.ingestion.types import RawEvent
from plugin_server.ingestion.uuidt import uuidt_for_message
from plugin_server.jobs.queue import PluginJob


class KafkaCodec:
    def __init__(self, teams: TeamManager) -> None:
        self._teams = teams

    async def decode(self, message: bytes) -> RawEvent | PluginJob:
        fields, data = _fields_and_data(message)
        if fields.get("team_id") is None:
            token = fields.get("token")
            if not isinstance(token, str) or not token:
                raise MalformedMessage("message has neither a team_id nor a token")
            team = await self._teams.get_team_by_token(token)
            if team is None:
                raise MalformedMessage(f"no team has the token {token!r}")
            fields["team_id"] = team.id
        event = _event(fields, data, message)
        team_id = event["team_id"]
        if not isinstance(team_id, int) or isinstance(team_id, bool):
            raise MalformedMessage(f"team_id {team_id!r} is not an integer")
        return event

    def peek(self, message: bytes) -> RawEvent | None:
        try:
            return _event(*_fields_and_data(message), message)
        except (MalformedMessage, ValueError, TypeError):
            return None


def _fields_and_data(message: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    fields = read_json(message, "message")
    if not isinstance(fields, dict):
        raise MalformedMessage(f"message is a JSON {type(fields).__name__}, not an object")
    data = fields.get("data")
    if isinstance(data, str):
        data = read_json(data, "event data")
    if not isinstance(data, dict):
        raise MalformedMessage(f"event data is a {type(data).__name__}, not an object")
    return fields, data


def _event(fields: dict[str, Any], data: dict[str, Any], message: bytes) -> RawEvent:
    event = raw_event(fields, data)
    event["distinct_id"] = distinct_id_text(event["distinct_id"])
    if not event["uuid"]:  # derived from the message, so a redelivered message keeps its uuid
        digest = hashlib.sha256(message).hexdigest()
        event["uuid"] = uuidt_for_message(unix_ms(event["now"]), digest)
    return event
