"""PostHog's per-event ingestion rules that need no database (reference section 4.2).

`prepare_event` runs once per event on the hot path, so it copies only what it changes and uses no
regular expression (the uuid's text is checked in C, `_uuid_text.c`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

from plugin_server.ingestion._event_properties import campaign_and_initial
from plugin_server.ingestion._uuid_text import is_uuid_text
from plugin_server.ingestion.elements import elements_from_properties
from plugin_server.ingestion.short_text_cache import cache_short_texts
from plugin_server.ingestion.storable import MAX_DISTINCT_ID_LENGTH
from plugin_server.ingestion.types import Element, InvalidEvent, PreparedEvent, RawEvent
from plugin_server.jsvalues import js_string

EVENT_NAME_LIMIT = 200
SITE_URL_LIMIT = 200  # posthog_event.site_url is varchar(200)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Rule 11: distinct ids that stem from a bug or mistake, so aliasing on them would merge strangers.
_ILLEGAL_IDS_ANY_CASE = frozenset(
    {
        "anonymous",
        "guest",
        "distinctid",
        "distinct_id",
        "id",
        "not_authenticated",
        "email",
        "undefined",
        "true",
        "false",
    }
)
_ILLEGAL_IDS_EXACT = frozenset({"[object Object]", "NaN", "None", "none", "null", "0"})

# Rules 25-26: campaign keys go to $set; these and the browser keys go to $set_once as $initial_<key>.
_CAMPAIGN_KEYS = ("utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term", "gclid")
_CAMPAIGN_PAIRS = tuple((key, key) for key in _CAMPAIGN_KEYS)  # each kept under its own name
_INITIAL_KEYS = tuple(
    (key, "$initial_" + key.replace("$", "", 1))
    for key in (
        *_CAMPAIGN_KEYS,
        "$browser",
        "$browser_version",
        "$device_type",
        "$current_url",
        "$os",
        "$referring_domain",
        "$referrer",
    )
)


def _to_utc_ms(value: datetime) -> datetime | None:
    """Aware UTC at millisecond precision, the precision of the original's JS dates (naive = UTC)."""
    zone = value.tzinfo
    if zone is None:
        value = value.replace(tzinfo=UTC)
    elif zone is not UTC:
        try:
            value = value.astimezone(UTC)
        except OverflowError:
            return None
    micro = value.microsecond
    if micro % 1000:
        value = value.replace(microsecond=micro - micro % 1000)
    return value


def _parse_lenient(text: str) -> datetime | None:
    """What `fromisoformat` refuses but the original's date parsers accept: surrounding spaces,
    a lower-case 't' or 'z', and RFC 2822 dates."""
    cleaned = text.strip().upper()
    if cleaned != text:
        try:
            return datetime.fromisoformat(cleaned)
        except ValueError:
            pass
    try:
        return parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None


def parse_timestamp(value: object) -> datetime | None:
    """An ISO 8601 string (offset, 'Z' or none = UTC; date only; any fraction length), a datetime,
    or a number of epoch milliseconds (as `new Date(n)`), as an aware UTC datetime; None if invalid."""
    if isinstance(value, str):
        return _parse_text(value)
    return _parse_other(value)


def _parse_other(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return _to_utc_ms(value)
    if type(value) is int or type(value) is float:
        try:
            return _EPOCH + timedelta(milliseconds=int(value))
        except (ValueError, OverflowError):  # NaN, infinity, out of range
            return None
    return None


def _parse_text(text: str) -> datetime | None:
    try:
        parsed: datetime | None = datetime.fromisoformat(text)
    except ValueError:
        parsed = _parse_lenient(text)
    if parsed is None:
        return None
    if parsed.tzinfo is UTC and not parsed.microsecond % 1000:
        return parsed  # what JavaScript clients send ('Z', milliseconds): _to_utc_ms would change nothing
    return _to_utc_ms(parsed)


# `parse_timestamp` for the times that the events of one request share (`now`, `sent_at`): their texts
# are parsed once. (An event's own timestamp is seldom another's: caching it would only cost.)
_parse_shared = cache_short_texts(parse_timestamp)


def _current_time() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond - now.microsecond % 1000)


def _event_timestamp(raw: RawEvent, now: datetime, sent_at: datetime | None) -> datetime:
    """Rules 6-9. A timestamp that cannot be read counts as absent, so offset or now applies."""
    given = raw.get("timestamp")
    if given:  # as in the original, '' and 0 mean no timestamp
        timestamp = parse_timestamp(given)
        if timestamp is not None:
            if sent_at is not None:
                try:
                    return now + (timestamp - sent_at)  # the client's clock skew, corrected
                except OverflowError:
                    pass  # rule 6: fall back to the timestamp as given
            return timestamp
    offset = raw.get("offset")
    if offset and (type(offset) is int or type(offset) is float):
        try:
            return now - timedelta(milliseconds=offset)
        except (ValueError, OverflowError):
            pass
    return now


def _name_text(name: object) -> str:
    """Rule 4: a name that is not a string is written as JSON (JSON.stringify); prepare_event cuts it."""
    try:
        return json.dumps(name, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        return js_string(name)


def _team_id_of(value: object) -> int:
    """A team id that did not come as an int: the digits of a string, or InvalidEvent."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    raise InvalidEvent(f"Not a valid team id: {value!r}")


def _merge_top_level_set(properties: dict[str, Any], raw: RawEvent, key: str) -> None:
    """Rule 2: top-level `$set`/`$set_once` merged over the properties' own, top-level values winning."""
    given = raw.get(key)
    if isinstance(given, dict):
        inner = properties.get(key)
        properties[key] = {**inner, **given} if isinstance(inner, dict) else dict(given)


def prepare_event(raw: RawEvent) -> PreparedEvent:
    """Apply rules 1-10 to a raw event, without changing `raw` or anything inside it.

    The properties are a shallow copy: nested values are shared with `raw`, except a `$set` or
    `$set_once` that was merged, which is a new dict. Later steps replace nested values, never edit them.

    Raises InvalidEvent for a bad uuid or team id, a missing distinct_id or event name, or
    properties that are not an object.
    """
    uuid = raw.get("uuid")
    if not is_uuid_text(uuid):  # 8-4-4-4-12 hex digits of either case
        raise InvalidEvent(f'Not a valid UUID: "{js_string(uuid)}"')
    team_id = raw.get("team_id")
    if type(team_id) is not int:  # the common case tested here: a call less for every event
        team_id = _team_id_of(team_id)
    distinct_id = raw.get("distinct_id")
    if distinct_id is None:
        raise InvalidEvent("The event has no distinct_id")
    if "event" not in raw:
        raise InvalidEvent("The event has no name")

    given_properties = raw.get("properties")
    if given_properties is None:
        properties: dict[str, Any] = {}
    elif isinstance(given_properties, dict):
        properties = given_properties.copy()
    else:
        raise InvalidEvent(f"The event properties are not an object: {type(given_properties).__name__}")
    if "$set" in raw:
        _merge_top_level_set(properties, raw, "$set")
    if "$set_once" in raw:
        _merge_top_level_set(properties, raw, "$set_once")

    elements: list[Element] = []
    raw_elements = properties.get("$elements")
    if raw_elements and isinstance(raw_elements, list):
        del properties["$elements"]
        elements = elements_from_properties(raw_elements)

    now = _parse_shared(raw.get("now")) or _current_time()
    sent_at = _parse_shared(raw.get("sent_at"))
    ip = raw.get("ip")
    site_url = raw.get("site_url")
    name = raw["event"]
    if not isinstance(name, str):
        name = _name_text(name)
    if type(distinct_id) is not str:  # text, the common case, tested here: a call less for every event
        distinct_id = js_string(distinct_id)
    # Positional, in the fields' order: a call with keywords costs more, and this runs for every event.
    return PreparedEvent(
        uuid,
        team_id,
        # Cut to their columns, as PostHog's capture cut them (a message may come from elsewhere).
        distinct_id[:MAX_DISTINCT_ID_LENGTH],  # distinct_id
        ip if isinstance(ip, str) and ip else None,  # ip
        site_url[:SITE_URL_LIMIT] if isinstance(site_url, str) else None,  # site_url
        name[:EVENT_NAME_LIMIT],  # event (rule 4: cut to 200 characters)
        properties,
        _event_timestamp(raw, now, sent_at),  # timestamp
        now,
        sent_at,
        elements,
    )


def apply_ip(properties: dict[str, Any], ip: str | None, anonymize_ips: bool) -> None:
    """Rule 22: add the request ip as `$ip` unless the event has one. A team that anonymizes ips
    stores no `$ip` at all (the original kept one the client sent, around the team's setting)."""
    if anonymize_ips:
        properties.pop("$ip", None)
    elif ip and "$ip" not in properties:
        properties["$ip"] = ip


def add_campaign_and_initial_properties(properties: dict[str, Any]) -> None:
    """Rules 25-26: campaign keys into `$set`, campaign and browser keys into `$set_once` as
    `$initial_<key>`, both overriding what the event set. The `$set` dicts are replaced, not changed.
    In C (_event_properties.c): in Python, looking at the 20 keys cost 1.25 µs per event."""
    campaign_and_initial(properties, _CAMPAIGN_PAIRS, _INITIAL_KEYS)


def is_illegal_distinct_id(distinct_id: str) -> bool:
    """Rule 11: ids too generic to alias or merge on (the event itself is still ingested)."""
    return (
        not distinct_id.strip()
        or distinct_id.lower() in _ILLEGAL_IDS_ANY_CASE
        or distinct_id in _ILLEGAL_IDS_EXACT
    )


def _as_utc(value: datetime) -> datetime:
    zone = value.tzinfo
    if zone is UTC:
        return value
    return value.replace(tzinfo=UTC) if zone is None else value.astimezone(UTC)


def format_clickhouse_timestamp(value: datetime) -> str:
    """`yyyy-MM-dd HH:mm:ss.SSS` in UTC (naive = UTC): the timestamp text the original sent to ClickHouse."""
    return _as_utc(value).isoformat(" ", "milliseconds")[:23]


def format_iso(value: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and 'Z', like JavaScript's toISOString (naive = UTC)."""
    return _as_utc(value).isoformat("T", "milliseconds")[:23] + "Z"
