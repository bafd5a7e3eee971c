"""The web app: PostHog's capture endpoints, health and readiness, metrics and the operator API."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from plugin_server import __version__
from plugin_server.ingestion.teams import TeamManager
from plugin_server.web import admin, metrics_routes
from plugin_server.web.capture_endpoint import CaptureEndpoint, cors_headers
from plugin_server.web.console import install_console
from plugin_server.web.context import WebContext
from plugin_server.web.docs import install_docs
from plugin_server.web.health import run_check, sources_check, workers_problem

log = logging.getLogger(__name__)

# PostHog's capture paths: /engage carried posthog-js's people updates ($set), /s its session
# recording snapshots ($snapshot events, stored in posthog_sessionrecordingevent).
CAPTURE_PATHS = ("/capture", "/e", "/batch", "/track", "/i/v0/e", "/engage", "/s")
CAPTURE_DESCRIPTION = """PostHog's capture endpoint: one event, a list, or `{"batch": [...]}`, as JSON,
as a form with base64 `data`, or with `data=` in the query (GET); gzip (`compression=gzip-js` or
`Content-Encoding: gzip`) and lz-string (`compression=lz64`) accepted. Answers `{"status": 1}` once every
event is queued; 400 bad payload, 401 missing or unknown project token, 413 too large, 503 queue down."""

# PostHog's flags endpoints (/decide, /flags), as posthog-js and the SDKs ask them: this server keeps no
# feature flags, so the answer is "none", and browsers see no 404 in their console. The body is not read.
FLAGS_PATHS = ("/decide", "/flags")
_CAPTURE_METHODS = frozenset(("GET", "POST", "OPTIONS"))
_NO_FLAGS = {
    "config": {"enable_collect_everything": True},
    "featureFlags": {},
    "featureFlagPayloads": {},
    "flags": {},
    "errorsWhileComputingFlags": False,
    "quotaLimited": [],
    "sessionRecording": False,
    "supportedCompression": ["gzip", "gzip-js", "lz64"],
    "siteApps": [],
    "surveys": False,
    "heatmaps": False,
    "capturePerformance": False,
    "autocapture_opt_out": False,
    "toolbarParams": {},
    "isAuthenticated": False,
}


class FrontDoor:
    """The ASGI application: capture requests (nearly all the traffic) go straight to the capture
    endpoint, everything else to the FastAPI app. FastAPI's layers (middleware, routing, dependency
    solving) cost more CPU than capturing an event does; the capture routes are still declared in the
    FastAPI app, which documents them on its OpenAPI page, answers 405 to other methods, and serves
    them with the same endpoint when asked directly."""

    def __init__(self, api: FastAPI, capture: CaptureEndpoint) -> None:
        self.api = api
        self._capture = capture
        self._paths = frozenset(path + slash for path in CAPTURE_PATHS for slash in ("", "/"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in _CAPTURE_METHODS and scope["path"] in self._paths:
            await self._capture(scope, receive, send)
        else:
            await self.api(scope, receive, send)


class _Delegate(Response):
    """A FastAPI route's answer that hands the request to an ASGI app (its body is still unread)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self.background = None  # FastAPI looks for background tasks on a route's answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


def create_app(context: WebContext) -> FrontDoor:
    # FastAPI's OpenTelemetry hooks check the environment on every request; we have no tracing.
    app = FastAPI(
        title="plugin-server",
        version=__version__,
        telemetry={"tracing": False, "metrics": False, "logs": False},
        docs_url=None,  # served by install_docs, with their assets from this server
        redoc_url=None,
    )
    app.state.context = context
    endpoint = CaptureEndpoint(context.settings, TeamManager(context.pool), context.enqueuer)

    async def capture(request: Request) -> Response:
        return _Delegate(endpoint)

    async def no_flags(request: Request) -> Response:
        return JSONResponse(_NO_FLAGS, headers=cors_headers(request.headers.get("origin")))

    def add_sdk_route(
        path: str, route: Callable[[Request], Awaitable[Response]], summary: str, about: str
    ) -> None:
        """GET and POST at `path` and `path/` (clients post to both; a redirect would lose the body),
        and the CORS preflight."""
        for variant in (path, path + "/"):
            app.add_api_route(
                variant,
                route,
                methods=["GET", "POST"],
                include_in_schema=variant == path,
                summary=summary,
                description=about,
                tags=["capture"],
            )
            app.add_api_route(variant, capture, methods=["OPTIONS"], include_in_schema=False)

    for path in CAPTURE_PATHS:
        add_sdk_route(path, capture, f"Capture events ({path})", CAPTURE_DESCRIPTION)
    for path in FLAGS_PATHS:
        add_sdk_route(
            path,
            no_flags,
            f"Feature flags ({path}): none",
            "PostHog's flags endpoint for the SDKs; this server keeps no feature flags.",
        )

    @app.get("/_health", tags=["health"], summary="The web process is up")
    async def health() -> dict[str, str | int]:
        return {"status": "ok", "pid": os.getpid()}

    @app.get(
        "/_ready",
        tags=["health"],
        summary="Database, Redis, Kafka and ClickHouse (when used) and workers are fine",
    )
    async def ready() -> JSONResponse:
        checks = await readiness(context)
        failed = [name for name, check in checks.items() if not check["ok"]]
        body = {"status": "unavailable" if failed else "ready", "failed": failed, "checks": checks}
        return JSONResponse(body, status_code=503 if failed else 200)

    app.include_router(metrics_routes.router)
    admin.include_operator_api(app, context.settings)
    install_docs(app)
    if context.settings.CONSOLE_ENABLED:
        install_console(app)
    return FrontDoor(app, endpoint)


async def readiness(context: WebContext) -> dict[str, dict[str, Any]]:
    """One entry per dependency: `ok`, and `error` saying why when it is not."""
    probes = {"database": _database_problem(context), "redis": _redis_problem(context)}
    if context.settings.KAFKA_ENABLED or context.settings.EVENT_STORE == "clickhouse-kafka":
        from plugin_server.ingestion.kafka_producer import kafka_ready

        probes["kafka"] = kafka_ready(context.settings)
    if context.reads.probe is not None:
        probes["clickhouse"] = context.reads.probe()
    problems = await asyncio.gather(*(run_check(probe) for probe in probes.values()))
    checks: dict[str, dict[str, Any]] = {
        name: _check(problem) for name, problem in zip(probes, problems, strict=True)
    }
    if context.workers is not None:
        counts = context.workers.read()
        checks["workers"] = {
            **_check(workers_problem(counts)),
            "expected": counts.expected,
            "alive": counts.alive,
            "consuming": counts.consuming,
        }
        settings = context.settings
        checks["sources"] = sources_check(
            counts, kafka_enabled=settings.KAFKA_ENABLED, max_lag=settings.KAFKA_MAX_LAG_READY
        )
    return checks


async def _database_problem(context: WebContext) -> str | None:
    async with context.pool.connection() as connection:
        await connection.execute("SELECT 1")
    return None


async def _redis_problem(context: WebContext) -> str | None:
    await context.redis.ping()
    return None


def _check(problem: str | None) -> dict[str, Any]:
    return {"ok": True} if problem is None else {"ok": False, "error": problem}
