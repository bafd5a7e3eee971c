"""require('pg') in JS plugins against the test Postgres: node-postgres' Client and Pool the way the
postgres, redshift and redshift-import apps use them (connect, parameterised queries, end), value
types both ways, errors with their SQLSTATE, and what the host refuses to hand a plugin (sockets,
the server's own libpq environment)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from plugin_server.plugins.js.hosted.pg import NO_PASSWORD, conninfo
from plugin_server.plugins.meta.network import ConnectRefused
from tests.js_support import body_outcome, loaded_plugin, process_one


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture(scope="module")
async def tcp_database_url(database_url: str) -> AsyncIterator[str]:
    """The test database reached over TCP on loopback, as a plugin's config names a database (the
    test Postgres listens on a unix socket only, which plugins may not use: this forwards to it)."""
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    host = str(info.get("host", "/tmp"))
    if not host.startswith("/"):
        yield database_url
        return
    socket_path = f"{host}/.s.PGSQL.{info.get('port', 5432)}"

    async def forward(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_unix_connection(socket_path)
        await asyncio.gather(_pipe(client_reader, server_writer), _pipe(server_reader, client_writer))

    server = await asyncio.start_server(forward, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield psycopg.conninfo.make_conninfo(database_url, host="127.0.0.1", port=str(port))
    server.close()


@pytest.fixture
def table(database_url: str) -> Iterator[str]:
    name = f"js_pg_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute(f"DROP TABLE IF EXISTS {name}")


async def run(body: str, config: dict[str, Any]) -> Any:
    return await body_outcome(
        body, head="const { Client, Pool, types } = require('pg')", config=config, timeout=5.0
    )


def parts(database_url: str) -> dict[str, Any]:
    """The test database's connection parameters, as the apps' config gives them."""
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    return {
        "host": info.get("host", "localhost"),
        "port": int(info.get("port", 5432)),
        "user": info.get("user"),
        "password": info.get("password") or "",
        "db": info["dbname"],
    }


def url_of(database_url: str) -> str:
    """The test database as a postgres:// URL (the apps' `databaseUrl`)."""
    given = parts(database_url)
    auth = quote(str(given["user"])) + (":" + quote(given["password"]) if given["password"] else "")
    return f"postgres://{auth}@{given['host']}:{given['port']}/{quote(given['db'])}"


async def test_the_export_apps_way_create_insert_and_read_back(tcp_database_url: str, table: str) -> None:
    out = await run(
        f"""
        const executeQuery = async (query, values) => {{
            const client = new Client({{ connectionString: config.databaseUrl }})
            await client.connect()
            let error = null, result = null
            try {{ result = await client.query(query, values) }} catch (err) {{ error = err }}
            await client.end()
            return {{ error, result }}
        }}
        const created = await executeQuery(`CREATE TABLE IF NOT EXISTS public.{table} (
            uuid varchar(200), event varchar(200), properties jsonb, timestamp timestamp with time zone,
            team_id int, big bigint, price numeric, ratio float8, ok boolean, data bytea, tags text[], day date)`, [])
        const inserted = await executeQuery(
            `INSERT INTO {table} (uuid, event, properties, timestamp, team_id, big, price, ratio, ok, data, tags, day)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12), ($13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24)`,
            ['u1', '$pageview', JSON.stringify({{ a: 1 }}), new Date('2021-05-06T07:08:09.010Z'), 2, '9007199254740993',
             '1.50', 0.25, true, Buffer.from([0, 1, 255]), ['x', 'y "z"', null], '2021-05-06',
             'u2', 'signup', {{ nested: [1, 2] }}, '2021-05-06 07:08:09+02', null, null, null, null, false, null, [], null])
        const read = await executeQuery(`SELECT * FROM {table} ORDER BY uuid`)
        const row = read.result.rows[0]
        out = {{
            created: created.error === null && created.result.command,
            inserted: [inserted.error, inserted.result.command, inserted.result.rowCount],
            fields: read.result.fields.map((field) => field.name),
            first: {{ ...row, timestamp: row.timestamp.toISOString(), data: [...row.data], day: row.day.toISOString() }},
            second: {{ properties: read.result.rows[1].properties, timestamp: read.result.rows[1].timestamp.toISOString(),
                      team_id: read.result.rows[1].team_id, tags: read.result.rows[1].tags }},
        }}
        """,
        {"databaseUrl": url_of(tcp_database_url)},
    )
    assert out["created"] == "CREATE"
    assert out["inserted"] == [None, "INSERT", 2]
    assert out["fields"][:3] == ["uuid", "event", "properties"]
    assert out["first"] == {
        "uuid": "u1",
        "event": "$pageview",
        "properties": {"a": 1},
        "timestamp": "2021-05-06T07:08:09.010Z",
        "team_id": 2,
        "big": "9007199254740993",
        "price": "1.50",
        "ratio": 0.25,
        "ok": True,
        "data": [0, 1, 255],
        "tags": ["x", 'y "z"', None],
        "day": "2021-05-06T00:00:00.000Z",
    }
    assert out["second"] == {
        "properties": {"nested": [1, 2]},
        "timestamp": "2021-05-06T05:08:09.000Z",
        "team_id": None,
        "tags": [],
    }


async def test_options_pool_row_mode_callbacks_and_several_statements(tcp_database_url: str) -> None:
    given = parts(tcp_database_url)
    out = await run(
        """
        const pool = new Pool({ host: config.host, port: config.port, user: config.user, password: config.password,
                                database: config.db, max: 2 })
        const [a, b, c] = await Promise.all([1, 2, 3].map((n) => pool.query('SELECT $1::int AS n, pg_backend_pid() AS pid', [n])))
        const pids = new Set([a, b, c].map((result) => result.rows[0].pid))
        const client = await pool.connect()
        const arrays = await client.query({ text: 'SELECT 1 AS one, $1::text AS two', values: ['2'], rowMode: 'array' })
        client.release()
        const viaCallback = await new Promise((resolve) => pool.query('SELECT 42 AS answer', (error, result) => resolve(error || result.rows[0].answer)))
        const several = await pool.query('SELECT 1 AS a; SELECT 2 AS b')
        types.setTypeParser(20, (text) => BigInt(text))
        const big = (await pool.query('SELECT 9007199254740993::int8 AS big')).rows[0].big
        const counts = [pool.totalCount, pool.idleCount, pool.waitingCount]
        await pool.end()
        out = { ns: [a, b, c].map((result) => result.rows[0].n), pids: pids.size, arrays: arrays.rows, viaCallback,
                several: several.map((result) => result.rows[0]), big: String(big) + (typeof big), counts }
        """,
        given,
    )
    assert out == {
        "ns": [1, 2, 3],
        "pids": 2,
        "arrays": [[1, "2"]],
        "viaCallback": 42,
        "several": [{"a": 1}, {"b": 2}],
        "big": "9007199254740993bigint",
        "counts": [2, 2, 0],
    }


async def test_errors_are_node_postgres_errors(tcp_database_url: str) -> None:
    given = parts(tcp_database_url)
    out = await run(
        """
        const client = new Client({ connectionString: config.url })
        await client.connect()
        const failed = await client.query('SELECT * FROM no_such_table_here').catch((error) => error)
        const syntax = await client.query('SELEC 1').catch((error) => error)
        await client.end()
        const closed = await client.query('SELECT 1').catch((error) => error.message)
        const refused = await new Client({ ...config.refused }).connect().catch((error) => error.message)
        const socket = await new Client({ host: '/var/run/postgresql' }).connect().catch((error) => error.message)
        const wrongPassword = await new Client({ ...config.wrong }).connect().catch((error) => error.message)
        out = { failed: [failed.name, failed.code, failed.message], syntax: [syntax.code, syntax.position], closed, refused, socket, wrongPassword }
        """,
        {
            "url": url_of(tcp_database_url),
            "refused": {"host": "127.0.0.1", "port": 9},
            "wrong": {
                "host": given["host"],
                "port": given["port"],
                "user": "nobody_here",
                "password": "wrong",
                "database": "x",
            },
        },
    )
    assert out["failed"] == ["error", "42P01", 'relation "no_such_table_here" does not exist']
    assert out["syntax"] == ["42601", "1"]
    assert out["closed"] == "Client was closed and is not queryable"
    assert "127.0.0.1" in out["refused"] and "9" in out["refused"]
    assert (
        out["socket"]
        == "pg: host '/var/run/postgresql' is not a network host (sockets and host lists are refused)"
    )
    assert 'role "nobody_here" does not exist' in out["wrongPassword"]


def test_libpq_is_given_everything_it_would_read_from_the_servers_environment() -> None:
    text = conninfo({"host": "db.example.com", "port": 5432, "connect_timeout": 1}, "203.0.113.7")
    info = psycopg.conninfo.conninfo_to_dict(text)
    assert (
        info["host"] == "db.example.com" and info["hostaddr"] == "203.0.113.7"
    )  # connects to the guard's address
    assert info["password"] == NO_PASSWORD  # never PGPASSWORD or ~/.pgpass
    assert (info["user"], info["dbname"], info["sslmode"]) == ("postgres", "postgres", "disable")
    assert (info["sslcertmode"], info["gssencmode"]) == ("disable", "disable")
    assert info["connect_timeout"] == "2"
    verified = conninfo(
        {"host": "h", "port": 1, "connect_timeout": 5, "ssl": {"rejectUnauthorized": True}}, "h"
    )
    assert psycopg.conninfo.conninfo_to_dict(verified)["sslmode"] == "verify-full"
    assert psycopg.conninfo.conninfo_to_dict(verified)["sslrootcert"] == "system"
    unverified = conninfo(
        {"host": "h", "port": 1, "connect_timeout": 5, "ssl": {"rejectUnauthorized": False}}, "h"
    )
    assert psycopg.conninfo.conninfo_to_dict(unverified)["sslmode"] == "require"


async def test_tls_asked_for_is_required(tcp_database_url: str) -> None:
    # The postgres app's own options ask for TLS, which the test Postgres does not offer: the client
    # reports the server's refusal instead of connecting without it.
    out = await run(
        """
        const client = new Client({ connectionString: config.url, ssl: { rejectUnauthorized: false } })
        out = await client.connect().then(() => 'connected', (error) => error.message)
        """,
        {"url": url_of(tcp_database_url)},
    )
    assert "SSL" in out


async def test_connections_a_plugin_left_open_close_with_its_isolate(
    tcp_database_url: str, database_url: str
) -> None:
    def open_plugin_connections() -> int:
        with psycopg.connect(database_url) as connection:
            row = connection.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'left-open-test'"
            ).fetchone()
            return int(row[0]) if row else 0

    source = """
        const { Client } = require('pg')
        exports.setupPlugin = async ({ config, global }) => {
            global.client = new Client({ connectionString: config.url + '?application_name=left-open-test' })
            await global.client.connect()
        }
    """
    async with loaded_plugin(source, config={"url": url_of(tcp_database_url)}, global_={}) as plugin:
        await plugin.setup()
        assert open_plugin_connections() == 1
    for _ in range(100):  # the server ends the backend soon after the client closed its connection
        if open_plugin_connections() == 0:
            break
        await asyncio.sleep(0.02)
    assert open_plugin_connections() == 0


async def test_the_connect_guard_decides_where_a_connection_goes(tcp_database_url: str) -> None:
    given = parts(tcp_database_url)
    asked: list[tuple[str, int]] = []

    async def guard(host: str, port: int) -> list[str]:
        asked.append((host, port))
        if host == "internal.example":
            raise ConnectRefused(f"{host} is a private address")
        return ["127.0.0.1"]  # the only address connected to: the name itself never resolves

    source = """
        const { Client } = require('pg')
        exports.processEvent = async (event, { config }) => {
            const client = new Client({ ...config.db, host: 'db.plugin.example' })
            await client.connect()
            event.properties.one = (await client.query('SELECT 1 AS one')).rows[0].one
            await client.end()
            event.properties.refused = await new Client({ ...config.db, host: 'internal.example' }).connect()
                .then(() => 'connected', (error) => error.message)
            return event
        }
    """
    db = {
        "port": given["port"],
        "user": given["user"],
        "password": given["password"],
        "database": given["db"],
    }
    async with loaded_plugin(source, config={"db": db}, timeout=5.0, guard=guard) as plugin:
        properties = (await process_one(plugin, {}))["properties"]
    assert properties == {"one": 1, "refused": "internal.example is a private address"}
    assert asked == [("db.plugin.example", given["port"]), ("internal.example", given["port"])]
