"""The table of runtimes covers every language the loader tells plugins apart by."""

from __future__ import annotations

from typing import get_args

from plugin_server.plugins.loader import LANGUAGES
from plugin_server.plugins.models import Language
from plugin_server.plugins.runtimes import RUNTIMES


def test_every_language_has_a_runtime() -> None:
    assert set(LANGUAGES.values()) == set(get_args(Language)) == set(RUNTIMES)
