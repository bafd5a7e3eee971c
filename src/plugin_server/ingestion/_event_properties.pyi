from collections.abc import Iterable
from typing import Any

def collect_names(
    events: Iterable[tuple[int, str, dict[str, Any]]],
) -> dict[int, tuple[set[str], set[str], set[str]]]: ...
def campaign_and_initial(
    properties: dict[str, Any], campaign: tuple[tuple[str, str], ...], initial: tuple[tuple[str, str], ...]
) -> None: ...
