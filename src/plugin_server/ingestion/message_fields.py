"""One raw event from a queued message's fields and its `data`, with the server's fields winning.

A queued event carries fields that whoever queued it decided (`distinct_id`, `ip`, `site_url`,
`team_id`, `now`, `sent_at`, `uuid`: the Celery task arguments, the Kafka message's keys) and `data`,
the client's event as sent. The original merged `data` over the fields, so a client that put
`"team_id": 3` in its event wrote into team 3 whatever its token was. Here:

- `team_id`, `ip`, `site_url`, `now`, `sent_at` and `distinct_id` come from the message's fields only;
  the copies in `data` are dropped (capture computed them from the token, the connection and the
  event, and truncated the distinct id).
- `uuid` comes from the fields when they carry one (Kafka), else from `data` (our Celery messages,
  whose task arguments have no uuid slot), else it is derived by the caller.
- A `$ip` property from the client is dropped when the message carries an ip, so the connection's ip
  (after TRUSTED_PROXIES) is the one stored; without an ip (the team anonymizes ips, or a plugin's
  `posthog.capture`) a `$ip` property stays, and the team's anonymize_ips setting removes it later.
- Everything else (`event`, `properties`, `timestamp`, `offset`, `$set`, `$set_once`...) is `data`'s.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from plugin_server.ingestion.short_text_cache import cache_short_texts
from plugin_server.ingestion.storable import int_like_orjson, may_need_scrubbing, scrub
from plugin_server.ingestion.types import RawEvent

SERVER_FIELDS = ("distinct_id", "ip", "site_url", "team_id", "now", "sent_at")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


class MalformedMessage(ValueError):
    """A queue message that can never be processed; the text is the reason."""


def raw_event(fields: Mapping[str, Any], data: Mapping[str, Any]) -> RawEvent:
    """The raw event of one message: `data` without the server's fields, then the server's fields."""
    event: RawEvent = client_fields(data)
    if fields.get("uuid") or "uuid" not in event:
        event["uuid"] = fields.get("uuid")
    for name in SERVER_FIELDS:
        event[name] = fields.get(name)
    if fields.get("ip"):
        properties = event.get("properties")
        if isinstance(properties, dict):
            event["properties"] = without_ip_property(properties)
    return event


def client_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """`data` without the client's copies of the server's fields."""
    fields = dict(data)
    for name in SERVER_FIELDS:  # six lookups, rather than a test of every key of `data`
        fields.pop(name, None)
    return fields


def without_ip_property(properties: dict[str, Any]) -> dict[str, Any]:
    """`properties` without a client's `$ip` (the same dict when it has none)."""
    if "$ip" not in properties:
        return properties
    return {key: value for key, value in properties.items() if key != "$ip"}


def read_json(text: bytes | str, what: str) -> Any:
    """A message's JSON, with NUL characters and lone surrogates scrubbed (they cannot be stored; see `storable`)."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        # Python producers may write NaN/Infinity and lone surrogates, which orjson rejects; the
        # standard parser reads them.
        try:
            value = json.loads(text, parse_int=int_like_orjson)
        except (ValueError, RecursionError) as error:  # also UnicodeDecodeError
            raise MalformedMessage(f"{what} is not valid JSON ({error})") from None
        return scrub(value)
    if isinstance(text, str):
        if "\\" not in text:  # no escape at all (most texts): no need to encode it for the check
            return value
        text = text.encode()
    return scrub(value) if may_need_scrubbing(text) else value


def distinct_id_text(value: Any) -> str:
    """The distinct id as text, the way the original's `toString()` printed JSON scalars."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return str(value)
    raise MalformedMessage(f"distinct_id {value!r} is not a string or a number")


@cache_short_texts  # the events of one request share their `now`
def parse_now(now: Any) -> datetime | None:
    """The task's `now` argument (ISO 8601, naive means UTC) as an aware time; None when unreadable."""
    if not isinstance(now, str):
        return None
    try:
        moment = datetime.fromisoformat(now)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


@cache_short_texts  # derived uuids need it for every event; the arithmetic cost more than the parse
def unix_ms(now: Any) -> int:
    """`now` in unix milliseconds, 0 when it cannot be read."""
    moment = parse_now(now)
    return 0 if moment is None else (moment - _EPOCH) // _MILLISECOND
