"""Postgres connections: one async pool per process, JSON encoded with orjson."""

from __future__ import annotations

from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import set_json_dumps, set_json_loads
from psycopg_pool import AsyncConnectionPool


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


set_json_dumps(_dumps)
set_json_loads(orjson.loads)

AsyncConnection = psycopg.AsyncConnection[dict[str, Any]]


async def open_pool(database_url: str, *, min_size: int = 1, max_size: int = 4) -> AsyncConnectionPool[Any]:
    """An open pool whose connections return rows as dicts and autocommit outside transactions."""
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        kwargs={"autocommit": True, "row_factory": dict_row, "prepare_threshold": None},
        open=False,
    )
    await pool.open(wait=True, timeout=30)
    return pool


def recreate_database(server_url: str, name: str) -> str:
    """Drop and create database `name` on the server of `server_url`; return the URL of the new database.

    For test suites and benchmarks, which each want an empty database of their own."""
    with psycopg.connect(server_url, autocommit=True) as connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    info = psycopg.conninfo.conninfo_to_dict(server_url)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo(**info)  # type: ignore[arg-type]


def escape_like(text: str) -> str:
    """`text` for a LIKE pattern, its own %, _ and \\ taken literally (Postgres' default escape \\)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
