"""Creating organizations and teams, for the embedded default and `plugin-server teams create`."""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg


@dataclass(frozen=True)
class CreatedTeam:
    team_id: int
    api_token: str
    organization_id: str
    name: str


def _slug(name: str) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:30] or "org"
    return f"{base}-{secrets.token_hex(4)}"


def create_organization_and_team(
    connection: psycopg.Connection[tuple[object, ...]],
    *,
    organization_name: str = "Default Organization",
    team_name: str = "Default Project",
    team_id: int | None = None,
) -> CreatedTeam:
    """Insert an organization that may use plugins and a team in it; return the team's id and token."""
    organization_id = str(uuid.uuid4())
    api_token = "phc_" + secrets.token_urlsafe(30)
    with connection.transaction():
        connection.execute(
            "INSERT INTO posthog_organization (id, name, slug) VALUES (%s, %s, %s)",
            (organization_id, organization_name[:64], _slug(organization_name)),
        )
        if team_id is None:
            row = connection.execute(
                """INSERT INTO posthog_team (uuid, organization_id, api_token, name)
                   VALUES (%s, %s, %s, %s) RETURNING id""",
                (str(uuid.uuid4()), organization_id, api_token, team_name[:200]),
            ).fetchone()
        else:
            row = connection.execute(
                """INSERT INTO posthog_team (id, uuid, organization_id, api_token, name)
                   VALUES (%s, %s, %s, %s, %s) RETURNING id""",
                (team_id, str(uuid.uuid4()), organization_id, api_token, team_name[:200]),
            ).fetchone()
            # Keep the id sequence ahead of explicitly chosen ids.
            connection.execute(
                "SELECT setval(pg_get_serial_sequence('posthog_team', 'id'), "
                "GREATEST((SELECT MAX(id) FROM posthog_team), 1))"
            )
    assert row is not None
    return CreatedTeam(int(str(row[0])), api_token, organization_id, team_name)


def count_teams(connection: psycopg.Connection[tuple[object, ...]]) -> int:
    row = connection.execute("SELECT COUNT(*) FROM posthog_team").fetchone()
    return int(str(row[0])) if row else 0


@dataclass(frozen=True)
class TeamListing:
    team_id: int
    name: str
    api_token: str
    organization_id: str
    organization_name: str


def list_teams(connection: psycopg.Connection[Any]) -> list[TeamListing]:
    """Every team by id, with its project token and organization."""
    rows = connection.execute(
        """SELECT t.id, t.name, t.api_token, t.organization_id, o.name
           FROM posthog_team t JOIN posthog_organization o ON o.id = t.organization_id ORDER BY t.id"""
    ).fetchall()
    return [TeamListing(int(row[0]), str(row[1]), str(row[2]), str(row[3]), str(row[4])) for row in rows]
