"""Property filters of action steps (`event`, `person`, `element`, `cohort`), compiled once per step into
checks over an event's facts.

Operators as in the original: `exact` (the default) and `is_not` by casting comparison; `icontains`,
`not_icontains`, `regex`, `not_regex` on string values only; `gt`, `lt` on numbers and booleans only;
`is_set`, `is_not_set`. A filter value may be a list: any item that matches suffices. A missing
property, or a value of a type the operator does not take, matches only for the "negative" operators.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from plugin_server.actions.js_compare import UNDEFINED, casting_compare, stringify, typeof
from plugin_server.actions.models import EventFacts
from plugin_server.actions.regex import re2_test
from plugin_server.actions.selector import parse_selector, selector_matches
from plugin_server.ingestion.types import Element
from plugin_server.jsvalues import js_string

Check = Callable[[EventFacts], bool]
ValueTest = Callable[[Any, Any], bool]

EMPTY_MATCHING = frozenset({"is_not_set", "is_not", "not_icontains", "not_regex"})
_REQUIRED_TYPES = {
    "icontains": ("string",),
    "not_icontains": ("string",),
    "regex": ("string",),
    "not_regex": ("string",),
    "gt": ("number", "boolean"),
    "lt": ("number", "boolean"),
}
_ELEMENT_FIELDS = frozenset(
    {"tag_name", "text", "href", "attr_id", "attr_class", "nth_child", "nth_of_type", "attributes", "order"}
)


class InvalidFilter(ValueError):
    """A filter that can never be evaluated (e.g. a cohort id that is not a number)."""


def _is_set(found: Any, _: Any) -> bool:
    return True  # reached only when the value is there


_TESTS: dict[str, ValueTest] = {
    "exact": lambda found, ok: casting_compare(found, ok, "exact"),
    "is_not": lambda found, ok: casting_compare(found, ok, "is_not"),
    "gt": lambda found, ok: casting_compare(found, ok, "gt"),
    "lt": lambda found, ok: casting_compare(found, ok, "lt"),
    "icontains": lambda found, ok: stringify(ok).lower() in found.lower(),
    "not_icontains": lambda found, ok: stringify(ok).lower() not in found.lower(),
    "regex": lambda found, ok: re2_test(stringify(ok), found),
    "not_regex": lambda found, ok: not re2_test(stringify(ok), found),
    "is_set": _is_set,
    "is_not_set": lambda found, ok: False,  # reached only when the value is there
}


PropertiesTest = Callable[[Mapping[str, Any] | None], bool]


def properties_test(key: Any, value: Any, operator: Any) -> PropertiesTest:
    """Whether a properties object (None: none at all) matches `key operator value`."""
    name = key if isinstance(key, str) else js_string(key)
    operator = operator if isinstance(operator, str) and operator else "exact"
    empty = operator in EMPTY_MATCHING
    required = _REQUIRED_TYPES.get(operator)
    test = _TESTS.get(operator, _TESTS["exact"])
    ok_values: Sequence[Any] = value if isinstance(value, list) else [value]

    def matches(properties: Mapping[str, Any] | None) -> bool:
        if properties is None:
            return empty
        found = properties.get(name, UNDEFINED)
        if found is UNDEFINED or (required is not None and typeof(found) not in required):
            return empty
        return any(test(found, ok) for ok in ok_values)

    return matches


def _element_properties(element: Element) -> dict[str, Any]:
    return {name: getattr(element, name) for name in _ELEMENT_FIELDS if getattr(element, name) is not None}


def _cohort_id(value: Any) -> int:
    if isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise InvalidFilter(f"cannot match against invalid cohort id {value!r}")


def cohort_ids(filter_: Mapping[str, Any]) -> set[int]:
    """The cohort ids a filter asks about (none for `all` and invalid ids)."""
    if filter_.get("type") != "cohort" or filter_.get("value") == "all":
        return set()
    try:
        return {_cohort_id(filter_.get("value"))}
    except InvalidFilter:
        return set()


def compile_filter(filter_: Any) -> Check:
    """The check of one property filter of a step."""
    if not isinstance(filter_, Mapping):
        return lambda facts: False
    kind = filter_.get("type")
    value = filter_.get("value", UNDEFINED)
    if kind == "cohort":
        return _cohort_check(value)
    if kind == "element" and filter_.get("key") == "selector":
        wanted = value if isinstance(value, list) else [value]
        selectors = [parse_selector(js_string(item)) for item in wanted if item]
        return lambda facts: any(selector_matches(parts, facts.elements) for parts in selectors)
    test = properties_test(filter_.get("key"), value, filter_.get("operator"))
    if kind == "event":
        return lambda facts: test(facts.properties)
    if kind == "person":
        return lambda facts: test(None if facts.person is None else facts.person.properties)
    if kind == "element":
        return lambda facts: any(test(_element_properties(element)) for element in facts.elements)
    return lambda facts: False


def needs_person(filter_: Any) -> bool:
    return isinstance(filter_, Mapping) and (
        filter_.get("type") == "person" or (filter_.get("type") == "cohort" and filter_.get("value") != "all")
    )


def _cohort_check(value: Any) -> Check:
    if value == "all":
        return lambda facts: True  # the "All users" cohort

    def in_cohort(facts: EventFacts) -> bool:
        if facts.person is None:
            return False
        return _cohort_id(value) in facts.person.cohorts

    return in_cohort
