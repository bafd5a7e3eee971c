"""The operator's console: web pages under /console to see and manage the server (CONSOLE_ENABLED).

Server-rendered Jinja2 templates, made live with htmx and charted with uPlot; both are shipped in
`static/` (no CDN, it works offline). Login with ADMIN_TOKEN (see `auth`). The pages call the same
functions as the CLI and the operator API (`plugins.admin`, `db.teams`, `db.browse`, the dead letter
store).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from plugin_server.web.console import configs, login, plugins, status, teams
from plugin_server.web.console.auth import COOKIE_PATH, ConsoleOff
from plugin_server.web.console.history import MetricsHistory
from plugin_server.web.console.render import page

STATIC = Path(__file__).parent / "static"


def install_console(app: FastAPI) -> None:
    """Serve the console from `app` under /console."""
    app.state.console_history = MetricsHistory()
    for module in (login, status, teams, plugins, configs):
        app.include_router(module.router, prefix=COOKIE_PATH, include_in_schema=False)
    app.mount(f"{COOKIE_PATH}/static", StaticFiles(directory=STATIC), name="console-static")

    @app.get(COOKIE_PATH, include_in_schema=False)
    async def console_root() -> RedirectResponse:
        return RedirectResponse(f"{COOKIE_PATH}/", status_code=307)

    @app.exception_handler(ConsoleOff)
    async def console_off(request: Request, error: ConsoleOff) -> HTMLResponse:
        return page(request, "off.html", None, status_code=403)
