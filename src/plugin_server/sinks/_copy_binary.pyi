from collections.abc import Callable, Sequence
from typing import Any

from plugin_server.ingestion.types import PreparedEvent

def event_rows(
    events: Sequence[PreparedEvent],
    hashes: Sequence[str],
    created_at: int,
    json_bytes: Callable[[Any], bytes],
) -> bytes: ...
