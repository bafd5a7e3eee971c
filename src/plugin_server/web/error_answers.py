"""How the web app answers errors: `{"detail": ...}` as FastAPI does, but never failing itself.

FastAPI's own answers break on requests an attacker can send: a 422 echoes the input back, which can
be large or not JSON at all (NaN, Infinity), and any detail that quotes the request (a path, a name)
may hold a lone surrogate, which UTF-8 cannot encode. Either made the error answer raise, and the
client got a 500. These answers leave the input out of a 422 and escape details to ASCII JSON.

A dependency that is down (Postgres, Redis, the ClickHouse events are read from) is a 503, "send
again", not a 500.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.utils import is_body_allowed_for_status_code
from psycopg import OperationalError
from psycopg_pool import PoolTimeout
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException

from plugin_server.reads import ReadFailed

DEPENDENCY_DOWN = {
    OperationalError: "the database",
    PoolTimeout: "the database",
    RedisConnectionError: "Redis",
    RedisTimeoutError: "Redis",
    ReadFailed: "the event store",
}


def answer_errors_safely(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(HTTPException, _http_error)
    for error in DEPENDENCY_DOWN:
        app.add_exception_handler(error, _dependency_down)


def error_answer(status_code: int, detail: Any, headers: Mapping[str, str] | None = None) -> Response:
    if not is_body_allowed_for_status_code(status_code):
        return Response(status_code=status_code, headers=headers)
    body = json.dumps({"detail": detail}, ensure_ascii=True, default=str, allow_nan=False)
    return Response(body, status_code, headers=headers, media_type="application/json")


async def _invalid_request(request: Request, error: Exception) -> Response:
    """422 naming what is wrong and where (FastAPI's answer without the `input` and `ctx` echoes)."""
    assert isinstance(error, RequestValidationError)
    detail = [{"type": item["type"], "loc": item["loc"], "msg": item["msg"]} for item in error.errors()]
    return error_answer(status.HTTP_422_UNPROCESSABLE_CONTENT, detail)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    return error_answer(error.status_code, error.detail, error.headers)


async def _dependency_down(request: Request, error: Exception) -> Response:
    dependency = next(name for kind, name in DEPENDENCY_DOWN.items() if isinstance(error, kind))
    detail = f"{dependency} is unavailable, try again later: {error}"
    return error_answer(status.HTTP_503_SERVICE_UNAVAILABLE, detail, {"Retry-After": "5"})
