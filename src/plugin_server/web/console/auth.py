"""The console's login: ADMIN_TOKEN, then a signed session cookie, and a CSRF token for every change.

The cookie holds `issued_at.nonce.signature`, signed with a key derived from ADMIN_TOKEN, so that
changing ADMIN_TOKEN ends every session and nothing is stored on the server. It is HttpOnly (scripts
cannot read it), SameSite=Strict (other sites' pages do not send it) and Secure over https. Each
request that changes something must also carry the session's CSRF token (a form field, or the
X-CSRF-Token header htmx sends), derived from the same key and the session's nonce.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from urllib.parse import quote

from fastapi import HTTPException, Request, status

SESSION_COOKIE = "plugin_server_console"
SESSION_SECONDS = 12 * 3600
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
COOKIE_PATH = "/console"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class ConsoleOff(Exception):
    """ADMIN_TOKEN is unset: there is no way to log in."""


@dataclass(frozen=True, slots=True)
class Session:
    nonce: str
    csrf_token: str


def _key(admin_token: str) -> bytes:
    return hashlib.sha256(b"plugin-server console session\0" + admin_token.encode()).digest()


def _sign(admin_token: str, text: str) -> str:
    return hmac.new(_key(admin_token), text.encode(), hashlib.sha256).hexdigest()


def token_matches(admin_token: str, given: str) -> bool:
    return hmac.compare_digest(given.encode(), admin_token.encode())


def new_session_cookie(admin_token: str, now: float | None = None) -> str:
    payload = f"{int(time.time() if now is None else now)}.{secrets.token_urlsafe(18)}"
    return f"{payload}.{_sign(admin_token, payload)}"


def read_session(admin_token: str, cookie: str | None, now: float | None = None) -> Session | None:
    """The session of a cookie signed with this token and not expired, else None."""
    if not cookie or cookie.count(".") != 2:
        return None
    issued, nonce, signature = cookie.split(".")
    if not hmac.compare_digest(signature.encode(), _sign(admin_token, f"{issued}.{nonce}").encode()):
        return None
    age = (time.time() if now is None else now) - int(issued) if issued.isdigit() else SESSION_SECONDS
    if not 0 <= age < SESSION_SECONDS:
        return None
    return Session(nonce, _sign(admin_token, "csrf:" + nonce))


async def require_session(request: Request) -> Session:
    """FastAPI dependency of every console page: the session, else to the login page; for a change, a
    valid CSRF token too (else 403)."""
    admin_token = request.app.state.context.settings.ADMIN_TOKEN
    if not admin_token:
        raise ConsoleOff
    session = read_session(admin_token, request.cookies.get(SESSION_COOKIE))
    if session is None:
        login = f"{COOKIE_PATH}/login?next={quote(request.url.path)}"
        if request.headers.get("HX-Request"):
            # htmx follows redirects inside the page; this header makes it load the login page instead
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "log in again", headers={"HX-Redirect": login})
        raise HTTPException(status.HTTP_303_SEE_OTHER, "log in first", headers={"Location": login})
    if request.method not in SAFE_METHODS:
        given = request.headers.get(CSRF_HEADER)
        if given is None:
            form = await request.form()
            value = form.get(CSRF_FIELD)
            given = value if isinstance(value, str) else ""
        if not hmac.compare_digest(given.encode(), session.csrf_token.encode()):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token: reload the page")
    return session


def safe_next(path: str | None) -> str:
    """Where to go after logging in: a console path only (never another site)."""
    if path and path.startswith(COOKIE_PATH + "/") and not path.startswith("//") and "\\" not in path:
        return path
    return COOKIE_PATH + "/"
