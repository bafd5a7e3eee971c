"""GeoIP with MaxMind's City test database: from a file, from the attachment row (Brotli or plain), disabled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import brotli
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from plugin_server.db.teams import CreatedTeam
from plugin_server.services.geoip import (
    MMDB_ATTACHMENT_KEY,
    GeoIP,
    GeoIPUnavailableError,
    decompress_mmdb,
    load_geoip,
)

Db = psycopg.Connection[Any]
TEST_MMDB = Path(__file__).parent.parent / "assets" / "GeoLite2-City-Test.mmdb"


def insert_mmdb_attachment(connection: Db, contents: bytes | None, file_name: str) -> None:
    """The row the original server keeps its database in."""
    connection.execute(
        """
        INSERT INTO posthog_pluginattachment
            (key, content_type, file_name, file_size, contents, plugin_config_id, team_id)
        VALUES (%s, 'vnd.maxmind.maxmind-db', %s, %s, %s, NULL, NULL)
        """,
        (MMDB_ATTACHMENT_KEY, file_name, len(contents or b""), contents),
    )


def assert_linkoping(geoip: GeoIP) -> None:
    city = geoip.locate("89.160.20.129")
    assert city is not None
    assert city["city"]["names"]["en"] == "Linköping"
    assert city["country"]["names"]["en"] == "Sweden"


def test_from_a_file() -> None:
    geoip = GeoIP.from_file(TEST_MMDB)
    assert geoip.available
    assert_linkoping(geoip)
    geoip.close()


def test_records_have_the_shape_plugins_read() -> None:
    """camelCase keys as @maxmind/geoip2-node gives them, e.g. to posthog-plugin-geoip."""
    city = GeoIP.from_file(TEST_MMDB).locate("89.160.20.129")
    assert city is not None
    assert city["country"]["isoCode"] == "SE"
    assert city["continent"] == {
        "code": "EU",
        "geonameId": 6255148,
        "names": {
            "de": "Europa",
            "en": "Europe",
            "es": "Europa",
            "fr": "Europe",
            "ja": "ヨーロッパ",
            "pt-BR": "Europa",
            "ru": "Европа",
            "zh-CN": "欧洲",
        },
    }
    assert city["location"] == {
        "accuracyRadius": 76,
        "latitude": 58.4167,
        "longitude": 15.6167,
        "timeZone": "Europe/Stockholm",
    }
    assert city["subdivisions"][0]["isoCode"] == "E"
    assert city["subdivisions"][0]["names"]["en"] == "Östergötland County"
    assert city["registeredCountry"]["isInEuropeanUnion"] is True
    assert city["postal"] == {}
    assert city["traits"]["ipAddress"] == "89.160.20.129"
    assert city["traits"]["network"] == "89.160.20.128/25"
    assert city["traits"]["isAnonymousProxy"] is False
    assert "representedCountry" not in city


def test_ipv6_and_unknown_or_invalid_addresses() -> None:
    geoip = GeoIP.from_file(TEST_MMDB)
    japan = geoip.locate("2001:218::1")
    assert japan is not None
    assert japan["country"]["isoCode"] == "JP"
    assert japan["city"] == {}
    assert geoip.locate("1.1.1.1") is None
    assert geoip.locate("127.0.0.1") is None
    assert geoip.locate("asdfgh") is None
    assert geoip.locate("") is None
    with pytest.raises(TypeError, match=r"geoip\.locate expects an IP address string"):
        geoip.locate(12345)  # type: ignore[arg-type]


def test_disabled_raises_the_original_message() -> None:
    geoip = GeoIP.disabled()
    assert not geoip.available
    with pytest.raises(
        GeoIPUnavailableError, match="IP location capabilities are not available in this PostHog instance!"
    ):
        geoip.locate("89.160.20.129")


def test_contents_may_be_brotli_compressed_or_not() -> None:
    plain = TEST_MMDB.read_bytes()
    assert decompress_mmdb(brotli.compress(plain)) == plain
    assert decompress_mmdb(plain) == plain
    with pytest.raises(ValueError, match="neither a MaxMind DB nor Brotli"):
        decompress_mmdb(b"garbage" * 100)


@pytest.mark.parametrize("compressed", [True, False])
async def test_from_the_attachment_row(
    pool: AsyncConnectionPool[Any], clean_db: Db, compressed: bool
) -> None:
    plain = TEST_MMDB.read_bytes()
    contents = brotli.compress(plain) if compressed else plain
    insert_mmdb_attachment(
        clean_db, contents, "GeoLite2-City-2021-05-06.mmdb" + (".br" if compressed else "")
    )
    geoip = await GeoIP.from_attachment(pool)
    assert geoip is not None
    assert_linkoping(geoip)
    assert geoip.locate("asdfgh") is None


async def test_an_attachment_of_a_team_is_not_the_database(
    pool: AsyncConnectionPool[Any], clean_db: Db, team: CreatedTeam
) -> None:
    assert await GeoIP.from_attachment(pool) is None
    clean_db.execute(
        """
        INSERT INTO posthog_pluginattachment (key, content_type, file_name, file_size, contents, team_id)
        VALUES (%s, 'application/octet-stream', 'x.mmdb', 4, 'test', %s)
        """,
        (MMDB_ATTACHMENT_KEY, team.team_id),
    )
    assert await GeoIP.from_attachment(pool) is None


async def test_an_attachment_without_contents_is_an_error(
    pool: AsyncConnectionPool[Any], clean_db: Db
) -> None:
    insert_mmdb_attachment(clean_db, None, "GeoLite2-City-2021-05-06.mmdb.br")
    with pytest.raises(ValueError, match="has no contents"):
        await GeoIP.from_attachment(pool)


async def test_load_prefers_the_file_then_the_attachment(
    pool: AsyncConnectionPool[Any], clean_db: Db
) -> None:
    assert not (await load_geoip(pool, file_path=None)).available  # nothing to open: unavailable, no download
    assert not (await load_geoip(pool, file_path=str(TEST_MMDB), disabled=True)).available
    assert_linkoping(await load_geoip(pool, file_path=str(TEST_MMDB)))

    insert_mmdb_attachment(
        clean_db, brotli.compress(TEST_MMDB.read_bytes()), "GeoLite2-City-2021-05-06.mmdb.br"
    )
    assert_linkoping(await load_geoip(pool, file_path=None))
    with pytest.raises(FileNotFoundError):
        await load_geoip(pool, file_path="/nonexistent/GeoLite2-City.mmdb")
