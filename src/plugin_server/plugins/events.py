"""Copying events into plugins and checking what plugins give back (shared by every runtime)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import orjson

from plugin_server.ingestion.storable import BACKSLASH, MAX_DISTINCT_ID_LENGTH, scrub
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
    event = _checked_fields(before, result, function)
    if event is None:
        return None
    try:
        as_json = orjson.dumps(event)
    except TypeError as error:  # also lone surrogates and nesting past orjson's limit
        raise PluginError(f"{function} returned an event that cannot be stored: {error}") from None
    _check_no_nul(event, as_json, function)
    return event


def checked_json_results(
    befores: Sequence[RawEvent], results: Sequence[Any], function: str = "processEvent"
) -> list[RawEvent | PluginError | None]:
    """checked_result of each result (or the PluginError it raises), for results parsed from JSON text
    with orjson, which holds JSON values and no lone surrogate: what costs most, writing each result
    as JSON for what may still not be stored (nesting past orjson's limit, NUL characters), is done
    once for them all, and one by one only when that finds something."""
    try:
        whole: bytes | None = orjson.dumps(results)
    except TypeError:
        whole = None
    each = checked_result if whole is None or _may_hold_nul(whole) else _checked_fields
    outcomes: list[RawEvent | PluginError | None] = []
    for before, result in zip(befores, results, strict=True):
        try:
            outcomes.append(each(before, result, function))
        except PluginError as error:
            outcomes.append(error)
    return outcomes


def _checked_fields(before: RawEvent, result: Any, function: str) -> RawEvent | None:
    """The result if it is an event of the same team with a name, a distinct_id and a uuid."""
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
    return result


def _may_hold_nul(as_json: bytes) -> bool:
    """Whether JSON text may spell a NUL character (a backslash is rare in events: memchr first)."""
    return BACKSLASH in as_json and as_json.find(b"\\u0000") >= 0  # `find`: see BACKSLASH


def _check_no_nul(result: RawEvent, as_json: bytes, function: str) -> None:
    if _may_hold_nul(as_json) and scrub(result) != result:  # the text test is quick, may be a false alarm
        raise PluginError(f"{function} returned an event with a NUL character, which cannot be stored")


def _is_uuid(value: Any) -> bool:
    # Plugins may re-key events on purpose (e.g. a deterministic uuid to deduplicate), but only validly.
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
