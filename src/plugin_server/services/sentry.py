"""Sentry, in every process of the server when SENTRY_DSN is set (as the original did).

Lines logged at ERROR or above become Sentry events (with the lines before them as breadcrumbs and
the structlog context as tags); unhandled exceptions are sent by sentry-sdk's excepthook integration.
Worker processes log their crash at ERROR before exiting, since multiprocessing bypasses the hook.
"""

from __future__ import annotations

import logging
from typing import Any

import sentry_sdk
import structlog
from sentry_sdk.integrations.logging import LoggingIntegration

from plugin_server import __version__
from plugin_server.config import Settings


def init_sentry(settings: Settings, process_name: str) -> bool:
    """Start reporting to Sentry; whether it is on (SENTRY_DSN set)."""
    if not settings.SENTRY_DSN:
        return False
    sentry_sdk.init(
        dsn=settings.SENTRY_DSN,
        release=f"plugin-server@{__version__}",
        integrations=[LoggingIntegration(level=logging.INFO, event_level=logging.ERROR)],
        before_send=_add_log_context,
    )
    sentry_sdk.set_tag("process", process_name)
    return True


def _add_log_context(event: Any, hint: Any) -> Any:
    """Tag the event with the log context in force (team_id, plugin_config_id, event_uuid)."""
    context = structlog.contextvars.get_contextvars()
    if context:
        event.setdefault("tags", {}).update({key: str(value) for key, value in context.items()})
    return event
