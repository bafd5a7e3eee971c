"""Teams (projects) with their tokens, and a team's stored events (where EVENT_STORE keeps them) and
persons."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, HTTPException, Request, Response, status

from plugin_server.db.browse import recent_persons
from plugin_server.db.teams import create_organization_and_team, list_teams
from plugin_server.web.console.auth import COOKIE_PATH, Session, require_session
from plugin_server.web.console.render import context_of, done, in_database, page

router = APIRouter()
LoggedIn = Annotated[Session, Depends(require_session)]


@router.get("/teams")
async def teams_page(request: Request, session: LoggedIn) -> Response:
    return page(request, "teams.html", session, teams=await in_database(request, list_teams))


@router.post("/teams")
async def create_team(
    request: Request,
    session: LoggedIn,
    name: Annotated[str, Form(min_length=1, max_length=200)],
    organization: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    """A new team in a new organization, as `plugin-server teams create` makes it."""
    created = await in_database(
        request,
        lambda connection: create_organization_and_team(
            connection, team_name=name, organization_name=organization or name
        ),
    )
    return done(request, f"{COOKIE_PATH}/teams", f"created team {created.team_id} ({created.name})")


@router.get("/teams/{team_id}")
async def team_page(request: Request, session: LoggedIn, team_id: int, distinct_id: str = "") -> Response:
    teams = {team.team_id: team for team in await in_database(request, list_teams)}
    if team_id not in teams:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no team {team_id}")
    name = "_team_data.html" if request.headers.get("HX-Request") else "team.html"
    return page(
        request,
        name,
        session,
        team=teams[team_id],
        distinct_id=distinct_id,
        events=await context_of(request).reads.events.recent_events(team_id, distinct_id),
        persons=await in_database(
            request, lambda connection: recent_persons(connection, team_id, distinct_id)
        ),
    )
