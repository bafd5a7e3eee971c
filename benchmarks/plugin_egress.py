"""What the egress guard of plugin HTTP costs: the address check alone, and whole requests on a new
connection each (the only requests it touches: a pooled connection was checked when it was made)
through plugin HTTP and through a plain httpx client, to a small HTTP server on loopback.

    .venv/bin/python -m benchmarks.plugin_egress --requests 50 --runs 40
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from ipaddress import ip_network

import httpx

from plugin_server.plugins.egress.addresses import EgressPolicy, parse_ip
from plugin_server.plugins.egress.client import GuardedBackend, guarded_client

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
# Loopback stands in for the internet here, so the policy allows it (the check still runs).
POLICY = EgressPolicy(allowed_networks=(ip_network("127.0.0.0/8"), ip_network("::1/128")))


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(ANSWER)
    await writer.drain()
    writer.close()


def check_microseconds(count: int = 200_000) -> float:
    """parse_ip + refusal for a public address, the work the guard adds for an IP literal."""
    started = time.perf_counter()
    for _ in range(count):
        address = parse_ip("93.184.215.14")
        assert address is not None and POLICY.refusal(address) is None
    return (time.perf_counter() - started) / count * 1e6


async def request_microseconds(client: httpx.AsyncClient, url: str, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        response = await client.get(url)
        assert response.status_code == 200
    return (time.perf_counter() - started) / count * 1e6


async def main(requests: int, runs: int) -> None:
    server = await asyncio.start_server(_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"check of an address: {check_microseconds():.2f} µs")
    async with (
        httpx.AsyncClient(trust_env=False) as plain,
        guarded_client(GuardedBackend(POLICY), timeout=5) as guarded,
    ):
        for host in ("127.0.0.1", "localhost"):
            url = f"http://{host}:{port}/"
            timings: dict[str, list[float]] = {"plain": [], "guarded": []}
            for _ in range(runs):  # alternated, so both see the same machine
                timings["plain"].append(await request_microseconds(plain, url, requests))
                timings["guarded"].append(await request_microseconds(guarded, url, requests))
            plain_median, guarded_median = (statistics.median(timings[name]) for name in ("plain", "guarded"))
            print(
                f"{host}: plain httpx {plain_median:.0f} µs/request, plugin HTTP {guarded_median:.0f} µs/request "
                f"(new connection each; difference {guarded_median - plain_median:+.0f} µs, "
                f"{(guarded_median / plain_median - 1) * 100:+.1f} %)"
            )
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--runs", type=int, default=40)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.requests, arguments.runs))
