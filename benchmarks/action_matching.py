"""The cost of action matching per event per action, with 100 actions on a team (target: at most 5 µs).

Two sets of 100 actions, matched against the same 10,000 prepared events (autocapture elements,
10 properties, a person with properties):

- `mixed`: what a team defines: pageview URL steps (contains, LIKE wildcards, regex, exact),
  autocapture steps (selector, text, href) and custom events with property filters of every operator.
  Steps are indexed by event name, so an event is checked only against the steps that can match it.
- `every step checked`: 100 actions with no event name, each with a URL and property filters, so every
  event goes through every action: the worst case per action.

    .venv/bin/python -m benchmarks.action_matching [--events 10000] [--runs 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

from plugin_server.actions.matcher import TeamActions
from plugin_server.actions.models import Action, ActionStep, EventFacts, Person
from plugin_server.ingestion.elements import elements_from_properties

ACTIONS = 100
OPERATORS = ["exact", "is_not", "icontains", "not_icontains", "regex", "not_regex", "gt", "lt", "is_set"]


def _filter(index: int) -> dict[str, Any]:
    operator = OPERATORS[index % len(OPERATORS)]
    value: Any = {"gt": 5, "lt": 50, "regex": r"^value \d+$", "not_regex": "x{3}"}.get(
        operator, f"value {index % 10}"
    )
    kind = "person" if index % 4 == 0 else "event"
    return {"type": kind, "key": f"property_{index % 10}", "value": value, "operator": operator}


def mixed_actions() -> list[Action]:
    steps: list[dict[str, Any]] = []
    for index in range(ACTIONS):
        kind = index % 5
        if kind == 0:
            steps.append({"event": "$pageview", "url": f"/docs/{index}", "url_matching": "contains"})
        elif kind == 1:
            steps.append(
                {
                    "event": "$pageview",
                    "url": rf"^https://example\.com/(docs|blog)/{index}",
                    "url_matching": "regex",
                }
            )
        elif kind == 2:
            steps.append(
                {"event": "$autocapture", "selector": f"div.card > button.buy-{index % 7}", "text": "Buy"}
            )
        elif kind == 3:
            steps.append({"event": "$autocapture", "href": f"/pricing/{index % 3}"})
        else:
            steps.append(
                {"event": f"custom {index % 10}", "properties": [_filter(index), _filter(index + 1)]}
            )
    return [
        Action(id=i + 1, team_id=2, name=f"a{i}", steps=(ActionStep(id=i + 1, action_id=i + 1, **s),))
        for i, s in enumerate(steps)
    ]


def checked_actions() -> list[Action]:
    actions = []
    for index in range(ACTIONS):
        step = ActionStep(
            id=index + 1,
            action_id=index + 1,
            url=f"example.com/%/{index % 20}",
            properties=(_filter(index), _filter(index + 3), _filter(index + 5)),
        )
        actions.append(Action(id=index + 1, team_id=2, name=f"a{index}", steps=(step,)))
    return actions


def make_events(count: int) -> list[EventFacts]:
    rng = random.Random(7)
    events = []
    for index in range(count):
        roll = rng.random()
        name = "$pageview" if roll < 0.5 else "$autocapture" if roll < 0.8 else f"custom {index % 10}"
        properties: dict[str, Any] = {f"property_{n}": f"value {rng.randrange(20)}" for n in range(9)}
        properties["property_9"] = rng.randrange(100)
        properties["$current_url"] = (
            f"https://example.com/{rng.choice(['docs', 'blog'])}/{rng.randrange(100)}"
        )
        elements = []
        if name == "$autocapture":
            elements = elements_from_properties(
                [
                    {"tag_name": "button", "attr__class": f"btn buy-{index % 7}", "$el_text": "Buy"},
                    {"tag_name": "a", "attr__href": f"/pricing/{index % 3}"},
                    {"tag_name": "div", "attr__class": "card"},
                    {"tag_name": "body"},
                ]
            )
        person = Person(id=index, properties={f"property_{n}": f"value {n}" for n in range(10)})
        events.append(EventFacts(name, properties, elements, person))
    return events


def measure(actions: TeamActions, events: list[EventFacts], runs: int) -> tuple[float, int]:
    """Median µs per event per action over `runs`, and the matches of one run."""
    matches = sum(len(actions.match(facts)) for facts in events)  # warm-up (and RE2 compilation)
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        for facts in events:
            actions.match(facts)
        timings.append((time.perf_counter() - started) / len(events) / len(actions.actions) * 1e6)
    return statistics.median(timings), matches


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    events = make_events(args.events)
    for label, actions in (("mixed", mixed_actions()), ("every step checked", checked_actions())):
        per_action, matches = measure(TeamActions(actions), events, args.runs)
        print(
            f"{label:>20}: {per_action:.3f} µs per event per action "
            f"({per_action * ACTIONS:.1f} µs per event, {matches / len(events):.2f} matches per event)"
        )


if __name__ == "__main__":
    main()
