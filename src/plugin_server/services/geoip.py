"""GeoIP: IP addresses to MaxMind City records, for `meta.geoip.locate`.

The database comes from a file (setting MMDB_FILE_PATH) or from the `@posthog/mmdb` row of
posthog_pluginattachment, where the original server keeps it Brotli-compressed. Nothing is ever
downloaded. A record is returned in the shape @maxmind/geoip2-node's `city()` gives the original's
plugins (camelCase keys, `traits.ipAddress` and `traits.network`), so plugins such as
posthog-plugin-geoip read `country.isoCode` and `location.timeZone` as they expect.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import brotli
import maxminddb
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger(__name__)

MMDB_ATTACHMENT_KEY = "@posthog/mmdb"
UNAVAILABLE = "IP location capabilities are not available in this PostHog instance!"

# Every MaxMind DB ends with its metadata, introduced by this marker (within the last 128 KiB).
_METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"
_METADATA_SEARCH = 128 * 1024

# geoip2-node turns these traits into booleans, false when absent.
_BOOLEAN_TRAITS = (
    "isAnonymous",
    "isAnonymousProxy",
    "isAnonymousVpn",
    "isHostingProvider",
    "isLegitimateProxy",
    "isPublicProxy",
    "isResidentialProxy",
    "isSatelliteProvider",
    "isTorExitNode",
)


class GeoIPUnavailableError(RuntimeError):
    def __init__(self) -> None:
        super().__init__(UNAVAILABLE)


@functools.cache  # MaxMind records use a few dozen distinct keys
def _camel(key: str) -> str:
    if "-" in key or "_" not in key:  # locale codes such as "zh-CN" stay as they are
        return key
    first, *rest = key.split("_")
    return first + "".join(part[:1].upper() + part[1:] for part in rest)


def _camel_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {_camel(key): _camel_keys(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_camel_keys(item) for item in value]
    return value


def city_model(record: dict[str, Any], ip: str, prefix_length: int) -> dict[str, Any]:
    """A raw City record as geoip2-node's `City` model serialises it."""
    raw = _camel_keys(record)
    model: dict[str, Any] = {
        key: raw[key]
        for key in ("continent", "country", "maxmind", "registeredCountry", "representedCountry")
        if key in raw
    }
    if "registeredCountry" in model:
        model["registeredCountry"]["isInEuropeanUnion"] = bool(
            model["registeredCountry"].get("isInEuropeanUnion")
        )
    traits = raw.get("traits") or {}
    for trait in _BOOLEAN_TRAITS:
        traits[trait] = bool(traits.get(trait))
    traits["ipAddress"] = ip
    traits["network"] = str(ipaddress.ip_network(f"{ip}/{prefix_length}", strict=False))
    model["traits"] = traits
    model["city"] = raw.get("city") or {}
    model["location"] = raw.get("location") or {}
    model["postal"] = raw.get("postal") or {}
    model["subdivisions"] = raw.get("subdivisions") or []
    return model


def decompress_mmdb(contents: bytes) -> bytes:
    """The database itself, from a Brotli-compressed (`.mmdb.br`) or an uncompressed copy."""
    if _METADATA_MARKER in contents[-_METADATA_SEARCH:]:
        return contents
    try:
        return bytes(brotli.decompress(contents))
    except brotli.error as error:
        raise ValueError("the MMDB contents are neither a MaxMind DB nor Brotli-compressed") from error


class GeoIP:
    """A City database reader, or none (then `locate` raises the original's "not available" error)."""

    __slots__ = ("_reader",)

    def __init__(self, reader: maxminddb.Reader | None) -> None:
        self._reader = reader

    @classmethod
    def disabled(cls) -> GeoIP:
        return cls(None)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> GeoIP:
        """Open an uncompressed .mmdb file (memory-mapped)."""
        return cls(maxminddb.open_database(os.fspath(path)))

    @classmethod
    def from_contents(cls, contents: bytes) -> GeoIP:
        """Open a database held in memory, compressed or not.

        It goes through a temporary file, unlinked at once, so that the fast memory-mapped reader
        of the C extension can be used (the in-memory reader is about ten times slower)."""
        database = decompress_mmdb(contents)
        with tempfile.NamedTemporaryFile(prefix="plugin-server-", suffix=".mmdb") as file:
            file.write(database)
            file.flush()
            return cls.from_file(file.name)

    @classmethod
    async def from_attachment(cls, pool: AsyncConnectionPool[Any]) -> GeoIP | None:
        """The database of the `@posthog/mmdb` attachment row, or None when there is no such row."""
        async with pool.connection() as connection:
            cursor = await connection.execute(
                """
                SELECT file_name, contents FROM posthog_pluginattachment
                WHERE key = %s AND plugin_config_id IS NULL AND team_id IS NULL
                ORDER BY id DESC LIMIT 1
                """,
                (MMDB_ATTACHMENT_KEY,),
            )
            row = await cursor.fetchone()
        if row is None:
            return None
        if not row["contents"]:
            raise ValueError(f"the MMDB attachment {row['file_name']!r} has no contents")
        return await asyncio.to_thread(cls.from_contents, bytes(row["contents"]))

    @property
    def available(self) -> bool:
        return self._reader is not None

    def locate(self, ip: str) -> dict[str, Any] | None:
        """The City record of `ip`, or None when the address is invalid or not in the database."""
        if self._reader is None:
            raise GeoIPUnavailableError()
        if not isinstance(ip, str):
            raise TypeError(f"geoip.locate expects an IP address string, got {type(ip).__name__}")
        ip = ip.strip()
        try:
            record, prefix_length = self._reader.get_with_prefix_len(ip)
        except ValueError:  # not an IP address
            return None
        if not isinstance(record, dict):
            return None
        return city_model(record, ip, prefix_length)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()


async def load_geoip(
    pool: AsyncConnectionPool[Any], *, file_path: str | None, disabled: bool = False
) -> GeoIP:
    """The GeoIP of this process: off when disabled, else from `file_path`, else from the attachment row.

    Without either, GeoIP is unavailable (logged): this server never downloads a database."""
    if disabled:
        return GeoIP.disabled()
    if file_path:
        return GeoIP.from_file(Path(file_path))
    geoip = await GeoIP.from_attachment(pool)
    if geoip is None:
        log.warning("no MMDB file or %s attachment: IP location is not available", MMDB_ATTACHMENT_KEY)
        return GeoIP.disabled()
    return geoip
