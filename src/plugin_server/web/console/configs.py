"""One plugin config: its settings form (from plugin.json), attachments, enabled and order, its last
error, its metrics and its log."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request, Response, status
from starlette.datastructures import UploadFile as StarletteUpload

from plugin_server.db.teams import list_teams
from plugin_server.plugins import admin
from plugin_server.plugins.meta.logs import LogType
from plugin_server.plugins.models import PluginAttachment, PluginConfigRow
from plugin_server.plugins.settings_schema import check_settings, setting_fields
from plugin_server.reads import LogQuery
from plugin_server.web.console.auth import COOKIE_PATH, CSRF_FIELD, Session, require_session, safe_next
from plugin_server.web.console.plugins import MAX_UPLOAD_BYTES
from plugin_server.web.console.render import change, context_of, done, in_database, page
from plugin_server.web.console.status import history

router = APIRouter()
LoggedIn = Annotated[Session, Depends(require_session)]
LOG_LINES = 200


def _where(config_id: int) -> str:
    return f"{COOKIE_PATH}/plugin-configs/{config_id}"


@router.get("/plugin-configs/{config_id}")
async def config_page(request: Request, session: LoggedIn, config_id: int) -> Response:
    def read(connection: admin.Connection) -> dict[str, Any]:
        config = admin.find_config(connection, config_id)
        return {
            "config": config,
            "plugin": admin.find_plugin(connection, str(config.plugin_id)),
            "attachments": {item.key: item for item in admin.list_attachments(connection, config_id)},
            "teams": {team.team_id: team for team in list_teams(connection)},
        }

    try:
        found = await in_database(request, read)
    except admin.NotFoundError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None
    return page(
        request,
        "config.html",
        session,
        **found,
        fields=setting_fields(found["plugin"].config_schema),
        totals=history(request).latest().plugins.get(config_id),
        log_types=[kind.value for kind in LogType],
    )


@router.post("/plugin-configs/{config_id}/settings")
async def save_settings(request: Request, session: LoggedIn, config_id: int) -> Response:
    """Check the form against plugin.json, store the settings and the uploaded attachments."""
    form = await request.form()
    uploads = {
        key: value
        for key, value in form.multi_items()
        if isinstance(value, StarletteUpload) and value.filename
    }
    given = {key: value for key, value in form.multi_items() if isinstance(value, str) and key != CSRF_FIELD}
    attachments = []
    for key, upload in uploads.items():
        contents = await upload.read(MAX_UPLOAD_BYTES + 1)
        if len(contents) > MAX_UPLOAD_BYTES:
            return done(
                request, _where(config_id), f"{key}: larger than {MAX_UPLOAD_BYTES} bytes", error=True
            )
        name = upload.filename or key
        content_type = upload.content_type or admin.guess_content_type(name)
        attachments.append(PluginAttachment(key, content_type, name, contents))

    def action(connection: admin.Connection) -> PluginConfigRow:
        config = admin.find_config(connection, config_id)
        fields = setting_fields(admin.find_plugin(connection, str(config.plugin_id)).config_schema)
        stored = {item.key for item in admin.list_attachments(connection, config_id)}
        changes = check_settings(
            fields, {**given, **dict.fromkeys(uploads, "uploaded")}, config.config, stored
        )
        for attachment in attachments:
            admin.set_attachment(connection, config_id, attachment)
        return admin.update_config(connection, config_id, config=changes)

    return await change(
        request, action, back=_where(config_id), then=lambda config: (_where(config.id), "settings saved")
    )


@router.post("/plugin-configs/{config_id}/state")
async def set_state(
    request: Request,
    session: LoggedIn,
    config_id: int,
    enabled: Annotated[bool | None, Form()] = None,
    order: Annotated[int | None, Form()] = None,
    back: Annotated[str, Form()] = "",
) -> Response:
    """Enable or disable the config, or move it in its team's order; then back to the page it was done on."""
    text = "order changed" if enabled is None else ("enabled" if enabled else "disabled")
    return await change(
        request,
        lambda connection: admin.update_config(connection, config_id, enabled=enabled, order=order),
        back=_where(config_id),
        then=lambda config: (safe_next(back) if back else _where(config.id), text),
    )


@router.get("/plugin-configs/{config_id}/logs")
async def logs(
    request: Request,
    session: LoggedIn,
    config_id: int,
    level: str = "",
    q: str = "",
    after: str | None = None,
) -> Response:
    """Log lines (the newest, or those after `after`), for the viewer that follows the log."""
    types = [kind.value for kind in LogType if kind.value == level.upper()] if level else []
    query = LogQuery(config_id, limit=LOG_LINES, after=after or None, types=types, text=q)
    try:
        entries = await context_of(request).reads.logs.log_entries(query)
    except admin.AdminError as error:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(error)) from None
    last = entries[-1].id if entries else after
    return page(
        request, "_log_rows.html", session, entries=entries, config_id=config_id, level=level, q=q, after=last
    )


@router.get("/plugin-configs/{config_id}/totals")
async def totals(request: Request, session: LoggedIn, config_id: int) -> Response:
    return page(
        request, "_plugin_totals.html", session, totals=history(request).latest().plugins.get(config_id)
    )
