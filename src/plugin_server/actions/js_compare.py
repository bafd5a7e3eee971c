"""JavaScript's comparisons and conversions over JSON values, as the original's action matcher used them.

Property filters compare event values with filter values the way the original's TypeScript did: loose
equality (`==`), relational `<`/`>`, `Number(...)`, `String(...)` and `JSON.stringify`. A missing value is
`UNDEFINED`, distinct from `None` (JSON null).
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

import orjson

from plugin_server.jsvalues import js_string


class _Undefined:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNDEFINED"

    def __bool__(self) -> bool:
        return False  # falsy, as in JavaScript


UNDEFINED: Final = _Undefined()

_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_RADIX = {"0x": 16, "0o": 8, "0b": 2}
TRUE_WORDS = frozenset({"y", "yes", "t", "true", "on", "1"})
FALSE_WORDS = frozenset({"n", "no", "f", "false", "off", "0"})


def typeof(value: Any) -> str:
    if value is UNDEFINED:
        return "undefined"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "object"  # None, lists and dicts


def to_string(value: Any) -> str:
    """`String(value)`."""
    return "undefined" if value is UNDEFINED else js_string(value)


def stringify(value: Any) -> str:
    """The original's `stringify`: strings as they are, `undefined`, else `JSON.stringify`."""
    if isinstance(value, str):
        return value
    if value is UNDEFINED:
        return "undefined"
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return js_string(value)


def _to_primitive(value: Any) -> Any:
    return js_string(value) if isinstance(value, dict | list) else value


def _string_to_number(text: str) -> float:
    text = text.strip()
    if not text:
        return 0.0
    if text in ("Infinity", "+Infinity", "-Infinity"):
        return -math.inf if text[0] == "-" else math.inf
    radix = _RADIX.get(text[:2].lower())
    if radix is not None:
        try:
            return float(int(text[2:], radix))
        except ValueError:
            return math.nan
    return float(text) if _DECIMAL.fullmatch(text) else math.nan


def to_number(value: Any) -> float:
    """`Number(value)`."""
    if value is None:
        return 0.0
    if value is UNDEFINED:
        return math.nan
    if isinstance(value, bool | int | float):
        return float(value)
    if isinstance(value, str):
        return _string_to_number(value)
    if isinstance(value, list):
        return _string_to_number(js_string(value))
    return math.nan


def loose_equal(a: Any, b: Any) -> bool:
    """`a == b`."""
    if a is None or a is UNDEFINED or b is None or b is UNDEFINED:
        return (a is None or a is UNDEFINED) and (b is None or b is UNDEFINED)
    type_a, type_b = typeof(a), typeof(b)
    if type_a == type_b:
        return a is b if type_a == "object" else bool(a == b)
    if type_a == "boolean":
        return loose_equal(int(a), b)
    if type_b == "boolean":
        return loose_equal(a, int(b))
    if type_a == "object":
        return loose_equal(_to_primitive(a), b)
    if type_b == "object":
        return loose_equal(a, _to_primitive(b))
    return to_number(a) == to_number(b)  # a number and a string


def less_than(a: Any, b: Any) -> bool:
    """`a < b`."""
    a, b = _to_primitive(a), _to_primitive(b)
    if isinstance(a, str) and isinstance(b, str):
        return a < b
    return to_number(a) < to_number(b)  # NaN compares false


def _cast(value: Any) -> float:
    """`Number(stringToBoolean(value, true) ?? value)`."""
    word = to_string(value).lower()
    if word in TRUE_WORDS:
        return 1.0
    if word in FALSE_WORDS:
        return 0.0
    return to_number(value)


def casting_compare(a: Any, b: Any, operator: str) -> bool:
    """Compare `a` (the event's value) with `b` (the filter's) by `exact`, `is_not`, `lt` or `gt`: natively
    first, then, when their types differ, both cast through booleans to numbers (as ClickHouse would)."""
    if operator == "exact":
        if loose_equal(a, b):
            return True
    elif operator == "is_not":
        if not loose_equal(a, b):
            return True
    elif (
        typeof(a) != "string"
        and typeof(b) != "string"
        and (less_than(a, b) if operator == "lt" else less_than(b, a))
    ):
        return True
    if typeof(a) == typeof(b):
        return False
    cast_a, cast_b = _cast(a), _cast(b)
    if operator == "exact":
        return cast_a == cast_b
    if operator == "is_not":
        return cast_a != cast_b
    return cast_a < cast_b if operator == "lt" else cast_a > cast_b
