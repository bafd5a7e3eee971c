"""Logging in and out of the console."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request, Response
from fastapi.responses import RedirectResponse

from plugin_server.web.console.auth import (
    COOKIE_PATH,
    SESSION_COOKIE,
    SESSION_SECONDS,
    ConsoleOff,
    Session,
    new_session_cookie,
    require_session,
    safe_next,
    token_matches,
)
from plugin_server.web.console.render import context_of, page

router = APIRouter()
FAILED_LOGIN_DELAY_SECONDS = 1.0


def _admin_token(request: Request) -> str:
    token = context_of(request).settings.ADMIN_TOKEN
    if not token:
        raise ConsoleOff
    return token


@router.get("/login")
async def login_page(request: Request, next: str = "") -> Response:
    _admin_token(request)
    return page(request, "login.html", None, next=safe_next(next), failed=False)


@router.post("/login")
async def login(
    request: Request, token: Annotated[str, Form()], next: Annotated[str, Form()] = ""
) -> Response:
    if not token_matches(_admin_token(request), token):
        await asyncio.sleep(
            FAILED_LOGIN_DELAY_SECONDS
        )  # guessing the token one try per second per connection
        return page(request, "login.html", None, status_code=401, next=safe_next(next), failed=True)
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        new_session_cookie(_admin_token(request)),
        max_age=SESSION_SECONDS,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
async def logout(request: Request, session: Annotated[Session, Depends(require_session)]) -> Response:
    response = RedirectResponse(f"{COOKIE_PATH}/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH)
    return response
