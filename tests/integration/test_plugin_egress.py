"""Plugin HTTP reaches only public addresses unless the operator allows more.

Through the real plugin machinery, a JavaScript plugin's fetch is refused on the inside of the network (the
test Postgres and Redis, loopback services, `localhost`, private and metadata addresses) with an error
naming the host and the reason, and reaches loopback once PLUGIN_HTTP_ALLOW_PRIVATE_NETWORKS is on. The
client itself: redirects are checked hop by hop, names resolve once (a stub resolver stands in for DNS)
and the connection goes to the address checked, TLS keeps the host name.
"""

from __future__ import annotations

import json
import ssl
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import httpcore
import httpx
import psycopg
import pytest
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from plugin_server.db.teams import CreatedTeam
from plugin_server.plugins.admin import enable_plugin, install_plugin
from plugin_server.plugins.egress import ForbiddenDestination
from plugin_server.plugins.egress.addresses import EgressPolicy, IPAddress
from plugin_server.plugins.egress.client import GuardedBackend, guarded_client, system_resolver
from plugin_server.plugins.run import PluginRunner
from tests.loopback import LoopbackService, Request
from tests.plugin_hosts import running_plugins

Db = psycopg.Connection[Any]

FETCH_ALL = """
async function processEvent(event, { config }) {
    const outcomes = {}
    for (const url of JSON.parse(config.urls)) {
        try {
            outcomes[url] = `status ${(await fetch(url)).status}`
        } catch (error) {
            outcomes[url] = `${error.name}: ${error.message}`
        }
    }
    event.properties.outcomes = outcomes
    return event
}
module.exports = { processEvent }
"""


def _ok(_: Request) -> tuple[int, bytes]:
    return 200, b'{"ok": true}'


@pytest.fixture(scope="module")
def service() -> Iterator[LoopbackService]:
    with LoopbackService(_ok) as stub:
        yield stub


@pytest.fixture(autouse=True)
def forget_requests(service: LoopbackService) -> None:
    service.requests.clear()


async def run_in_host(
    db: Db,
    tmp_path: Path,
    team: CreatedTeam,
    pool: AsyncConnectionPool[Any],
    redis: Any,
    source: str,
    config: dict[str, str],
    **env: Any,
) -> dict[str, Any]:
    """The properties of an event after the JS plugin `source` processed it, in a worker's plugin
    machinery with settings `env`."""
    folder = tmp_path / f"plugin-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    (folder / "plugin.json").write_text(json.dumps({"name": "egress", "main": "index.js"}))
    (folder / "index.js").write_text(textwrap.dedent(source))
    enable_plugin(db, install_plugin(db, folder), team.team_id, config)
    async with running_plugins(pool, redis, **env) as running:
        await running.plugins.registry.reload()
        event = {"uuid": str(uuid.uuid4()), "event": "e", "distinct_id": "d", "team_id": team.team_id}
        [processed] = await PluginRunner(running.plugins.registry, running.services.hung).process_events(
            [{**event, "properties": {}}]
        )
    assert processed is not None
    properties: dict[str, Any] = processed["properties"]
    return properties


async def fetch_with_host(
    db: Db,
    tmp_path: Path,
    team: CreatedTeam,
    pool: AsyncConnectionPool[Any],
    redis: Any,
    urls: list[str],
    **env: Any,
) -> dict[str, str]:
    """What `fetch` gave for each url, in a JS plugin run with settings `env`."""
    properties = await run_in_host(
        db, tmp_path, team, pool, redis, FETCH_ALL, {"urls": json.dumps(urls)}, **env
    )
    outcomes: dict[str, str] = properties["outcomes"]
    return outcomes


async def inside_urls(db: Db, redis: aioredis.Redis, service: LoopbackService) -> dict[str, str]:
    """The inside of the network a plugin must not reach by default: url -> the reason expected."""
    postgres_port = db.execute("SHOW port").fetchone()[0]  # type: ignore[index]
    redis_port = (await redis.config_get("port"))["port"]
    return {
        f"http://127.0.0.1:{postgres_port}/": "loopback",
        f"http://127.0.0.1:{redis_port}/": "loopback",
        f"{service.url}/data": "loopback",
        f"http://localhost:{service.port}/data": "loopback",
        f"http://2130706433:{service.port}/": "loopback",
        f"http://[::ffff:127.0.0.1]:{service.port}/": "loopback",
        "http://169.254.169.254/latest/meta-data/": "the cloud metadata service",
        "http://10.1.2.3/": "a private network address",
        "http://[fd00::1]/": "a private network address (unique local)",
        "http://100.100.100.200/": "shared address space (CGNAT)",
    }


async def test_a_plugin_cannot_reach_the_inside_of_the_network_by_default(
    clean_db: Db,
    tmp_path: Path,
    team: CreatedTeam,
    pool: AsyncConnectionPool[Any],
    aredis: aioredis.Redis,
    service: LoopbackService,
) -> None:
    expected = await inside_urls(clean_db, aredis, service)

    outcomes = await fetch_with_host(clean_db, tmp_path, team, pool, aredis, list(expected))

    for url, reason in expected.items():
        host = httpx.URL(url).host
        assert outcomes[url].startswith(
            f"FetchError: request to {url} failed, reason: plugin HTTP may not connect to {host}"
        ), outcomes[url]
        assert reason in outcomes[url] and "PLUGIN_HTTP_ALLOW_PRIVATE_NETWORKS" in outcomes[url]
    assert "localhost (127.0.0.1)" in outcomes[f"http://localhost:{service.port}/data"]
    assert service.requests == []


async def test_allow_private_networks_lets_a_plugin_reach_loopback(
    clean_db: Db,
    tmp_path: Path,
    team: CreatedTeam,
    pool: AsyncConnectionPool[Any],
    aredis: aioredis.Redis,
    service: LoopbackService,
) -> None:
    urls = [f"{service.url}/a", f"http://localhost:{service.port}/b"]

    outcomes = await fetch_with_host(
        clean_db, tmp_path, team, pool, aredis, urls, PLUGIN_HTTP_ALLOW_PRIVATE_NETWORKS=True
    )

    assert outcomes == dict.fromkeys(urls, "status 200")
    assert [request.path for request in service.requests] == ["/a", "/b"]


async def test_allowed_networks_open_only_those_networks(
    clean_db: Db,
    tmp_path: Path,
    team: CreatedTeam,
    pool: AsyncConnectionPool[Any],
    aredis: aioredis.Redis,
    service: LoopbackService,
) -> None:
    with LoopbackService(_ok, host="127.0.0.2") as other:
        urls = [f"{service.url}/a", f"{other.url}/b"]

        outcomes = await fetch_with_host(
            clean_db, tmp_path, team, pool, aredis, urls, PLUGIN_HTTP_ALLOWED_NETWORKS="10.0.0.0/8, 127.0.0.1"
        )

        assert outcomes[urls[0]] == "status 200"
        assert "may not connect to 127.0.0.2: it is a loopback address" in outcomes[urls[1]]
        assert other.requests == []


POSTHOG_AND_FETCH = """
async function processEvent(event, { config }) {
    const attempt = async (name, call) => {
        try {
            event.properties[name] = `status ${(await call()).status}`
        } catch (error) {
            event.properties[name] = `${error.name}: ${error.message}`
        }
    }
    const ownKeys = { projectApiKey: 'phc_own', personalApiKey: 'phx_own' }
    await attempt('api', () => posthog.api.get('/api/projects/@current'))
    await attempt('fetch', () => fetch(`${config.posthog}/fetched`))
    await attempt('own keys elsewhere', () => posthog.api.get('/api/x', { host: config.other, ...ownKeys }))
    await attempt('bot key elsewhere', () => posthog.api.get('/api/x', { host: config.other }))
    return event
}
module.exports = { processEvent }
"""


async def test_posthog_api_reaches_the_configured_host_and_only_it_unchecked(
    clean_db: Db,
    tmp_path: Path,
    team: CreatedTeam,
    pool: AsyncConnectionPool[Any],
    aredis: aioredis.Redis,
    service: LoopbackService,
) -> None:
    """POSTHOG_API_HOST on loopback works without any allowance (the operator chose it); the same
    service through fetch, or another loopback host through posthog.api, does not."""
    with LoopbackService(_ok) as other:
        config = {"posthog": service.url, "other": other.url}
        outcome = await run_in_host(
            clean_db, tmp_path, team, pool, aredis, POSTHOG_AND_FETCH, config, POSTHOG_API_HOST=service.url
        )
        assert other.requests == []

    assert outcome["api"] == "status 200"
    [request] = service.requests
    assert request.path == "/api/projects/@current" and request.headers["authorization"].startswith(
        "Bearer phx_"
    )
    assert "may not connect to 127.0.0.1: it is a loopback address" in outcome["fetch"]
    assert "may not connect to 127.0.0.1: it is a loopback address" in outcome["own keys elsewhere"]
    assert f"sends the organization's API key only to {service.url}" in outcome["bot key elsewhere"]


# ---------------------------------------------------------------------- the client itself


@dataclass
class StubDns:
    """A resolver for names of our own: each lookup answers the next of the name's answers (the last
    one again once they run out), and is counted."""

    answers: dict[str, list[list[str]]]
    lookups: int = 0

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.lookups += 1
        given = self.answers[host]
        return [ip_address(address) for address in (given.pop(0) if len(given) > 1 else given[0])]


def client(
    dns: StubDns | None = None, *, allowed: str = "", verify: ssl.SSLContext | bool = True
) -> httpx.AsyncClient:
    networks = tuple(ip_network(part) for part in allowed.split(",") if part)
    backend = GuardedBackend(EgressPolicy(allowed_networks=networks), resolver=dns or system_resolver)
    return guarded_client(backend, timeout=5, verify=verify)


@pytest.fixture
def forbidden_target() -> Iterator[LoopbackService]:
    """A service on 127.0.0.2, which the tests' policy (127.0.0.1 allowed) forbids."""
    with LoopbackService(_ok, host="127.0.0.2") as target:
        yield target


@pytest.mark.parametrize(
    "location",
    [
        "http://127.0.0.2:{port}/inside",
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://0x7f000002:{port}/inside",
        "http://internal.stub.test:{port}/inside",
    ],
)
async def test_a_redirect_from_an_allowed_host_to_a_forbidden_one_is_refused(
    service: LoopbackService, forbidden_target: LoopbackService, location: str
) -> None:
    target = location.format(port=forbidden_target.port)
    dns = StubDns({"internal.stub.test": [["127.0.0.2"]]})
    with LoopbackService(lambda _: (302, b""), {"Location": target}) as redirector:
        async with client(dns, allowed="127.0.0.1/32") as http:
            with pytest.raises(ForbiddenDestination, match="may not connect to") as refused:
                await http.get(f"{redirector.url}/start")
            followed = await http.get(f"{redirector.url}/start", follow_redirects=False)

    assert httpx.URL(target).host in str(refused.value)
    assert [request.path for request in redirector.requests] == ["/start", "/start"]
    assert followed.status_code == 302 and forbidden_target.requests == []


async def test_a_redirect_to_an_allowed_host_is_followed(service: LoopbackService) -> None:
    with LoopbackService(lambda _: (302, b""), {"Location": f"{service.url}/landed"}) as redirector:
        async with client(allowed="127.0.0.1/32") as http:
            response = await http.get(f"{redirector.url}/start")

    assert response.status_code == 200 and response.url == f"{service.url}/landed"
    assert [request.path for request in service.requests] == ["/landed"]


@pytest.mark.parametrize(
    ("answer", "named"),
    [
        (["127.0.0.1"], "name.stub.test (127.0.0.1): it is a loopback address"),
        (["93.184.215.14", "10.0.0.7"], "name.stub.test (10.0.0.7): it is a private network address"),
        (["2606:2800:21f:cb07:6820:80da:af6b:8b2c", "fe80::1"], "(fe80::1): it is a link-local address"),
    ],
)
async def test_a_name_is_refused_when_any_of_its_addresses_is_forbidden(
    answer: list[str], named: str
) -> None:
    """No connection is tried, not even to the public address among the answers."""
    dns = StubDns({"name.stub.test": [answer]})
    async with client(dns) as http:
        with pytest.raises(ForbiddenDestination, match=named.replace("(", r"\(").replace(")", r"\)")):
            await http.get("http://name.stub.test/")
    assert dns.lookups == 1


async def test_localhost_through_the_system_resolver_is_refused(service: LoopbackService) -> None:
    async with client() as http:
        with pytest.raises(
            ForbiddenDestination, match=r"may not connect to localhost \(.*\): it is a loopback"
        ):
            await http.get(f"http://localhost:{service.port}/")
    assert service.requests == []


async def test_the_connection_goes_to_the_address_checked(service: LoopbackService) -> None:
    """The name is looked up once per connection, by the guard: the second answer (a rebinding to a
    forbidden address) refuses the next connection instead of slipping under the check, and the
    system resolver, which knows nothing of the name, is never asked."""
    dns = StubDns({"rebind.stub.test": [["127.0.0.1"], ["127.0.0.2"]]})
    async with client(dns, allowed="127.0.0.1/32") as http:
        first = await http.get(f"http://rebind.stub.test:{service.port}/first")
        with pytest.raises(ForbiddenDestination, match=r"rebind.stub.test \(127.0.0.2\)"):
            await http.get(f"http://rebind.stub.test:{service.port}/second")  # the service closed the first

    assert first.status_code == 200 and dns.lookups == 2
    [request] = service.requests
    assert request.path == "/first" and request.headers["host"] == f"rebind.stub.test:{service.port}"


async def test_the_next_checked_address_is_tried_when_one_refuses(service: LoopbackService) -> None:
    dns = StubDns({"two.stub.test": [["127.0.0.2", "127.0.0.1"]]})  # nothing listens on 127.0.0.2
    async with client(dns, allowed="127.0.0.0/8") as http:
        response = await http.get(f"http://two.stub.test:{service.port}/both")

    assert response.status_code == 200 and [request.path for request in service.requests] == ["/both"]


class _Recorded(Exception):
    pass


class RecordingNetwork(httpcore.AsyncNetworkBackend):
    """Records where the guard connects and the name TLS is started for, then stops the request."""

    def __init__(self) -> None:
        self.connected: list[tuple[str, int]] = []
        self.tls_names: list[str | None] = []

    async def connect_tcp(
        self, host: str, port: int, *args: Any, **kwargs: Any
    ) -> httpcore.AsyncNetworkStream:
        self.connected.append((host, port))
        network = self

        class Stream(httpcore.AsyncNetworkStream):
            async def start_tls(
                self,
                ssl_context: ssl.SSLContext,
                server_hostname: str | None = None,
                timeout: float | None = None,
            ) -> httpcore.AsyncNetworkStream:
                network.tls_names.append(server_hostname)
                raise _Recorded

            async def aclose(self) -> None:
                pass

        return Stream()


async def test_tls_is_checked_against_the_host_name_not_the_address() -> None:
    network = RecordingNetwork()
    dns = StubDns({"api.stub.test": [["93.184.215.14"]]})
    backend = GuardedBackend(EgressPolicy(), resolver=dns, inner=network)
    async with guarded_client(backend, timeout=5) as http:
        with pytest.raises(_Recorded):
            await http.get("https://api.stub.test/v1")

    assert network.connected == [("93.184.215.14", 443)] and network.tls_names == ["api.stub.test"]


async def test_a_name_that_does_not_resolve_is_a_connect_error() -> None:
    async def nowhere(host: str, port: int) -> list[IPAddress]:
        raise OSError("Name or service not known")

    backend = GuardedBackend(EgressPolicy(), resolver=nowhere)
    async with guarded_client(backend, timeout=5) as http:
        with pytest.raises(httpx.ConnectError, match=r"nowhere\.stub\.test could not be resolved") as error:
            await http.get("http://nowhere.stub.test/")
    assert not isinstance(error.value, ForbiddenDestination)
