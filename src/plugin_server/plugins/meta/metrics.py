"""`meta.metrics`: the numbers a plugin declares in its `metrics` export, aggregated in memory.

A plugin declares `{name: "sum" | "max" | "min"}`; `metrics.<name>` (or `metrics["<name>"]`) then
offers only the operation of that type. The owner reads and resets the values periodically
(`snapshot_and_reset`) to report them as a `$$plugin_metrics` event.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from types import MappingProxyType
from typing import Any

from plugin_server.jsvalues import Number, check_number
from plugin_server.plugins.meta.api import METRIC_METHODS
from plugin_server.plugins.meta.errors import IllegalOperationError

METRIC_TYPES = tuple(METRIC_METHODS)
NOT_A_NUMBER = "Only numbers are allowed for operations on metrics"

# Declared automatically for plugins that export `exportEvents`.
EXPORT_EVENTS_METRICS: Mapping[str, str] = MappingProxyType(
    {
        "events_seen": "sum",
        "events_delivered_successfully": "sum",
        "undelivered_events": "sum",
        "retry_errors": "sum",
        "other_errors": "sum",
    }
)


def declared_metrics(metrics: Mapping[str, Any], methods: Collection[str]) -> dict[str, Any]:
    """What a plugin declares in its `metrics` export, plus EXPORT_EVENTS_METRICS if it exports events."""
    if "exportEvents" in methods:
        return {**EXPORT_EVENTS_METRICS, **metrics}
    return dict(metrics)


def validate_declared(declared: Mapping[str, Any]) -> dict[str, str]:
    """The declaration with lower-cased types (`"mAx"` is `"max"`); raises for any other type."""
    if not isinstance(declared, Mapping):
        raise IllegalOperationError("The metrics export must be an object of metric names to types")
    normalised = {
        str(name): kind.lower() if isinstance(kind, str) else kind for name, kind in declared.items()
    }
    invalid = [str(kind) for kind in normalised.values() if kind not in METRIC_TYPES]
    if invalid:
        raise IllegalOperationError(
            "Only 'sum', 'max', and 'min' are supported as metric types. "
            f"Invalid types received: {', '.join(invalid)}"
        )
    return normalised


class _Metric:
    __slots__ = ("_name", "_values")

    def __init__(self, values: dict[str, float], name: str) -> None:
        self._values = values
        self._name = name


class SumMetric(_Metric):
    __slots__ = ()

    def increment(self, value: Number) -> None:
        number = check_number(value, NOT_A_NUMBER)
        self._values[self._name] = self._values.get(self._name, 0) + number


class MaxMetric(_Metric):
    __slots__ = ()

    def max(self, value: Number) -> None:
        number = check_number(value, NOT_A_NUMBER)
        current = self._values.get(self._name)
        self._values[self._name] = number if current is None else max(current, number)


class MinMetric(_Metric):
    __slots__ = ()

    def min(self, value: Number) -> None:
        number = check_number(value, NOT_A_NUMBER)
        current = self._values.get(self._name)
        self._values[self._name] = number if current is None else min(current, number)


_CLASSES: dict[str, type[_Metric]] = {"sum": SumMetric, "max": MaxMetric, "min": MinMetric}


class PluginMetrics:
    """The metrics of one plugin config. Only declared names exist; a value appears once it is used."""

    __slots__ = ("_metrics", "_values")

    def __init__(self, declared: Mapping[str, str]) -> None:
        self._values: dict[str, float] = {}
        self._metrics = {
            name: _CLASSES[kind](self._values, name) for name, kind in validate_declared(declared).items()
        }

    def __getitem__(self, name: str) -> Any:
        try:
            return self._metrics[name]
        except (KeyError, TypeError):
            raise IllegalOperationError("Invalid metric name") from None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self[name]

    def snapshot_and_reset(self) -> dict[str, float]:
        """The values since the last call (a metric set to 0 is kept), then start again from none."""
        snapshot = dict(self._values)
        self._values.clear()
        return snapshot
