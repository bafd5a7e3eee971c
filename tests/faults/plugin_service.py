"""A plugin's outside service that hangs on demand, and the JavaScript plugin that exports to it."""

from __future__ import annotations

import threading

import orjson

from tests.loopback import Request

EXPORTER = """
import { RetryError } from '@posthog/plugin-scaffold'

export async function exportEvents(events, { config }) {
    let response
    try {
        response = await fetch(config.url, {
            method: 'POST',
            headers: { 'Content-Type': 'application/json' },
            body: JSON.stringify(events.map((event) => event.properties.n)),
        })
    } catch (error) {
        throw new RetryError(`the service did not answer: ${error.message}`)
    }
    if (!response.ok) {
        throw new RetryError(`the service answered ${response.status}`)
    }
}
"""


class HangingService:
    """Answers 200 and keeps the numbers exported, except while `hanging`: then a request waits until
    the hang ends and gets a 503 (its sender has long given up by then)."""

    def __init__(self) -> None:
        self.up = threading.Event()
        self.up.set()
        self.delivered: set[int] = set()
        self.hung = 0

    def answer(self, request: Request) -> tuple[int, bytes]:
        if not self.up.is_set():
            self.hung += 1
            self.up.wait(60)
            return 503, b"{}"
        try:
            numbers = orjson.loads(request.body)
        except orjson.JSONDecodeError:  # a sender killed while sending
            return 400, b"{}"
        self.delivered.update(numbers)
        return 200, b"{}"
