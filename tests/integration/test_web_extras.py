"""What a newcomer's browser asks of the web server besides capture: the SDKs' flags endpoints."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.test_console import anonymous, client_for

__all__ = ["anonymous", "client_for"]  # fixtures


@pytest.mark.parametrize("path", ["/decide", "/decide/", "/flags", "/flags/"])
async def test_decide_and_flags_answer_no_flags(anonymous: httpx.AsyncClient, path: str) -> None:
    origin = {"Origin": "https://shop.example"}
    answer = await anonymous.post(
        path, params={"v": "3"}, content=b"data=eyJ0b2tlbiI6InBoYyJ9", headers=origin
    )
    assert answer.status_code == 200
    body = answer.json()
    assert (body["featureFlags"], body["flags"], body["errorsWhileComputingFlags"]) == ({}, {}, False)
    assert body["sessionRecording"] is False
    assert answer.headers["access-control-allow-origin"] == "https://shop.example"
    assert (await anonymous.get(path, headers=origin)).json()["featureFlags"] == {}
    preflight = await anonymous.options(path, headers={**origin, "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://shop.example"
