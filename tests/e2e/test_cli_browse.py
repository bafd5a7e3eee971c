"""`teams list`, `events list` and `persons list`: the stored data without psql."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from plugin_server.db.teams import CreatedTeam

from .test_cli import cli


def test_teams_list_prints_ids_names_and_tokens(
    database_url: str, clean_db: psycopg.Connection[Any], team: CreatedTeam
) -> None:
    assert cli("teams", "create", "--name", "Web shop", DATABASE_URL=database_url).returncode == 0
    result = cli("teams", "list", DATABASE_URL=database_url)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.strip().splitlines()
    assert header.split() == ["ID", "NAME", "TOKEN", "ORGANIZATION"]
    [(shop_token,)] = clean_db.execute(
        "SELECT api_token FROM posthog_team WHERE name = 'Web shop'"
    ).fetchall()
    assert rows[0].split() == ["2", "TEST", "PROJECT", team.api_token, "Default", "Organization"]
    assert rows[1].split()[:4] == ["3", "Web", "shop", shop_token]
    clean_db.execute("TRUNCATE posthog_team CASCADE")
    assert "no team yet" in cli("teams", "list", DATABASE_URL=database_url).stdout


def test_events_and_persons_list(
    database_url: str, clean_db: psycopg.Connection[Any], team: CreatedTeam
) -> None:
    for distinct_id in ("ann", "bob"):
        [(person_id,)] = clean_db.execute(
            "INSERT INTO posthog_person (team_id, uuid, properties) VALUES (2, gen_random_uuid(), %s) RETURNING id",
            (json.dumps({"name": distinct_id}),),
        ).fetchall()
        clean_db.execute(
            "INSERT INTO posthog_persondistinctid (team_id, person_id, distinct_id) VALUES (2, %s, %s)",
            (person_id, distinct_id),
        )
        clean_db.execute(
            "INSERT INTO posthog_event (team_id, event, distinct_id, properties) VALUES (2, 'seen', %s, '{\"x\": 1}')",
            (distinct_id,),
        )
    events = cli("events", "list", "--team", "2", DATABASE_URL=database_url)
    assert events.returncode == 0, events.stderr
    listed = [json.loads(line) for line in events.stdout.splitlines()]
    assert [(event["event"], event["distinct_id"], event["properties"]) for event in listed] == [
        ("seen", "bob", {"x": 1}),
        ("seen", "ann", {"x": 1}),
    ]
    only_ann = cli("persons", "list", "--team", "2", "--distinct-id", "an", DATABASE_URL=database_url)
    [person] = [json.loads(line) for line in only_ann.stdout.splitlines()]
    assert (person["distinct_ids"], person["properties"]) == (["ann"], {"name": "ann"})
    assert (
        cli("events", "list", "--team", "2", "--limit", "1", DATABASE_URL=database_url).stdout.count("\n")
        == 1
    )


def test_teams_token_prints_the_token_alone(database_url: str, team: CreatedTeam) -> None:
    only = cli("teams", "token", DATABASE_URL=database_url)
    assert (only.returncode, only.stdout) == (0, team.api_token + "\n")
    assert cli("teams", "create", "--name", "Second", DATABASE_URL=database_url).returncode == 0
    several = cli("teams", "token", DATABASE_URL=database_url)
    assert several.returncode == 1
    assert "2 teams: say which with --team" in several.stderr
    assert cli("teams", "token", "--team", "2", DATABASE_URL=database_url).stdout.strip() == team.api_token
    assert "no team 9" in cli("teams", "token", "--team", "9", DATABASE_URL=database_url).stderr
