"""require('snowflake-sdk') in JS plugins against a loopback stand-in of Snowflake's REST endpoints
(login, query, logout, as snowflake-connector-python speaks them): connections made and executed the
way the snowflake-export app does (a generic-pool of one connection, callbacks), binds, rows by
column name, and the SDK's errors."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.js_support import body_outcome
from tests.loopback import LoopbackService, Request

HEAD = "const snowflake = require('snowflake-sdk')\nconst { createPool } = require('generic-pool')"


class SnowflakeStandIn:
    def __init__(self) -> None:
        self.logins: list[dict[str, Any]] = []
        self.statements: list[tuple[str, Any]] = []
        self.logouts = 0

    def answer(self, request: Request) -> tuple[int, bytes]:
        body = (
            gzip.decompress(request.body)
            if request.headers.get("content-encoding") == "gzip"
            else request.body
        )
        if request.path == "/session/v1/login-request":
            self.logins.append(json.loads(body)["data"])
            session = {"databaseName": "DB", "schemaName": "PUBLIC", "warehouseName": "WH", "roleName": "R"}
            data = {
                "token": "t",
                "masterToken": "m",
                "validityInSeconds": 3600,
                "masterValidityInSeconds": 14400,
                "sessionId": 1,
                "parameters": [],
                "sessionInfo": session,
            }
            return 200, json.dumps({"success": True, "data": data}).encode()
        if request.path == "/queries/v1/query-request":
            query = json.loads(body)
            self.statements.append((query["sqlText"], query.get("bindings")))
            return 200, json.dumps(self._result(query["sqlText"])).encode()
        if request.path == "/session" and request.query.get("delete") == "true":
            self.logouts += 1
        return 200, json.dumps({"success": True, "data": {}}).encode()

    def _result(self, sql: str) -> dict[str, Any]:
        if "missing_table" in sql:
            return {
                "success": False,
                "code": "002003",
                "message": "SQL compilation error: Object 'MISSING_TABLE' does not exist.",
                "data": {"sqlState": "42S02", "queryId": "q-err"},
            }
        rowtype = [
            {
                "name": "UUID",
                "type": "text",
                "nullable": True,
                "scale": None,
                "precision": None,
                "length": 100,
                "byteLength": 400,
            },
            {
                "name": "TEAM_ID",
                "type": "fixed",
                "nullable": True,
                "scale": 0,
                "precision": 38,
                "length": None,
                "byteLength": None,
            },
        ]
        data = {
            "parameters": [],
            "rowtype": rowtype,
            "rowset": [["u1", "2"], ["u2", None]],
            "total": 2,
            "returned": 2,
            "queryId": "q-1",
            "queryResultFormat": "json",
            "statementTypeId": 4096,
        }
        return {"success": True, "data": data}


@pytest.fixture(scope="module")
def snowflake_service() -> Iterator[tuple[SnowflakeStandIn, str]]:
    stand_in = SnowflakeStandIn()
    with LoopbackService(stand_in.answer) as service:
        yield stand_in, service.url


async def test_the_snowflake_export_apps_way(snowflake_service: tuple[SnowflakeStandIn, str]) -> None:
    stand_in, url = snowflake_service
    out = await body_outcome(
        """
        const pool = createPool({
            create: async () => {
                const connection = snowflake.createConnection({ account: 'acme', username: 'exporter', password: 'secret',
                    database: 'DB', schema: 'PUBLIC', role: 'LOADER', accessUrl: config.url })
                await new Promise((resolve, reject) => connection.connect((err, conn) => (err ? reject(err) : resolve(conn.getId()))))
                return connection
            },
            destroy: async (connection) => {
                await new Promise((resolve, reject) => connection.destroy((err) => (err ? reject(err) : resolve())))
            },
        }, { min: 1, max: 1, autostart: true, fifo: true })
        const execute = async (sqlText, binds) => {
            const connection = await pool.acquire()
            try {
                return await new Promise((resolve, reject) => connection.execute({ sqlText, binds,
                    complete: (err, statement, rows) => (err ? reject(err) : resolve({ rows, id: statement.getQueryId() })) }))
            } finally {
                await pool.release(connection)
            }
        }
        await execute('CREATE TABLE IF NOT EXISTS "DB"."PUBLIC"."EVENTS" ("UUID" STRING)')
        const selected = await execute('SELECT uuid, team_id FROM events WHERE team_id = ?', [2])
        const failed = await execute('SELECT * FROM missing_table').catch((error) => [error.name, error.code, error.sqlState, error.message])
        await pool.drain()
        await pool.clear()
        out = { selected, failed }
        """,
        head=HEAD,
        config={"url": url},
        timeout=10.0,
    )
    assert out["selected"] == {
        "rows": [{"UUID": "u1", "TEAM_ID": 2}, {"UUID": "u2", "TEAM_ID": None}],
        "id": "q-1",
    }
    name, code, sql_state, message = out["failed"]
    assert (name, code, sql_state) == ("OperationFailedError", 2003, "42S02")
    assert "Object 'MISSING_TABLE' does not exist" in message
    assert [login["LOGIN_NAME"] for login in stand_in.logins] == ["exporter"]
    assert stand_in.logins[0]["ACCOUNT_NAME"] == "acme" and stand_in.logins[0]["PASSWORD"] == "secret"
    assert stand_in.statements[1] == (
        "SELECT uuid, team_id FROM events WHERE team_id = ?",
        {"1": {"type": "FIXED", "value": "2"}},
    )
    assert stand_in.logouts == 1  # destroyed by the pool's clear


async def test_a_connection_that_cannot_log_in_fails_with_the_sdks_error() -> None:
    out = await body_outcome(
        """
        const connection = snowflake.createConnection({ account: 'acme', username: 'u', password: 'p', accessUrl: 'http://127.0.0.1:9' })
        out = await connection.connectAsync().then(() => 'connected', (error) => [error.name, connection.isUp()])
        """,
        head=HEAD,
        timeout=2.0,  # the connector tries for 60% of it
    )
    assert out == ["NetworkError", False]
