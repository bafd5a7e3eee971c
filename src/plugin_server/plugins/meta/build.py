"""How one plugin config's `meta` is made from the worker's services."""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

from plugin_server.plugins.instance import PluginError
from plugin_server.plugins.meta.api import OPERATIONS, Meta
from plugin_server.plugins.meta.cache import PluginCache
from plugin_server.plugins.meta.geoip import GeoIPExtension
from plugin_server.plugins.meta.jobs import PluginJobs
from plugin_server.plugins.meta.logs import PluginLogger
from plugin_server.plugins.meta.posthog import PostHogApi, plugin_capture
from plugin_server.plugins.meta.storage import Cursor, PluginStorage
from plugin_server.plugins.models import PluginConfigInForce
from plugin_server.plugins.services import PluginServices


def declared_namespaces(providers: Mapping[str, object]) -> dict[str, SimpleNamespace]:
    """The namespaces of the declared operations (api.OPERATIONS) on Python's `meta`, each holding
    its declared methods, taken from the object that provides its namespace (`providers`, by the
    namespace's dotted path: "cache", "utils.cursor"...)."""
    tree: dict[str, Any] = {}
    for operation in OPERATIONS:
        *namespace, method = operation.python
        node = tree
        for name in namespace:
            node = node.setdefault(name, {})
        node[method] = getattr(providers[".".join(namespace)], method)
    return {name: _namespace(node) for name, node in tree.items()}


def _namespace(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    return SimpleNamespace(**{name: _namespace(child) for name, child in node.items()})


class MetaFactory:
    """config -> its `meta`, over the worker's plugin services: the declared operations' namespaces
    (`declared_namespaces`) and the members api.PYTHON_MEMBERS names. `meta.metrics` is None until
    the instance is loaded (its declared metrics are known then)."""

    def __init__(self, services: PluginServices, *, posthog_host: str) -> None:
        self._services = services
        self._geoip = GeoIPExtension(services.geoip)
        self._posthog_host = posthog_host  # posthog.api's default host

    async def __call__(self, config: PluginConfigInForce, logger: PluginLogger) -> Meta:
        team_id = config.config.team_id or 0
        services = self._services
        team = await services.teams.get_team(team_id)
        if team is None:
            raise PluginError(f"team {team_id} of plugin config {config.id} does not exist")
        shared_global: dict[str, Any] = {}
        providers = {
            "cache": PluginCache(services.redis, plugin_id=config.plugin.id, team_id=team_id),
            "storage": PluginStorage(services.pool, config.id),
            "utils.cursor": Cursor(services.pool, config.id),
            "geoip": self._geoip,
            "posthog": plugin_capture(config, services.enqueuer),
        }
        meta = Meta(
            config=dict(config.config.config),
            attachments=config.attachments,
            global_=shared_global,
            jobs=PluginJobs(services.jobs, config.id, team_id),
            metrics=None,
            logger=logger,
            **declared_namespaces(providers),
        )
        meta.posthog.api = PostHogApi(
            http=services.posthog_http,
            keys=services.api_keys,
            team_api_token=team.api_token,
            organization_id=team.organization_id,
            default_host=self._posthog_host,
        )
        setattr(meta, "global", shared_global)  # `global` is a Python keyword: reachable as meta.global_
        return meta
