"""The `meta` API that both runtimes give plugins."""

from __future__ import annotations

from types import SimpleNamespace


class Meta(SimpleNamespace):
    """The `meta` a plugin function gets: config, attachments, global_ (also as `global`), cache,
    storage, jobs, geoip, metrics, utils.cursor, posthog.capture/api and logger."""
