"""Which of the modules the runtime provides (`require('pg')`...) an isolate sets up: only those its
plugin's files require by name, and what they need.

Setting every module up in every isolate cost about a fifth of an idle isolate's memory, for modules
most plugins never require. A module is required by name when the transpiled code holds
`require('<name>')` with a literal (modules.py reads them); a plugin that computes the name of a
module that is not set up gets an error that says to write it out (prelude.js).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Provided:
    """One of the runtime's JS files: the module names it provides (a name ending in "/" names every
    module under it), and the files it needs set up first."""

    file: str
    names: tuple[str, ...]
    needs: tuple[str, ...] = ()


# The prelude's own arguments (contrib, zlib), then its `libraries` in the order they are set up.
# url and crypto are not here: every isolate has them (URL is a global, crypto the module plugins most
# often require, also by computed names).
CORE = (
    Provided("contrib", ("@posthog/plugin-contrib",)),
    Provided("zlib", ("zlib",)),
)
LIBRARIES = (
    Provided("stream", ("stream",)),
    Provided("pool", ("generic-pool",), ("stream",)),
    Provided("pg", ("pg",), ("stream",)),
    Provided("aws", ("aws-sdk", "aws-sdk/clients/"), ("stream",)),
    Provided("jwt", ("jsonwebtoken",)),
    Provided("faker", ("faker",)),
    Provided(
        "google", ("@google-cloud/bigquery", "@google-cloud/pubsub", "@google-cloud/storage"), ("stream",)
    ),
    Provided("snowflake", ("snowflake-sdk",)),
)
_BY_FILE = {provided.file: provided for provided in (*CORE, *LIBRARIES)}


def _provides(provided: Provided, name: str) -> bool:
    bare = name.removeprefix("node:")
    return any(bare == own or (own.endswith("/") and bare.startswith(own)) for own in provided.names)


def needed_files(required: Collection[str] | None) -> frozenset[str]:
    """The files to set up for a plugin that requires `required` by name (None: every file)."""
    if required is None:
        return frozenset(_BY_FILE)
    pending = [
        provided.file for provided in _BY_FILE.values() if any(_provides(provided, n) for n in required)
    ]
    needed: set[str] = set()
    while pending:
        file = pending.pop()
        if file not in needed:
            needed.add(file)
            pending.extend(_BY_FILE[file].needs)
    return frozenset(needed)


def names_not_set_up(needed: Iterable[str]) -> list[str]:
    """The module names (and "/" prefixes) of the files not in `needed`, for the prelude's error."""
    chosen = set(needed)
    return sorted(
        name for provided in _BY_FILE.values() if provided.file not in chosen for name in provided.names
    )
