"""GET /metrics: every process's metrics in the Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter, Response

from plugin_server.services.metrics import CONTENT_TYPE, render

router = APIRouter()


@router.get("/metrics", summary="Prometheus metrics of the supervisor, the web process and every worker")
def metrics() -> Response:
    # A plain (sync) route: FastAPI runs it in a thread, so reading the files does not block the loop.
    return Response(render(), media_type=CONTENT_TYPE)
