"""meta.metrics: declared names only, one operation per type, numbers only, snapshots keep zeros."""

from __future__ import annotations

import pytest

from plugin_server.plugins.meta.errors import IllegalOperationError
from plugin_server.plugins.meta.metrics import EXPORT_EVENTS_METRICS, PluginMetrics, validate_declared


def test_declared_types_are_lower_cased() -> None:
    """The original's 'plugin sets exported metrics'."""
    assert validate_declared({"metric1": "sum", "metric2": "mAx", "metric3": "MIN"}) == {
        "metric1": "sum",
        "metric2": "max",
        "metric3": "min",
    }


@pytest.mark.parametrize("declared", [{"unsupportedMetric": "avg"}, {"ok": "sum", "bad": 3}])
def test_other_types_are_refused(declared: dict[str, object]) -> None:
    """The original's 'plugin vm is not setup if metric type is unsupported'."""
    with pytest.raises(IllegalOperationError, match="Only 'sum', 'max', and 'min' are supported"):
        validate_declared(declared)


def test_the_declaration_must_be_a_mapping() -> None:
    with pytest.raises(IllegalOperationError):
        validate_declared(["sum"])  # type: ignore[arg-type]


def test_metrics_api_works_as_expected() -> None:
    """The original's 'metrics API works as expected'."""
    metrics = PluginMetrics({"metric1": "sum", "metric2": "max", "metric3": "min"})
    metrics["metric1"].increment(100)
    metrics["metric1"].increment(10)
    metrics["metric1"].increment(-10)
    metrics.metric2.max(5)
    metrics.metric2.max(10)
    metrics.metric3.min(4)
    metrics.metric3.min(1)
    assert metrics.snapshot_and_reset() == {"metric1": 100, "metric2": 10, "metric3": 1}
    assert metrics.snapshot_and_reset() == {}


def test_only_the_operation_of_the_declared_type_exists() -> None:
    """The original's 'metrics method will fail for wrongly specified metric type'."""
    metrics = PluginMetrics({"i_should_increment": "sum"})
    with pytest.raises(AttributeError):
        metrics["i_should_increment"].max(100)


@pytest.mark.parametrize("value", ["im not a number, but im also not NaN", None, True, [1]])
def test_only_numbers_are_allowed(value: object) -> None:
    """The original's 'metrics methods only support numbers'."""
    metrics = PluginMetrics({"metric1": "sum"})
    with pytest.raises(TypeError, match="Only numbers are allowed for operations on metrics"):
        metrics.metric1.increment(value)
    with pytest.raises(ValueError):
        metrics.metric1.increment(float("inf"))
    assert metrics.snapshot_and_reset() == {}


def test_undeclared_names_are_invalid() -> None:
    metrics = PluginMetrics({"declared": "sum"})
    with pytest.raises(IllegalOperationError, match="Invalid metric name"):
        metrics["undeclared"]
    with pytest.raises(IllegalOperationError, match="Invalid metric name"):
        metrics.undeclared  # noqa: B018
    with pytest.raises(IllegalOperationError, match="Invalid metric name"):
        metrics[3]  # type: ignore[index]


def test_a_zero_is_a_value_not_unset() -> None:
    """The original treated a stored 0 as unset, so max(-5) after 0 gave -5 and min(5) after 0 gave 5."""
    metrics = PluginMetrics({"highest": "max", "lowest": "min", "total": "sum"})
    metrics.highest.max(0)
    metrics.highest.max(-5)
    metrics.lowest.min(0)
    metrics.lowest.min(5)
    metrics.total.increment(0)
    assert metrics.snapshot_and_reset() == {"highest": 0, "lowest": 0, "total": 0}


def test_export_events_metrics_are_all_sums() -> None:
    """The original's 'exportEvents automatically sets metrics'."""
    assert dict(EXPORT_EVENTS_METRICS) == {
        "events_seen": "sum",
        "events_delivered_successfully": "sum",
        "undelivered_events": "sum",
        "retry_errors": "sum",
        "other_errors": "sum",
    }
    metrics = PluginMetrics(EXPORT_EVENTS_METRICS)
    metrics.events_seen.increment(3)
    assert metrics.snapshot_and_reset() == {"events_seen": 3}
