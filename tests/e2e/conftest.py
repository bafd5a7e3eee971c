from __future__ import annotations

from pathlib import Path

import pytest

from plugin_server.db.teams import CreatedTeam

from .plugin_stack import Db, Stack


@pytest.fixture
def stack(tmp_path: Path, database_url: str, redis_url: str, team: CreatedTeam, clean_db: Db) -> Stack:
    return Stack(tmp_path, database_url, redis_url, team, clean_db)
