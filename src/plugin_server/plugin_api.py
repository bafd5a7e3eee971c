"""What Python plugins may import from the server: `from plugin_server.plugin_api import RetryError`."""

from __future__ import annotations

from plugin_server.plugins.egress.client import ForbiddenDestination


class RetryError(Exception):
    """Raise it from `export_events` to have the same batch exported again later, with backoff."""


__all__ = ["ForbiddenDestination", "RetryError"]
