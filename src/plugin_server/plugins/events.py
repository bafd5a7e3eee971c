"""Copying events into plugins and checking what plugins give back (shared by every runtime)."""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from plugin_server.ingestion.storable import MAX_DISTINCT_ID_LENGTH, scrub
from plugin_server.ingestion.types import RawEvent
from plugin_server.plugins.instance import PluginError


def copy_event(event: RawEvent) -> RawEvent:
    """A deep copy for a plugin to change freely: if the plugin fails, the original stays untouched."""
    copied: RawEvent = orjson.loads(orjson.dumps(event))
    return copied


def checked_result(before: RawEvent, result: Any, function: str = "processEvent") -> RawEvent | None:
    """What a processEvent returned, if the server can take it; PluginError otherwise.

    A falsy result drops the event (as in the original). A result must be an object with the same
    team_id, a text event name and a distinct_id of at most 200 characters, and nothing that cannot be
    stored: values JSON cannot hold, lone surrogates, NUL characters (see `storable`)."""
    if not result:
        return None
    if not isinstance(result, dict):
        raise PluginError(f"{function} returned {type(result).__name__}, not an event object")
    if result.get("team_id") != before.get("team_id"):
        raise PluginError("Plugin tried to change event.team_id")
    if not isinstance(result.get("event"), str) or not result["event"]:
        raise PluginError(f"{function} returned an event without a name")
    distinct_id = result.get("distinct_id")
    if distinct_id in (None, ""):
        raise PluginError(f"{function} returned an event without a distinct_id")
    if isinstance(distinct_id, str) and len(distinct_id) > MAX_DISTINCT_ID_LENGTH:
        raise PluginError(
            f"{function} returned a distinct_id longer than {MAX_DISTINCT_ID_LENGTH} characters"
        )
    if result.get("uuid") != before.get("uuid") and not _is_uuid(result.get("uuid")):
        raise PluginError(f"{function} set event.uuid to something that is not a UUID")
    try:
        as_json = orjson.dumps(result)
    except TypeError as error:  # also lone surrogates and nesting past orjson's limit
        raise PluginError(f"{function} returned an event that cannot be stored: {error}") from None
    if b"\\u0000" in as_json and scrub(result) != result:  # the text test is quick, may be a false alarm
        raise PluginError(f"{function} returned an event with a NUL character, which cannot be stored")
    return result


def _is_uuid(value: Any) -> bool:
    # Plugins may re-key events on purpose (e.g. a deterministic uuid to deduplicate), but only validly.
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
