"""Sentry: a process set up by the server sends its ERROR lines and its unhandled exception to SENTRY_DSN
(here a loopback stand-in for sentry.io that records the envelopes)."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import textwrap
from typing import Any

import brotli
import orjson

from tests.loopback import LoopbackService, Request

PROCESS = textwrap.dedent(
    """
    import logging
    from structlog.contextvars import bound_contextvars
    from plugin_server.config import load_settings
    from plugin_server.services.observability import setup_process

    setup_process(load_settings(), "worker-3")
    log = logging.getLogger("plugin_server.test")
    log.warning("only a breadcrumb")
    with bound_contextvars(team_id=2, plugin_config_id=7):
        log.error("plugin %s exploded", "geoip")
    raise RuntimeError("unhandled at the top")
    """
)


def envelope_events(request: Request) -> list[dict[str, Any]]:
    decompress = {"gzip": gzip.decompress, "br": brotli.decompress, None: bytes}
    body = decompress[request.headers.get("content-encoding")](request.body)
    lines = body.split(b"\n")
    events = []
    for header, payload in zip(lines[1::2], lines[2::2], strict=False):
        if orjson.loads(header).get("type") == "event":
            events.append(orjson.loads(payload))
    return events


def test_error_lines_and_unhandled_exceptions_reach_sentry() -> None:
    with LoopbackService(lambda _: (200, b"{}")) as sentry:
        host_port = sentry.url.removeprefix("http://")
        env = {**os.environ, "SENTRY_DSN": f"http://public@{host_port}/42", "LOG_FORMAT": "json"}
        env.pop("STATSD_HOST", None)
        result = subprocess.run(
            [sys.executable, "-c", PROCESS], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        requests = list(sentry.requests)
    assert result.returncode == 1
    assert "unhandled at the top" in result.stderr
    assert {request.path for request in requests} == {"/api/42/envelope/"}
    events = [event for request in requests for event in envelope_events(request)]
    logged, unhandled = events

    assert logged["logentry"]["formatted"] == "plugin geoip exploded"
    assert logged["level"] == "error"
    assert logged["tags"] == {"process": "worker-3", "team_id": "2", "plugin_config_id": "7"}
    assert [crumb["message"] for crumb in logged["breadcrumbs"]["values"]] == ["only a breadcrumb"]
    assert logged["release"].startswith("plugin-server@")

    (exception,) = unhandled["exception"]["values"]
    assert (exception["type"], exception["value"]) == ("RuntimeError", "unhandled at the top")
    assert exception["mechanism"]["type"] == "excepthook"
    assert unhandled["tags"]["process"] == "worker-3"


def test_nothing_is_sent_without_a_dsn() -> None:
    with LoopbackService(lambda _: (200, b"{}")) as sentry:
        env = {k: v for k, v in os.environ.items() if k != "SENTRY_DSN"}
        script = PROCESS.replace(
            "raise RuntimeError", "import sentry_sdk; print(sentry_sdk.is_initialized()) #"
        )
        result = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
        )
        assert sentry.requests == []
    assert result.stdout.strip() == "False"
