"""The instance's status page: readiness, workers, queue, events per second, dead letters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Form, Request, Response

from plugin_server.dead_letters import open_dead_letters
from plugin_server.ingestion.pipeline import event_of, message_age_seconds
from plugin_server.web.console.auth import COOKIE_PATH, Session, require_session
from plugin_server.web.console.history import MetricsHistory
from plugin_server.web.console.render import context_of, done, page

router = APIRouter()
LoggedIn = Annotated[Session, Depends(require_session)]
DEAD_LETTERS_SHOWN = 20


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead letter with the event it carries, when it carries a readable one."""

    reason: str
    failed_at: str
    consumer: str
    event: dict[str, Any] | None
    message: str


def history(request: Request) -> MetricsHistory:
    found: MetricsHistory = request.app.state.console_history
    return found


@router.get("/")
async def status_page(request: Request, session: LoggedIn) -> Response:
    return page(request, "status.html", session, **await _live(request), letters=await _dead_letters(request))


@router.get("/status/live")
async def status_live(request: Request, session: LoggedIn) -> Response:
    """The part of the status page that refreshes itself."""
    return page(request, "_status_live.html", session, **await _live(request))


@router.get("/series")
async def series(request: Request, session: LoggedIn, plugin_config_id: int | None = None) -> Response:
    """The charts' data: see `MetricsHistory.series`."""
    return Response(orjson.dumps(history(request).series(plugin_config_id)), media_type="application/json")


@router.post("/dead-letters/replay")
async def replay(request: Request, session: LoggedIn, limit: Annotated[str, Form()] = "") -> Response:
    """Put the oldest `limit` dead letters (all when empty) back on the queue."""
    context = context_of(request)
    store = open_dead_letters(context.settings, context.redis)
    count = await store.replay(int(limit) if limit.isdigit() else None)
    return done(request, f"{COOKIE_PATH}/", f"{count} dead letters put back on the queue")


async def _live(request: Request) -> dict[str, Any]:
    from plugin_server.web.app import readiness  # here: the app module imports the console

    context = context_of(request)
    queue = context.settings.PLUGINS_CELERY_QUEUE
    async with context.redis.pipeline(transaction=False) as pipe:
        pipe.llen(queue)
        pipe.lindex(queue, -1)
        depth, oldest = await pipe.execute()
    sample = history(request).latest()
    return {
        "checks": await readiness(context),
        "workers": context.workers.read() if context.workers else None,
        "queue": queue,
        "depth": int(depth),
        "lag": message_age_seconds(oldest),
        "dead_letter_total": await open_dead_letters(context.settings, context.redis).count(),
        "sample": sample,
    }


async def _dead_letters(request: Request) -> list[DeadLetter]:
    context = context_of(request)
    letters = await open_dead_letters(context.settings, context.redis).newest(DEAD_LETTERS_SHOWN)
    shown = []
    for letter in letters:
        message = str(letter.get("message") or "")
        event = event_of(message.encode()) if message else None
        shown.append(
            DeadLetter(
                reason=str(letter.get("reason") or ""),
                failed_at=str(letter.get("failed_at") or ""),
                consumer=str(letter.get("consumer") or ""),
                event=dict(event) if event is not None else None,
                message=message,
            )
        )
    return shown
