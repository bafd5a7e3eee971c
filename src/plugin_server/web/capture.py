"""From a decoded capture request to the events to enqueue, with PostHog capture's rules.

Shapes: one event, a list of events, or `{"batch": [...]}` (posthog-python, posthog-node). The
project token comes from the query (`token`, `api_key`), the form, the batch wrapper, or else each
event (`$token`, `token`, `api_key`, `properties.token`). The whole request is checked before any
event is queued: one bad event refuses all of them.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from plugin_server.ingestion.enqueue import CapturedEvent
from plugin_server.ingestion.message_fields import client_fields, without_ip_property
from plugin_server.ingestion.storable import MAX_DISTINCT_ID_LENGTH, unstorable_text
from plugin_server.ingestion.types import Team
from plugin_server.ingestion.uuidt import uuidt
from plugin_server.web.payload import CaptureError, CaptureInput

TeamByToken = Callable[[str], Awaitable[Team | None]]

MAX_TOKEN_LENGTH = 200  # posthog_team.api_token is varchar(200)
_DIGITS = re.compile(r"^[0-9]+$")
# A uuid as str(uuid.UUID(...)) writes it: what the SDKs send, kept as it is without parsing it.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


async def captured_events(
    received: CaptureInput,
    *,
    team_by_token: TeamByToken,
    ip: str | None,
    site_url: str,
    now: datetime | None = None,
) -> list[CapturedEvent]:
    """Every event of the request ready to enqueue, or a CaptureError for the whole request."""
    events = events_of(received.payload)
    shared_token = request_token(received)
    # A token given once for the request (a /batch/'s api_key) is every event's: resolved once.
    shared_team = await _team_or_refusal(shared_token, team_by_token) if shared_token else None
    sent_at = sent_at_of(received)
    now_text = (now or datetime.now(UTC)).isoformat()
    teams: dict[str | None, Team] = {}
    captured = []
    for event in events:
        if (team := shared_team) is None:
            token = event_token(event)
            if (team := teams.get(token)) is None:
                team = teams[token] = await _team_or_refusal(token, team_by_token)
        captured.append(_captured(event, team, ip=ip, site_url=site_url, now=now_text, sent_at=sent_at))
    return captured


async def _team_or_refusal(token: str | None, team_by_token: TeamByToken) -> Team:
    """The team of the token, or the 401 of a missing or unknown token."""
    if not token:
        raise CaptureError(
            401,
            "API key not provided. You can find your project API key in PostHog project settings.",
            code="missing_api_key",
            type="authentication_error",
        )
    team = await _team_of(token, team_by_token)
    if team is None:
        raise CaptureError(
            401,
            "Project API key invalid. You can find your project API key in PostHog project settings.",
            code="invalid_api_key",
            type="authentication_error",
        )
    return team


class Unavailable(Exception):
    """A dependency of capture (the database behind the token lookup) did not answer."""


async def _team_of(token: str, team_by_token: TeamByToken) -> Team | None:
    if len(token) > MAX_TOKEN_LENGTH or unstorable_text(token):
        return None  # no team has such a token; the database is not asked
    try:
        return await team_by_token(token)
    except Exception as error:
        raise Unavailable(f"the project token could not be looked up: {error}") from error


def events_of(payload: Any) -> list[dict[str, Any]]:
    if isinstance(payload, dict) and payload.get("batch"):
        payload = payload["batch"]
    events = payload if isinstance(payload, list) else [payload]
    if not events:
        raise CaptureError(400, "No data found: the batch is empty.", code="no_data")
    for event in events:
        if not isinstance(event, dict):
            raise CaptureError(
                400, f"Invalid payload: an event is a JSON {type(event).__name__}, not an object."
            )
    return events


def request_token(received: CaptureInput) -> str | None:
    """The token given once for the whole request, if any."""
    payload = received.payload
    candidates = [
        received.query.get("token"),
        received.query.get("api_key"),
        received.form.get("api_key"),
        received.form.get("token"),
    ]
    if isinstance(payload, dict) and payload.get("batch"):
        candidates += [payload.get("api_key"), payload.get("token")]
    return _first_token(candidates)


_EVENT_TOKEN_FIELDS = ("$token", "token", "api_key")


def event_token(event: Mapping[str, Any]) -> str | None:
    """The first token of `$token`, `token`, `api_key`, `properties.token`. (posthog-js sends only
    the last: the fields an event lacks cost a membership test each.)"""
    for name in _EVENT_TOKEN_FIELDS:
        if name in event and (token := _token_text(event[name])) is not None:
            return token
    properties = event.get("properties")
    return _token_text(properties.get("token")) if isinstance(properties, dict) else None


def sent_at_of(received: CaptureInput) -> str | None:
    """When the client sent the request (`_` in posthog-js's query, `sent_at` in the body or form).

    Unix seconds or milliseconds, or ISO 8601. An unreadable value is ignored rather than losing
    the events over it: the worker then takes the event timestamps as they are.
    """
    payload = received.payload
    raw = received.query.get("_")
    if not raw and isinstance(payload, dict):
        raw = payload.get("sent_at")
    if not raw:
        raw = received.form.get("sent_at")
    if not raw or not isinstance(raw, str | int):
        return None
    text = str(raw).strip()
    try:
        if _DIGITS.match(text):
            seconds = int(text) / 1000 if len(text) > 11 else int(text)
            return datetime.fromtimestamp(seconds, UTC).isoformat()
        moment = datetime.fromisoformat(text)
    except (ValueError, OverflowError, OSError):
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def distinct_id_of(event: Mapping[str, Any]) -> str:
    """`$distinct_id`, else `properties.distinct_id`, else `distinct_id`; at most 200 characters."""
    properties = event.get("properties")
    if "$distinct_id" in event:
        value = event["$distinct_id"]
    elif isinstance(properties, dict) and "distinct_id" in properties:
        value = properties["distinct_id"]
    elif "distinct_id" in event:
        value = event["distinct_id"]
    else:
        raise CaptureError(
            400, "You need to set user distinct ID field `distinct_id`.", code="required", attr="distinct_id"
        )
    if value is None or value == "" or isinstance(value, dict | list):
        raise CaptureError(
            400,
            "Distinct ID field `distinct_id` must have a non-empty value.",
            code="required",
            attr="distinct_id",
        )
    if isinstance(value, bool):
        value = "true" if value else "false"
    return str(value)[:MAX_DISTINCT_ID_LENGTH]


def _captured(
    event: dict[str, Any], team: Team, *, ip: str | None, site_url: str, now: str, sent_at: str | None
) -> CapturedEvent:
    distinct_id = distinct_id_of(event)
    name = event.get("event")
    if not isinstance(name, str) or not name:
        raise CaptureError(
            400, "You need to set user event name, field `event`.", code="required", attr="event"
        )
    properties = event.get("properties") or {}
    if not isinstance(properties, dict):
        raise CaptureError(400, "Event field `properties` must be an object.", attr="properties")
    event_uuid = _event_uuid(event.get("uuid"))
    # The uuid travels in `data` (Celery task arguments have no slot for it). The fields the server
    # decides are left out of `data`, so no consumer can take the client's copies. The connection's
    # ip is stored, or none: a client's `$ip` is left out (see message_fields).
    data = client_fields(event)
    data["properties"] = without_ip_property(properties)
    data["uuid"] = event_uuid
    return CapturedEvent(
        distinct_id=distinct_id,
        ip=None if team.anonymize_ips else ip,
        site_url=site_url,
        data=data,
        team_id=team.id,
        now=now,
        sent_at=sent_at,
        uuid=event_uuid,
    )


def _event_uuid(given: Any) -> str:
    """The client's uuid when it sent one (its retries then store the event once), else a new UUIDT."""
    if given is None or given == "":
        return uuidt()
    if isinstance(given, str) and _CANONICAL_UUID.fullmatch(given):
        return given
    try:
        return str(uuid.UUID(str(given)))
    except ValueError:
        raise CaptureError(400, f"Event field `uuid` is not a valid UUID: {given!r}.", attr="uuid") from None


def _first_token(candidates: list[Any]) -> str | None:
    for candidate in candidates:
        if (token := _token_text(candidate)) is not None:
            return token
    return None


def _token_text(candidate: Any) -> str | None:
    """A token candidate as a token: a string, stripped, not empty."""
    if isinstance(candidate, str) and (token := candidate.strip()):
        return token
    return None
