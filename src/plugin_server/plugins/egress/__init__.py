"""Where plugin HTTP may go (addresses) and the HTTP client that holds plugins to it (client)."""

from __future__ import annotations

from collections.abc import Iterable

import httpcore
import httpx

from plugin_server.config import Settings
from plugin_server.plugins.egress.addresses import EgressPolicy
from plugin_server.plugins.egress.client import (
    ForbiddenDestination,
    GuardedBackend,
    Resolver,
    guarded_client,
    system_resolver,
)
from plugin_server.plugins.meta.network import ConnectGuard, ConnectRefused

__all__ = ["ForbiddenDestination", "egress_policy", "plugin_connect_guard", "plugin_http_client"]


def egress_policy(settings: Settings) -> EgressPolicy:
    return EgressPolicy(settings.PLUGIN_HTTP_ALLOW_PRIVATE_NETWORKS, settings.plugin_http_allowed_networks)


def plugin_http_client(
    settings: Settings, *, trusted: Iterable[tuple[str, int]] = (), resolver: Resolver = system_resolver
) -> httpx.AsyncClient:
    """The HTTP client of plugins under the settings' policy, with TASK_TIMEOUT as its timeout;
    `trusted` origins (host, port) skip the address check (see GuardedBackend)."""
    backend = GuardedBackend(egress_policy(settings), resolver=resolver, trusted=trusted)
    return guarded_client(backend, timeout=settings.TASK_TIMEOUT)


def plugin_connect_guard(settings: Settings, *, resolver: Resolver = system_resolver) -> ConnectGuard:
    """The same policy for the connections plugins' modules make themselves (`pg`, Snowflake,
    custom service endpoints): the checked addresses to connect to, or ConnectRefused."""
    backend = GuardedBackend(egress_policy(settings), resolver=resolver)

    async def guard(host: str, port: int) -> list[str]:
        try:
            return [str(address) for address in await backend.checked_addresses(host, port)]
        except (ForbiddenDestination, httpcore.ConnectError) as error:
            raise ConnectRefused(str(error)) from None

    return guard
