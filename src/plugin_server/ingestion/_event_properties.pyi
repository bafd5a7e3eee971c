from collections.abc import Iterable
from typing import Any

def collect_names(
    events: Iterable[tuple[int, str, dict[str, Any]]],
) -> dict[int, tuple[set[str], set[str], set[str]]]: ...
def campaign_and_initial(
    properties: dict[str, Any], campaign_keys: tuple[str, ...], initial_keys: tuple[tuple[str, str], ...]
) -> None: ...
