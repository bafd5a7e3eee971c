"""Actions over real Postgres and Valkey: matches recorded, hooks delivered to loopback receivers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from plugin_server.actions.celery_tasks import CLICKHOUSE_TASK, POSTGRES_TASK
from plugin_server.actions.setup import Actions, open_actions
from plugin_server.actions.store import ActionStore
from plugin_server.config import load_settings
from plugin_server.db.teams import CreatedTeam
from plugin_server.ingestion.celery import decode_message
from plugin_server.ingestion.pipeline import EventPipeline
from plugin_server.ingestion.teams import TeamManager
from plugin_server.jobs.queue import JobQueue
from tests.conftest import Counted, wait_until
from tests.integration.test_pipeline import message, pipeline, rows
from tests.loopback import LoopbackService, Request

Db = psycopg.Connection[Any]


def add_action(
    db: Db,
    steps: list[dict[str, Any]],
    *,
    name: str = "Signed up",
    team_id: int = 2,
    post_to_slack: bool = False,
    slack_message_format: str = "",
    deleted: bool = False,
) -> int:
    row = db.execute(
        """INSERT INTO posthog_action (name, team_id, post_to_slack, slack_message_format, deleted)
           VALUES (%s, %s, %s, %s, %s) RETURNING id""",
        (name, team_id, post_to_slack, slack_message_format, deleted),
    ).fetchone()
    assert row is not None
    for step in steps:
        columns = ["action_id", *step]
        values = [row[0], *(json.dumps(v) if k == "properties" else v for k, v in step.items())]
        db.execute(
            f"INSERT INTO posthog_actionstep ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(values))})",
            values,
        )
    return int(row[0])


def add_rest_hook(db: Db, team: CreatedTeam, action_id: int, target: str) -> str:
    db.execute(
        "UPDATE posthog_organization SET available_features = '{zapier}' WHERE id = %s",
        (team.organization_id,),
    )
    user = db.execute(
        "INSERT INTO posthog_user (uuid, password, email) VALUES (%s, '', %s) RETURNING id",
        (str(uuid.uuid4()), f"{uuid.uuid4().hex}@example.com"),
    ).fetchone()
    assert user is not None
    hook_id = uuid.uuid4().hex
    db.execute(
        """INSERT INTO ee_hook (id, event, target, resource_id, team_id, user_id)
           VALUES (%s, 'action_performed', %s, %s, %s, %s)""",
        (hook_id, target, action_id, team.team_id, user[0]),
    )
    return hook_id


@contextlib.asynccontextmanager
async def actions_of(
    pool: AsyncConnectionPool[Any], redis: aioredis.Redis, *, postgres: bool = True, **settings: Any
) -> AsyncIterator[tuple[Actions, JobQueue]]:
    """The actions of a worker storing events in Postgres (`postgres`) or not (ClickHouse)."""
    jobs = JobQueue(pool, poll_interval=0.05)
    config = load_settings({}, **{"HOOK_RETRY_DELAY_SECONDS": 0.05, "HOOK_TIMEOUT_SECONDS": 2, **settings})
    teams = TeamManager(pool)
    async with open_actions(config, pool, redis, teams, jobs, write_action_events=postgres) as actions:
        yield actions, jobs


@contextlib.asynccontextmanager
async def delivering(actions: Actions, jobs: JobQueue) -> AsyncIterator[None]:
    stop = asyncio.Event()
    runner = asyncio.create_task(jobs.run_forever(actions.delivery.deliver, stop_event=stop, kinds=("hook",)))
    try:
        yield
    finally:
        stop.set()
        await runner


def with_actions(pool: AsyncConnectionPool[Any], actions: Actions) -> EventPipeline:
    built = pipeline(pool)
    built.actions = actions.service
    return built


def pageview(url: str, **properties: Any) -> dict[str, Any]:
    return {"event": "$pageview", "properties": {"$current_url": url, **properties}}


async def test_store_loads_reloads_and_drops_actions(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db, aredis: aioredis.Redis
) -> None:
    kept = add_action(clean_db, [{"event": "meow"}, {"url": "pets.com"}])
    add_action(clean_db, [{"event": "meow"}], deleted=True)
    store = ActionStore(pool)
    [actions] = (await store.for_teams([2])).values()
    assert [(a.id, len(a.steps)) for a in actions.actions] == [(kept, 2)]
    assert (await store.for_teams([3]))[3].actions == ()

    listening = asyncio.create_task(store.keep_fresh(aredis))
    try:
        added = add_action(clean_db, [{"event": "woof"}])
        await asyncio.sleep(0.1)  # the subscription is in place
        await aredis.publish("reload-action", json.dumps({"teamId": 2, "actionId": added}))
        await wait_until(lambda: len(store._actions.get(2, {})) == 2)
        assert [a.id for a in (await store.for_teams([2]))[2].actions] == [kept, added]

        await aredis.publish("drop-action", json.dumps({"teamId": 2, "actionId": kept}))
        await aredis.publish("drop-action", b"not json")  # skipped
        await wait_until(lambda: kept not in store._actions.get(2, {}))
        clean_db.execute("UPDATE posthog_action SET deleted = true WHERE id = %s", (added,))
        await aredis.publish("reload-action", json.dumps({"teamId": 2, "actionId": added}))
        await wait_until(lambda: not store._actions.get(2))
        assert (await store.for_teams([2]))[2].actions == ()
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening


async def test_matches_are_recorded_once(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db, aredis: aioredis.Redis
) -> None:
    pricing = add_action(clean_db, [{"event": "$pageview", "url": "/pricing", "url_matching": "contains"}])
    button = add_action(clean_db, [{"selector": "div > button.buy", "text": "Buy"}])
    anything = add_action(
        clean_db, [{"properties": [{"type": "event", "key": "plan", "operator": "is_set"}]}]
    )
    buy = {
        "event": "$autocapture",
        "properties": {
            "plan": "pro",
            "$elements": [
                {"tag_name": "button", "attr__class": "btn buy", "$el_text": "Buy"},
                {"tag_name": "div"},
            ],
        },
    }
    messages = [
        message(2, "u1", pageview("https://shop.test/pricing")),
        message(2, "u1", pageview("https://shop.test/about")),
        message(2, "u2", buy),
    ]
    async with actions_of(pool, aredis) as (actions, _):
        outcome = await with_actions(pool, actions).run(messages)
        assert outcome.stored == 3
        await with_actions(pool, actions).run(messages)  # delivered again: nothing recorded twice
    recorded = rows(
        clean_db,
        """SELECT e.properties->>'$current_url' AS url, e.event, a.action_id
           FROM posthog_action_events a JOIN posthog_event e ON e.id = a.event_id ORDER BY e.id, a.action_id""",
    )
    assert [(r["url"], r["event"], r["action_id"]) for r in recorded] == [
        ("https://shop.test/pricing", "$pageview", pricing),
        (None, "$autocapture", button),
        (None, "$autocapture", anything),
    ]


async def test_person_and_cohort_filters_read_postgres(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db, aredis: aioredis.Redis
) -> None:
    cohort = clean_db.execute(
        "INSERT INTO posthog_cohort (name, team_id) VALUES ('vip', 2) RETURNING id"
    ).fetchone()
    assert cohort is not None
    vip = add_action(
        clean_db, [{"event": "paid", "properties": [{"type": "cohort", "key": "id", "value": cohort[0]}]}]
    )
    pro = add_action(
        clean_db, [{"event": "paid", "properties": [{"type": "person", "key": "plan", "value": "pro"}]}]
    )
    async with actions_of(pool, aredis) as (actions, _):
        run = with_actions(pool, actions).run
        await run(
            [
                message(2, "alice", {"event": "$identify", "$set": {"plan": "pro"}}),
                message(2, "bob", {"event": "x"}),
            ]
        )
        clean_db.execute(
            """INSERT INTO posthog_cohortpeople (cohort_id, person_id)
               SELECT %s, person_id FROM posthog_persondistinctid WHERE distinct_id = 'bob'""",
            (cohort[0],),
        )
        await run([message(2, "alice", {"event": "paid"}), message(2, "bob", {"event": "paid"})])
    recorded = rows(
        clean_db,
        """SELECT e.distinct_id, a.action_id FROM posthog_action_events a
           JOIN posthog_event e ON e.id = a.event_id ORDER BY e.distinct_id, a.action_id""",
    )
    assert [(r["distinct_id"], r["action_id"]) for r in recorded] == [("alice", pro), ("bob", vip)]


async def test_a_batch_reads_its_persons_in_one_query(
    counted: Counted, team: CreatedTeam, clean_db: Db, aredis: aioredis.Redis
) -> None:
    pool, statements = counted
    add_action(clean_db, [{"properties": [{"type": "person", "key": "plan", "value": "pro"}]}])
    add_action(
        clean_db, [{"event": "other", "properties": [{"type": "person", "key": "plan", "value": "pro"}]}]
    )
    batch = [message(2, f"user-{i}", {"event": "x", "$set": {"plan": "pro"}}) for i in range(20)]
    async with actions_of(pool, aredis) as (actions, _):
        await with_actions(pool, actions).run(batch)
    assert sum("posthog_cohortpeople c" in statement for statement in statements) == 1
    assert sum("INSERT INTO posthog_action_events" in statement for statement in statements) == 1
    assert len(rows(clean_db, "SELECT * FROM posthog_action_events")) == 20


def receiver(statuses: list[int] | None = None, delay: float = 0) -> LoopbackService:
    """Answers with `statuses` in turn (then 200), after `delay` seconds."""
    left = list(statuses or [])

    def answer(_: Request) -> tuple[int, bytes]:
        time.sleep(delay)
        return (left.pop(0) if left else 200), b"{}"

    return LoopbackService(answer)


async def wait_for(condition: Callable[[], bool]) -> None:
    await wait_until(condition, timeout=10)


async def test_slack_and_rest_hooks_are_delivered(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db, aredis: aioredis.Redis
) -> None:
    with receiver() as slack, receiver() as zapier:
        webhook = f"{slack.url}/hooks.slack.com/services/T0/B0/secret"
        clean_db.execute("UPDATE posthog_team SET slack_incoming_webhook = %s WHERE id = 2", (webhook,))
        signup = add_action(
            clean_db,
            [{"event": "signed up"}],
            name="Sign up",
            post_to_slack=True,
            slack_message_format="[user.name] signed up with [event.properties.plan] on [user.browser]",
        )
        quiet = add_action(clean_db, [{"event": "signed up"}], name="Quiet")  # not posted to Slack
        hook_id = add_rest_hook(clean_db, team, signup, f"{zapier.url}/hooks/catch/1")
        event = {
            "event": "signed up",
            "properties": {"plan": "pro", "$browser": "Firefox"},
            "$set": {"email": "a@b.c"},
        }
        async with actions_of(pool, aredis) as (actions, jobs), delivering(actions, jobs):
            await with_actions(pool, actions).run([message(2, "alice", event)])
            await wait_for(lambda: len(slack.requests) == 1 and len(zapier.requests) == 1)
            await wait_for(lambda: not rows(clean_db, "SELECT id FROM plugin_server_jobs"))

    [posted] = slack.requests
    assert posted.path == "/hooks.slack.com/services/T0/B0/secret"
    assert posted.headers["content-type"] == "application/json"
    person_link = "<http://example.com/person/alice|a@b.c>"
    assert json.loads(posted.body) == {
        "text": "a@b.c signed up with pro on Firefox",
        "blocks": [
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": f"{person_link} signed up with pro on Firefox"},
            }
        ],
    }
    [rest] = zapier.requests
    payload = json.loads(rest.body)
    assert payload["hook"] == {
        "id": hook_id,
        "event": "action_performed",
        "target": f"{zapier.url}/hooks/catch/1",
    }
    data = payload["data"]
    assert (data["event"], data["distinct_id"], data["team_id"], data["properties"]["plan"]) == (
        "signed up",
        "alice",
        2,
        "pro",
    )
    assert data["person"]["properties"]["email"] == "a@b.c" and data["person"]["team_id"] == 2
    assert len(rows(clean_db, "SELECT * FROM posthog_action_events")) == 2  # signup and quiet
    assert quiet != signup


async def test_discord_gets_markdown_and_redelivery_fires_nothing_twice(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db, aredis: aioredis.Redis
) -> None:
    with receiver() as discord:
        webhook = f"{discord.url}/discord.com/api/webhooks/1"
        clean_db.execute("UPDATE posthog_team SET slack_incoming_webhook = %s WHERE id = 2", (webhook,))
        action = add_action(clean_db, [{"event": "paid"}], name="Paid", post_to_slack=True)
        async with actions_of(pool, aredis) as (actions, jobs), delivering(actions, jobs):
            payment = [message(2, "bob", {"event": "paid", "uuid": str(uuid.uuid4()).upper()})]
            await with_actions(pool, actions).run(payment)
            await with_actions(pool, actions).run(payment)
            await wait_for(lambda: len(discord.requests) == 1)
            await wait_for(lambda: not rows(clean_db, "SELECT id FROM plugin_server_jobs"))
    assert json.loads(discord.requests[0].body) == {
        "text": f"[Paid](http://example.com/action/{action}) was triggered by [bob](http://example.com/person/bob)"
    }


async def hook_outcome(
    pool: AsyncConnectionPool[Any],
    clean_db: Db,
    aredis: aioredis.Redis,
    service: LoopbackService,
    attempts: int,
    **settings: Any,
) -> list[dict[str, Any]]:
    """Fire one Teams webhook at `service`; wait for `attempts` requests and the queue to settle."""
    clean_db.execute(
        "UPDATE posthog_team SET slack_incoming_webhook = %s WHERE id = 2", (f"{service.url}/teams",)
    )
    add_action(clean_db, [{"event": "paid"}], post_to_slack=True)
    async with actions_of(pool, aredis, **settings) as (actions, jobs), delivering(actions, jobs):
        await with_actions(pool, actions).run([message(2, "bob", {"event": "paid"})])
        await wait_for(lambda: len(service.requests) == attempts)
        await wait_for(
            lambda: all(
                r["status"] != "running" for r in rows(clean_db, "SELECT status FROM plugin_server_jobs")
            )
        )
        await wait_for(
            lambda: len(rows(clean_db, "SELECT id FROM plugin_server_jobs WHERE status = 'waiting'")) == 0
        )
    return rows(clean_db, "SELECT status, last_error, payload FROM plugin_server_jobs")


async def test_a_failing_receiver_is_tried_again_with_backoff(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db, aredis: aioredis.Redis
) -> None:
    arrivals: list[float] = []

    def answer(_: Request) -> tuple[int, bytes]:
        arrivals.append(time.monotonic())
        return (503 if len(arrivals) < 3 else 200), b"{}"

    with LoopbackService(answer) as teams:
        left = await hook_outcome(pool, clean_db, aredis, teams, attempts=3, HOOK_RETRY_DELAY_SECONDS=0.2)
    assert left == []  # delivered on the third attempt
    assert len({request.body for request in teams.requests}) == 1
    first_wait, second_wait = arrivals[1] - arrivals[0], arrivals[2] - arrivals[1]
    assert 0.2 <= first_wait < second_wait and second_wait >= 0.4  # the delay doubles


async def test_a_receiver_that_keeps_failing_is_given_up(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db, aredis: aioredis.Redis
) -> None:
    with receiver([500] * 10) as teams:
        [failed] = await hook_outcome(pool, clean_db, aredis, teams, attempts=3, HOOK_MAX_ATTEMPTS=3)
    assert failed["status"] == "failed"
    assert "HTTP 500 (attempt 3 of 3)" in failed["last_error"]
    assert "/teams" not in failed["last_error"]  # the URL (its path is a secret) is not in the error


@pytest.mark.parametrize(
    ("statuses", "delay", "expected"), [([404], 0, "HTTP 404"), ([], 1.0, "ReadTimeout")]
)
async def test_refused_and_slow_deliveries(
    pool: AsyncConnectionPool[Any],
    team: CreatedTeam,
    clean_db: Db,
    aredis: aioredis.Redis,
    statuses: list[int],
    delay: float,
    expected: str,
) -> None:
    with receiver(statuses, delay) as teams:
        [failed] = await hook_outcome(
            pool, clean_db, aredis, teams, attempts=1, HOOK_MAX_ATTEMPTS=1, HOOK_TIMEOUT_SECONDS=0.2
        )
    assert failed["status"] == "failed" and expected in failed["last_error"]


async def test_a_rest_hook_answering_gone_is_deleted(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db, aredis: aioredis.Redis
) -> None:
    with receiver([410]) as zapier:
        action = add_action(clean_db, [{"event": "paid"}])
        add_rest_hook(clean_db, team, action, f"{zapier.url}/gone")
        async with actions_of(pool, aredis) as (actions, jobs), delivering(actions, jobs):
            await with_actions(pool, actions).run([message(2, "bob", {"event": "paid"})])
            await wait_for(lambda: not rows(clean_db, "SELECT id FROM ee_hook"))
            await wait_for(lambda: not rows(clean_db, "SELECT id FROM plugin_server_jobs"))
    assert len(zapier.requests) == 1


@pytest.mark.parametrize("postgres", [True, False])
async def test_celery_mode_sends_the_seed_tasks(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db, aredis: aioredis.Redis, postgres: bool
) -> None:
    clean_db.execute(
        "UPDATE posthog_team SET slack_incoming_webhook = 'https://hooks.slack.com/x' WHERE id = 2"
    )
    add_action(clean_db, [{"event": "paid"}], post_to_slack=True)
    settings = {"ACTION_HOOKS_VIA_CELERY": True, "CELERY_DEFAULT_QUEUE": "django"}
    async with actions_of(pool, aredis, postgres=postgres, **settings) as (actions, _):
        upper = {"event": "x", "uuid": str(uuid.uuid4()).upper()}  # stored lower-case
        await with_actions(pool, actions).run(
            [message(2, "bob", {"event": "paid"}), message(2, "bob", upper)]
        )
    tasks = [decode_message(raw) for raw in reversed(await aredis.lrange("django", 0, -1))]
    if postgres:
        ids = [r["id"] for r in rows(clean_db, "SELECT id FROM posthog_event ORDER BY id")]
        expected = [(POSTGRES_TASK, [event_id, "http://example.com"]) for event_id in ids]
        assert [(task.name, task.args) for task in tasks] == expected
    else:
        assert [task.name for task in tasks] == [CLICKHOUSE_TASK] * 2
        first, team_id, site_url = tasks[0].args
        assert (first["event"], first["distinct_id"], team_id, site_url) == (
            "paid",
            "bob",
            2,
            "http://example.com",
        )
        assert set(first) == {"event", "properties", "distinct_id", "timestamp", "elements_chain"}
    assert not rows(clean_db, "SELECT id FROM plugin_server_jobs")  # nothing delivered here
    assert len(rows(clean_db, "SELECT * FROM posthog_action_events")) == (1 if postgres else 0)


async def test_without_the_postgres_store_hooks_fire_and_nothing_is_recorded(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db, aredis: aioredis.Redis
) -> None:
    with receiver() as teams, receiver() as zapier:
        clean_db.execute(
            "UPDATE posthog_team SET slack_incoming_webhook = %s WHERE id = 2", (f"{teams.url}/t",)
        )
        action = add_action(clean_db, [{"event": "paid"}], post_to_slack=True)
        add_rest_hook(clean_db, team, action, f"{zapier.url}/z")
        clean_db.execute(
            "UPDATE posthog_organization SET available_features = '{}'"
        )  # no zapier: no REST hook
        async with actions_of(pool, aredis, postgres=False) as (actions, jobs), delivering(actions, jobs):
            await with_actions(pool, actions).run([message(2, "bob", {"event": "paid"})])
            await wait_for(lambda: len(teams.requests) == 1)
            await wait_for(lambda: not rows(clean_db, "SELECT id FROM plugin_server_jobs"))
    assert zapier.requests == []
    assert rows(clean_db, "SELECT * FROM posthog_action_events") == []


async def test_a_bug_in_actions_skips_them_but_an_outage_is_retried(
    pool: AsyncConnectionPool[Any],
    team: CreatedTeam,
    clean_db: Db,
    aredis: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    add_action(clean_db, [{"event": "paid"}])
    async with actions_of(pool, aredis) as (actions, _):
        service = actions.service

        async def broken(*_: Any) -> None:
            raise KeyError("a bug")

        monkeypatch.setattr(service, "_match", broken)
        outcome = await with_actions(pool, actions).run([message(2, "bob", {"event": "paid"})])
        assert (outcome.stored, outcome.dead_letters) == (1, [])  # stored, not a dead letter

        async def unavailable(*_: Any) -> None:
            raise psycopg.OperationalError("connection lost")

        monkeypatch.setattr(service, "_match", unavailable)
        with pytest.raises(psycopg.OperationalError):  # the batch layer retries it
            await with_actions(pool, actions).run([message(2, "bob", {"event": "paid"})])
    assert rows(clean_db, "SELECT * FROM posthog_action_events") == []
