"""Checks and conversions for values that plugins pass to the meta API.

Plugins in either runtime hand over plain JSON-like values. JavaScript has one number type and
turns values into strings with `String(x)`, so these helpers follow JavaScript where a plugin can
see the difference (`1.0` prints as `1`, `true` as `true`). A wrong type raises a TypeError naming
the call, which the runtime shows to the plugin.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

Number = int | float


def json_bytes(value: Any) -> bytes:
    """JSON as JSON.stringify writes it (non-string keys as strings). orjson's fast path first: it takes
    string keys only, and OPT_NON_STR_KEYS doubles the cost of every dict, when keys that are not strings
    come only from plugins, rarely."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


def json_text(value: Any) -> str:
    """`json_bytes` as text (a jsonb parameter, a JSON column)."""
    return json_bytes(value).decode()


def js_string(value: object) -> str:
    """`String(value)` as JavaScript writes it, for JSON values (objects print as `[object Object]`)."""
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        if value.is_integer() and abs(value) < 1e21:
            return str(int(value))
        return repr(value)
    if isinstance(value, dict):
        return "[object Object]"
    if isinstance(value, list):
        return ",".join("" if item is None else js_string(item) for item in value)
    return str(value)


def check_number(value: object, message: str) -> Number:
    """A finite int or float (not a bool), else TypeError/ValueError with `message`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(message)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(message)
    return value


def check_int(value: object, message: str) -> int:
    """An integer; a float without a fraction counts, as JavaScript numbers arrive as floats."""
    number = check_number(value, message)
    if isinstance(number, float):
        if not number.is_integer():
            raise TypeError(message)
        return int(number)
    return number


def check_key(key: object, call: str) -> str:
    """A cache or storage key: a string, or a number or boolean used as one (as JavaScript would)."""
    if isinstance(key, str):
        return key
    if isinstance(key, int | float):
        return js_string(key)
    raise TypeError(f"{call} expects a string key, got {type(key).__name__}")
