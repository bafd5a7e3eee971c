"""Fixtures of the fault tests: servers of their own where a fault stops one (never the session's)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.services import PrivatePostgres, PrivateValkey


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A Postgres of this test alone (migrated, with team 2), which the test may stop and start."""
    with tempfile.TemporaryDirectory(prefix="plugin-server-fault-pg-") as folder:
        os.chmod(folder, 0o755)  # the embedded Postgres runs as an unprivileged user when we are root
        postgres = PrivatePostgres(Path(folder) / "pgdata")
        try:
            yield postgres
        finally:
            postgres.close()


@pytest.fixture
def private_valkey(tmp_path: Path) -> Iterator[PrivateValkey]:
    """A Valkey of this test alone, with append-only persistence, which the test may kill and start."""
    valkey = PrivateValkey(tmp_path / "valkey")
    try:
        yield valkey
    finally:
        valkey.close()
