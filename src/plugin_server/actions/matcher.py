"""Matching events against a team's actions, compiled once per team.

An action matches when any of its steps does; a step matches when all of its set constraints hold:
element `href`/`tag_name`/`text` (one element must have all of them), `selector`, `url` (with
`url_matching` contains — SQL LIKE's `%` and `_`, unanchored — regex (RE2) or exact), `event` name and
every property filter. Steps are indexed by event name, so an event is checked only against the steps
that can match it. A step that raises (an invalid regex, a bad cohort id) does not match, and is logged
once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from plugin_server.actions.filters import Check, cohort_ids, compile_filter, needs_person
from plugin_server.actions.models import Action, ActionStep, EventFacts
from plugin_server.actions.regex import InvalidRegex, compile_re2
from plugin_server.actions.selector import parse_selector, selector_matches
from plugin_server.services.metrics import get_metrics

log = logging.getLogger(__name__)


_REGEX_SYNTAX = frozenset("\\.^$|?*+()[]{}")


def like_pattern(pattern: str) -> str:
    """The regex of SQL LIKE's `pattern`, unanchored: `%` any run of characters, `_` any one."""
    escaped = "".join(f"\\{char}" if char in _REGEX_SYNTAX else char for char in pattern)
    return escaped.replace("_", ".").replace("%", ".*")


def _url(step: ActionStep) -> Check:
    """`$current_url` against the step's url: contains (SQL LIKE's `%` and `_` as wildcards), regex or exact.

    Patterns run on RE2 (linear time): a URL comes from the public capture API, and a LIKE pattern such as
    `%a%a%b` would backtrack for minutes in Python's re."""
    url = step.url or ""
    if step.url_matching == "exact":
        return lambda facts: facts.url == url
    if step.url_matching == "regex":
        source = url
    elif "%" in url or "_" in url:
        source = like_pattern(url)
    else:
        return lambda facts: facts.url is not None and url in facts.url
    try:
        pattern = compile_re2(source)
    except InvalidRegex:
        return lambda facts: False
    return lambda facts: facts.url is not None and pattern.search(facts.url) is not None


def _element(step: ActionStep) -> Check:
    href, tag_name, text = step.href, step.tag_name, step.text

    def any_element(facts: EventFacts) -> bool:
        return any(
            (not href or element.href == href)
            and (not tag_name or element.tag_name == tag_name)
            and (not text or element.text == text)
            for element in facts.elements
        )

    return any_element


def _selector(selector: str) -> Check:
    parts = parse_selector(selector)
    return lambda facts: selector_matches(parts, facts.elements)


@dataclass(frozen=True, slots=True)
class CompiledStep:
    action_index: int
    step_id: int
    checks: tuple[Check, ...]
    needs_person: bool


def compile_step(action_index: int, step: ActionStep) -> CompiledStep:
    checks: list[Check] = []
    if step.href or step.tag_name or step.text:
        checks.append(_element(step))
    if step.url:
        checks.append(_url(step))
    if step.selector:
        checks.append(_selector(step.selector))
    filters = step.properties if isinstance(step.properties, list | tuple) else ()
    checks.extend(compile_filter(filter_) for filter_ in filters)
    return CompiledStep(action_index, step.id, tuple(checks), any(needs_person(f) for f in filters))


class TeamActions:
    """A team's actions (in id order), compiled for matching."""

    def __init__(self, actions: Iterable[Action]) -> None:
        self.actions = tuple(sorted(actions, key=lambda action: action.id))
        self._by_event: dict[str, list[CompiledStep]] = {}
        self._any_event: list[CompiledStep] = []
        self.cohort_ids: set[int] = set()
        self._failed: set[int] = set()  # steps whose error was logged already
        for index, action in enumerate(self.actions):
            for step in action.steps:
                compiled = compile_step(index, step)
                if step.event:
                    self._by_event.setdefault(step.event, []).append(compiled)
                else:
                    self._any_event.append(compiled)
                for filter_ in step.properties if isinstance(step.properties, list | tuple) else ():
                    if isinstance(filter_, dict):
                        self.cohort_ids |= cohort_ids(filter_)
        self._person_events = {name for name, steps in self._by_event.items() if _any_person(steps)}
        self._any_event_needs_person = _any_person(self._any_event)

    def needs_person(self, event: str) -> bool:
        """Whether matching an event of this name may look at its person (person or cohort filters)."""
        return self._any_event_needs_person or event in self._person_events

    def match(self, facts: EventFacts) -> list[Action]:
        matched: set[int] = set()
        for steps in (self._by_event.get(facts.event, ()), self._any_event):
            for step in steps:
                if step.action_index in matched:
                    continue
                try:  # the checks inlined (not step.matches): this loop is the hot path
                    for check in step.checks:
                        if not check(facts):
                            break
                    else:
                        matched.add(step.action_index)
                except Exception as error:
                    self._step_failed(step, error)
        return [self.actions[index] for index in sorted(matched)]

    def _step_failed(self, step: CompiledStep, error: Exception) -> None:
        get_metrics().action_step_failed()
        if step.step_id not in self._failed:
            self._failed.add(step.step_id)
            log.warning("action step %s cannot be matched (%s); it matches nothing", step.step_id, error)


def _any_person(steps: Iterable[CompiledStep]) -> bool:
    return any(step.needs_person for step in steps)
