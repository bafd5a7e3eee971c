"""The whole server: an event matching an action is recorded and its Slack webhook delivered; an action
created while the server runs is picked up on `reload-action`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import redis

from plugin_server.db.teams import CreatedTeam
from tests.integration.test_actions import add_action
from tests.loopback import LoopbackService, Request

from .server import celery_app, running_server, send_event, wait_for_count, wait_until

MATCHES = "SELECT COUNT(*) FROM posthog_action_events"


def test_actions_are_matched_recorded_and_posted(
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    team: CreatedTeam,
    clean_db: psycopg.Connection[Any],
    redis_client: redis.Redis,
) -> None:
    def ok(_: Request) -> tuple[int, bytes]:
        return 200, b"{}"

    with LoopbackService(ok) as slack:
        webhook = f"{slack.url}/hooks.slack.com/services/T/B/x"
        clean_db.execute(
            "UPDATE posthog_team SET slack_incoming_webhook = %s WHERE id = %s", (webhook, team.team_id)
        )
        add_action(
            clean_db, [{"event": "signed up"}], name="Sign up", post_to_slack=True, team_id=team.team_id
        )
        env = {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "WORKER_CONCURRENCY": "1",
            "DISABLE_WEB": "1",
        }
        app = celery_app(redis_url)
        with running_server(tmp_path, env) as server:
            server.wait_for_log("All systems go")
            send_event(app, team_id=team.team_id, distinct_id="alice", event="signed up")
            assert wait_for_count(database_url, MATCHES, 1) == 1
            wait_until(lambda: slack.requests)

            later = add_action(clean_db, [{"event": "paid"}], name="Paid", team_id=team.team_id)
            redis_client.publish("reload-action", json.dumps({"teamId": team.team_id, "actionId": later}))

            def pay_until_matched() -> bool:
                """Until the worker has heard the message a "paid" event matches nothing: send until one does."""
                send_event(app, team_id=team.team_id, distinct_id="bob", event="paid")
                return _paid(clean_db)

            wait_until(pay_until_matched)
            assert server.stop() == 0
    [posted] = slack.requests
    assert json.loads(posted.body)["text"] == "Sign up was triggered by alice"


def _paid(db: psycopg.Connection[Any]) -> bool:
    row = db.execute(
        "SELECT COUNT(*) FROM posthog_action_events a JOIN posthog_action x ON x.id = a.action_id WHERE x.name = 'Paid'"
    ).fetchone()
    return row is not None and row[0] > 0
