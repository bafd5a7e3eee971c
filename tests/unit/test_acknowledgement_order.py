"""Acknowledgements in claim order per team (ordering.Turn): a later batch of a team acknowledges only
after the earlier ones did or gave up, so that a dead worker's redelivered batches all come after
what it acknowledged."""

from __future__ import annotations

import asyncio

from plugin_server.ingestion.ordering import Turn, Turnstile

TEAM_A, TEAM_B = 2, 3


async def declared(turnstile: Turnstile, *teams: int) -> Turn:
    turn = turnstile.ticket()
    await turn.declare(teams)
    return turn


async def waits(turn: Turn, teams: list[int] | None = None) -> bool:
    """Whether `wait_to_acknowledge` is still waiting after the loop had time to run everything ready."""
    waiting = asyncio.ensure_future(turn.wait_to_acknowledge(teams))
    await asyncio.sleep(0.01)
    still = not waiting.done()
    waiting.cancel()
    return still


async def test_a_later_batch_of_a_team_acknowledges_after_the_earlier_one() -> None:
    turnstile = Turnstile()
    first, second = await declared(turnstile, TEAM_A), await declared(turnstile, TEAM_A)
    await first.finish()  # the person step's turn is handed on: the acknowledgement's is not
    assert await waits(second)
    first.acknowledged()
    assert not await waits(second)


async def test_other_teams_do_not_wait() -> None:
    turnstile = Turnstile()
    await declared(turnstile, TEAM_A)
    assert not await waits(await declared(turnstile, TEAM_B))


async def test_a_team_set_aside_is_acknowledged_on_its_own() -> None:
    """The earlier batch acknowledges its other teams: the set-aside team's later batches still wait for
    the set-aside part's acknowledgement."""
    turnstile = Turnstile()
    first = await declared(turnstile, TEAM_A, TEAM_B)
    first.set_aside([TEAM_A])
    later_a, later_b = await declared(turnstile, TEAM_A), await declared(turnstile, TEAM_B)
    first.acknowledged()  # the batch itself: team B
    assert not await waits(later_b)
    assert await waits(later_a)
    first.acknowledged([TEAM_A])  # its set-aside part
    assert not await waits(later_a)


async def test_acknowledgements_chain_through_every_earlier_batch() -> None:
    """A batch that acknowledged early still holds the later ones until every earlier one did."""
    turnstile = Turnstile()
    first, second, third = [await declared(turnstile, TEAM_A) for _ in range(3)]
    second.acknowledged()
    assert await waits(third)
    first.acknowledged()
    assert not await waits(third)
