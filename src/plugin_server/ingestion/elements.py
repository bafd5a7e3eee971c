"""Autocapture elements: extraction from `$elements`, the ClickHouse `elements_chain` text format, and
the Postgres element-group hash (reference section 4.5)."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from plugin_server.ingestion.types import Element
from plugin_server.jsvalues import js_string

TEXT_LIMIT = 400
HREF_LIMIT = 2048
# The posthog_element columns: longer values are cut to fit, integers out of range are left out.
TAG_NAME_LIMIT = 1000
ATTR_ID_LIMIT = 10000
CLASS_NAME_LIMIT = 200
_INT32 = range(-(2**31), 2**31)

# One element of a chain: everything up to a `;` that is not inside a quoted value. A quote inside a
# value is written as `\"`; backslashes themselves are not escaped (the format has no way to say it).
_CHAIN_ELEMENT = re.compile(r'(?:[^;"]|"(?:\\"|[^"])*")+')
# Tag and classes end at the first `:` that starts a `key="` pair (classes may contain `:`, e.g. `md:flex`).
_HEAD_END = re.compile(r':(?=[a-zA-Z0-9_-]*=")')
_ATTRIBUTE = re.compile(r'((?:\\"|[^"])*?)="((?:\\"|[^"])*)"')
_LEADING_INT = re.compile(r"\s*([+-]?\d+)")


def _optional_string(value: object, limit: int | None = None) -> str | None:
    if value is None:
        return None
    text = js_string(value)
    return text if limit is None else text[:limit]


def _optional_int(value: object) -> int | None:
    """The integer an SDK meant (1, 1.0, "1"), or None, so the value fits an integer column."""
    if type(value) is int:
        number = value
    elif (isinstance(value, float) and value.is_integer()) or (
        isinstance(value, str) and value.isascii() and value.isdigit()
    ):
        number = int(value)
    else:
        return None
    return number if number in _INT32 else None


def _classes(value: object) -> list[str] | None:
    # Sorted because the original's chain writer sorted the list in place before the element group
    # was hashed and stored, so every stored form of an element had its classes sorted.
    if isinstance(value, str):
        return sorted(name[:CLASS_NAME_LIMIT] for name in value.split(" "))
    if isinstance(value, list):
        return sorted(js_string(item)[:CLASS_NAME_LIMIT] for item in value)
    return None


def elements_from_properties(raw: list[dict[str, Any]]) -> list[Element]:
    """Convert an autocapture `$elements` list (rule 5); items that are not objects are skipped."""
    elements: list[Element] = []
    for item in raw:
        if not isinstance(item, dict):
            continue
        elements.append(
            Element(
                tag_name=_optional_string(item.get("tag_name"), TAG_NAME_LIMIT),
                text=_optional_string(item.get("$el_text"), TEXT_LIMIT),
                href=_optional_string(item.get("attr__href"), HREF_LIMIT),
                attr_id=_optional_string(item.get("attr__id"), ATTR_ID_LIMIT),
                attr_class=_classes(item.get("attr__class")),
                nth_child=_optional_int(item.get("nth_child")),
                nth_of_type=_optional_int(item.get("nth_of_type")),
                attributes={key: value for key, value in item.items() if key.startswith("attr__")},
                order=len(elements),
            )
        )
    return elements


def _element_to_string(element: Element) -> str:
    head = element.tag_name or ""
    if element.attr_class:
        head += "".join("." + name.replace('"', "") for name in sorted(element.attr_class))
    attributes: dict[str, Any] = {}
    if element.text:
        attributes["text"] = element.text
    attributes["nth-child"] = 0 if element.nth_child is None else element.nth_child
    attributes["nth-of-type"] = 0 if element.nth_of_type is None else element.nth_of_type
    if element.href:
        attributes["href"] = element.href
    if element.attr_id:
        attributes["attr_id"] = element.attr_id
    attributes.update(element.attributes)
    # Keys sort by code point (as PostHog's Python writer did; the original used localeCompare,
    # which agrees for the lower-case attribute names browsers report).
    pairs = "".join(
        f'{_escape(key)}="{_escape(js_string(value))}"' for key, value in sorted(attributes.items())
    )
    return f"{head}:{pairs}"


def elements_to_chain(elements: list[Element]) -> str:
    """Serialise elements into the ClickHouse `elements_chain` format."""
    return ";".join(_element_to_string(element) for element in elements)


def _escape(text: str) -> str:
    return text.replace('"', '\\"')


def _unescape(text: str) -> str:
    return text.replace('\\"', '"')


def _leading_int(text: str) -> int | None:
    """JavaScript's parseInt: the leading integer of the text, or None (NaN)."""
    match = _LEADING_INT.match(text)
    return int(match.group(1)) if match else None


def chain_to_elements(chain: str) -> list[Element]:
    """Parse an `elements_chain` back into elements (`order` = position).

    Unlike the original, `\\"` in values is turned back into `"`, so a chain survives a round trip;
    attribute values come back as strings, and a missing nth-child/nth-of-type as 0.
    """
    elements: list[Element] = []
    for index, match in enumerate(_CHAIN_ELEMENT.finditer(chain)):
        text = match.group(0)
        head_end = _HEAD_END.search(text)
        head = text if head_end is None else text[: head_end.start()]
        element = Element(order=index)
        if head:
            tag, *classes = head.split(".")
            element.tag_name = tag or None
            if classes:
                element.attr_class = [name for name in classes if name]
        attributes = "" if head_end is None else text[head_end.end() :]
        for key_text, value_text in _ATTRIBUTE.findall(attributes):
            key, value = _unescape(key_text), _unescape(value_text)
            if key == "href":
                element.href = value
            elif key == "nth-child":
                element.nth_child = _leading_int(value)
            elif key == "nth-of-type":
                element.nth_of_type = _leading_int(value)
            elif key == "text":
                element.text = value
            elif key == "attr_id":
                element.attr_id = value
            elif key:
                element.attributes[key] = value
        elements.append(element)
    return elements


def elements_hash(elements: list[Element]) -> str:
    """MD5 of the elements as Python's `json.dumps` writes them: the posthog_elementgroup hash."""
    serialised = json.dumps(
        [
            {
                "attributes": element.attributes,
                "text": element.text,
                "tag_name": element.tag_name,
                "href": element.href,
                "attr_id": element.attr_id,
                "attr_class": element.attr_class,
                "nth_child": element.nth_child,
                "nth_of_type": element.nth_of_type,
                "order": index,
            }
            for index, element in enumerate(elements)
        ],
        sort_keys=True,
        default=str,
    )
    return hashlib.md5(serialised.encode(), usedforsecurity=False).hexdigest()
