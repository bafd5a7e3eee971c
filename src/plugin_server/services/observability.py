"""What every child process of the server sets up first: logs, Sentry and metrics."""

from __future__ import annotations

from plugin_server.config import Settings
from plugin_server.logs import setup_logging
from plugin_server.services.metrics import configure_metrics
from plugin_server.services.sentry import init_sentry


def setup_process(settings: Settings, process_name: str) -> None:
    """Log lines in LOG_FORMAT at LOG_LEVEL, errors to Sentry (SENTRY_DSN), metrics to the files of the
    supervisor's multiprocess directory and to StatsD (STATSD_HOST)."""
    setup_logging(settings.LOG_LEVEL, process_name, settings.LOG_FORMAT)
    init_sentry(settings, process_name)
    configure_metrics(settings)
