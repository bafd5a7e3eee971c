"""What the console's pages share: templates, the notice shown after a change, database access."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson
import psycopg
from fastapi import Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from redis.exceptions import RedisError

from plugin_server import __version__
from plugin_server.plugins.admin import RELOAD_MESSAGE, AdminError
from plugin_server.web.console.auth import COOKIE_PATH, CSRF_FIELD, CSRF_HEADER, Session
from plugin_server.web.context import WebContext

T = TypeVar("T")
NOTICE_COOKIE = "plugin_server_console_notice"
# Pages are the operator's: no framing by other sites, scripts only from the console's own files.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
templates.env.filters["pretty"] = lambda value: json.dumps(value, indent=2, sort_keys=True, default=str)
templates.env.filters["when"] = lambda value: (
    value.strftime("%Y-%m-%d %H:%M:%S") if isinstance(value, datetime) else (value or "")
)


def context_of(request: Request) -> WebContext:
    context: WebContext = request.app.state.context
    return context


def page(
    request: Request, name: str, session: Session | None, status_code: int = 200, **values: Any
) -> HTMLResponse:
    """Render a template with what every page needs: the session's CSRF token and the notice."""
    notice = _read_notice(request)
    response = templates.TemplateResponse(
        request,
        name,
        {
            "session": session,
            "csrf_field": CSRF_FIELD,
            "csrf_header": CSRF_HEADER,
            "notice": notice,
            "version": __version__,
            "root": COOKIE_PATH,
            **values,
        },
        status_code=status_code,
        headers=SECURITY_HEADERS,
    )
    if notice:
        response.delete_cookie(NOTICE_COOKIE, path=COOKIE_PATH)
    return response


def done(request: Request, where: str, text: str, *, error: bool = False) -> Response:
    """After a change: go to `where` (303, or HX-Redirect for htmx) and show `text` there once."""
    response: Response
    if request.headers.get("HX-Request"):
        response = Response(status_code=204, headers={"HX-Redirect": where})
    else:
        response = RedirectResponse(where, status_code=303)
    value = base64.urlsafe_b64encode(orjson.dumps({"text": text[:1500], "error": error})).decode()
    response.set_cookie(
        NOTICE_COOKIE,
        value,
        max_age=60,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


def _read_notice(request: Request) -> dict[str, Any] | None:
    raw = request.cookies.get(NOTICE_COOKIE)
    if not raw:
        return None
    try:
        notice = orjson.loads(base64.urlsafe_b64decode(raw))
    except ValueError:
        return None
    return notice if isinstance(notice, dict) else None


async def in_database(request: Request, action: Callable[[psycopg.Connection[Any]], T]) -> T:
    """Run a synchronous database function (those of `plugins.admin`, `db.teams`, `db.browse`) in a
    thread, on a connection of its own, as the operator API does."""
    conninfo = context_of(request).pool.conninfo
    assert isinstance(conninfo, str), "the pool is opened with a fixed database url (db.postgres.open_pool)"

    def run() -> T:
        with psycopg.connect(conninfo, autocommit=True) as connection:
            return action(connection)

    return await asyncio.to_thread(run)


async def change(
    request: Request,
    action: Callable[[psycopg.Connection[Any]], T],
    *,
    back: str,
    then: Callable[[T], tuple[str, str]],
) -> Response:
    """Save a change to plugins (a `plugins.admin` function), tell running servers to reload, and go to
    where `then(result)` says with its text; an AdminError goes `back` with its reason."""
    try:
        result = await in_database(request, action)
    except AdminError as error:
        return done(request, back, str(error), error=True)
    where, text = then(result)
    settings = context_of(request).settings
    try:
        await context_of(request).redis.publish(settings.PLUGINS_RELOAD_PUBSUB_CHANNEL, RELOAD_MESSAGE)
    except RedisError as error:
        return done(
            request, where, f"{text}, but running servers could not be told to reload: {error}", error=True
        )
    return done(request, where, text)
