"""Installed plugins: the list with each team's configs, installing, enabling for a team."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, Response, UploadFile

from plugin_server.db.teams import list_teams
from plugin_server.plugins import admin
from plugin_server.plugins.archive import DEFAULT_LIMITS
from plugin_server.plugins.models import PluginConfigRow, PluginRow
from plugin_server.web.console.auth import COOKIE_PATH, Session, require_session
from plugin_server.web.console.render import change, context_of, done, in_database, page
from plugin_server.web.console.status import history

router = APIRouter()
LoggedIn = Annotated[Session, Depends(require_session)]
PLUGINS = f"{COOKIE_PATH}/plugins"
MAX_UPLOAD_BYTES = DEFAULT_LIMITS.max_total_bytes


@router.get("/plugins")
async def plugins_page(request: Request, session: LoggedIn) -> Response:
    return page(
        request,
        "plugins.html",
        session,
        plugins=await in_database(request, admin.list_plugins),
        teams={team.team_id: team for team in await in_database(request, list_teams)},
        totals=history(request).latest().plugins,
    )


@router.post("/plugins/install")
async def install(
    request: Request,
    session: LoggedIn,
    how: Annotated[str, Form()],
    path: Annotated[str, Form()] = "",
    local: Annotated[bool, Form()] = False,
    url: Annotated[str, Form()] = "",
    name: Annotated[str, Form()] = "",
    source: Annotated[str, Form()] = "",
    archive: Annotated[UploadFile | None, File()] = None,
) -> Response:
    """Install from a folder or archive on the server's disk, an uploaded archive, a url or source."""
    base_dir = context_of(request).settings.BASE_DIR
    action: Callable[[admin.Connection], PluginRow]
    if how == "path" and path:
        action = partial(admin.install_plugin, path_or_archive=base_dir / path, local=local)
    elif how == "url" and url:
        action = partial(admin.install_from_url, url=url)
    elif how == "source" and name and source:
        action = partial(admin.install_source, name=name, source=source)
    elif how == "archive" and archive is not None and archive.filename:
        data = await archive.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            return done(request, PLUGINS, f"the archive is larger than {MAX_UPLOAD_BYTES} bytes", error=True)
        action = partial(
            admin.install_archive, archive=data, name=admin.strip_archive_suffix(archive.filename)
        )
    else:
        return done(request, PLUGINS, "fill in the form of one way to install", error=True)
    return await change(
        request,
        action,
        back=PLUGINS,
        then=lambda plugin: (PLUGINS, f"installed {plugin.name} (id {plugin.id})"),
    )


@router.post("/plugins/enable")
async def enable(
    request: Request,
    session: LoggedIn,
    plugin_id: Annotated[int, Form()],
    team_id: Annotated[int, Form()],
) -> Response:
    """Enable a plugin for a team (creating its config, last in the team's order); go to its settings."""

    def action(connection: admin.Connection) -> PluginConfigRow:
        plugin = admin.find_plugin(connection, str(plugin_id), team_id=team_id)
        return admin.enable_plugin(connection, plugin, team_id)

    return await change(
        request,
        action,
        back=PLUGINS,
        then=lambda config: (f"{COOKIE_PATH}/plugin-configs/{config.id}", f"enabled for team {team_id}"),
    )
