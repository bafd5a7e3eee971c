"""The runtime's own JS files are loaded without comment lines and indentation (engine.js_source):
that is safe only while no template literal or string in them goes on to a next line."""

from __future__ import annotations

from pathlib import Path

import pytest

from plugin_server.plugins.js import engine

FILES = sorted(Path(engine.__file__).parent.glob("*.js"))


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.name)
def test_no_text_goes_on_to_a_next_line(path: Path) -> None:
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if line.lstrip().startswith("//"):
            continue
        assert line.count("`") % 2 == 0, f"{path.name}:{number} starts or ends a template literal"
        assert not line.endswith("\\"), f"{path.name}:{number} continues a string"


def test_lines_keep_their_numbers_and_comments_go() -> None:
    original = (FILES[0].parent / "prelude.js").read_text(encoding="utf-8").split("\n")
    loaded = engine.js_source("prelude").split("\n")
    assert len(loaded) == len(original)
    assert not any(line.startswith(("//", " ")) for line in loaded)
    assert len("\n".join(loaded)) < 0.8 * len("\n".join(original))
