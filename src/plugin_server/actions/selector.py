"""The CSS-selector subset that actions match against an event's autocapture elements.

Supported as in the original: descendant (space) and child (`>`) combinators, `[attr="value"]` (`id`
compares lower-cased with `attr_id`, `href` with `href`, others with `attributes["attr__<name>"]`),
`:nth-child(n)`, `:nth-of-type(n)`, `.class` (all must be present, backslash escapes removed) and a
tag name; a stray `*` is dropped. Elements come innermost first. Unlike the original, an unsupported
`:pseudo(n)` or an argument of 0 is ignored instead of hanging the parser.

The matching walk (with its retry of the previous part after a failed `>`) gives the original's
answers, quirks included, which its tests pin down.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from plugin_server.ingestion.types import Element

_ATTRIBUTE = re.compile(r"\[(.*)=['|\"](.*)['|\"]\]")
_PSEUDO = re.compile(r":([A-Za-z-]+)\((\d+)\)")
_TAG = re.compile(r"^([A-Za-z0-9]+)")


@dataclass(slots=True)
class SelectorPart:
    """What one compound selector requires of an element; `direct` if it follows `>`."""

    direct: bool = False
    tag_name: str | None = None
    href: str | None = None
    attr_id: str | None = None
    classes: list[str] | None = None
    nth_child: int | None = None
    nth_of_type: int | None = None
    attributes: dict[str, str] = field(default_factory=dict)

    def matches(self, element: Element) -> bool:
        if self.tag_name and element.tag_name != self.tag_name:
            return False
        if self.href and element.href != self.href:
            return False
        if self.attr_id and element.attr_id != self.attr_id:
            return False
        if self.classes:
            have = element.attr_class
            if not have or not all(name in have for name in self.classes):
                return False
        if self.nth_child and element.nth_child != self.nth_child:
            return False
        if self.nth_of_type and element.nth_of_type != self.nth_of_type:
            return False
        return all(
            element.attributes.get(f"attr__{name}") == value for name, value in self.attributes.items()
        )


def _unescape_class(name: str) -> str:
    """A double backslash stands for one; single backslashes are dropped."""
    return "\\".join(piece.replace("\\", "") for piece in name.split("\\\\"))


def _parse_part(text: str, direct: bool) -> SelectorPart:
    part = SelectorPart(direct=direct)
    while (found := _ATTRIBUTE.search(text)) is not None:
        text = text[: found.start()] + text[found.end() :]
        name, value = found[1].lower(), found[2]
        if name == "id":
            part.attr_id = value.lower()
        elif name == "href":
            part.href = value
        else:
            part.attributes[name] = value
    while (found := _PSEUDO.search(text)) is not None:
        text = text[: found.start()] + text[found.end() :]
        argument = int(found[2])
        if argument and found[1] == "nth-child":
            part.nth_child = argument
        elif argument and found[1] == "nth-of-type":
            part.nth_of_type = argument
    if "." in text:
        text, *classes = text.split(".")
        part.classes = [_unescape_class(name) for name in classes]
    tag = _TAG.match(text)
    if tag:
        part.tag_name = tag[1]
    return part


def parse_selector(selector: str) -> list[SelectorPart]:
    words = selector.replace("> * > ", "").replace("> *", "").strip().split(" ")
    return [
        _parse_part(word, index > 0 and words[index - 1] == ">")
        for index, word in enumerate(words)
        if word not in (">", "")
    ]


def selector_matches(parts: Sequence[SelectorPart], elements: Sequence[Element]) -> bool:
    """Whether the elements (innermost first) match the parsed selector."""
    base = len(elements)  # the imaginary parent of the outermost element
    matched = True
    index = 0
    while index < len(parts):
        if base <= 0:
            return False
        part = parts[index]
        matched = False
        for position in range(base - 1, -1, -1):
            if part.matches(elements[position]):
                base = position
                matched = True
                break
            if part.direct:
                break
        if matched:
            index += 1
        elif part.direct:
            index -= 1  # look for the parent part again, further in
        else:
            base -= 1
    return matched
