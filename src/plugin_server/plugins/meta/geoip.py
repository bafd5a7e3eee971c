"""`meta.geoip`: the server's GeoIP reader as plugins see it."""

from __future__ import annotations

from typing import Any

from plugin_server.services.geoip import GeoIP


class GeoIPExtension:
    """`meta.geoip`: `await meta.geoip.locate(ip)` gives the MaxMind City record or None."""

    def __init__(self, geoip: GeoIP) -> None:
        self._geoip = geoip

    async def locate(self, ip: str) -> dict[str, Any] | None:
        return self._geoip.locate(ip)
