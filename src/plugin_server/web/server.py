"""The web process: the capture API, health, metrics and operator API on WEB_HOSTNAME:WEB_PORT.

Started by the supervisor (multiprocessing spawn, with the resolved DATABASE_URL and REDIS_URL in its
environment), restarted by it when it dies, stopped with SIGTERM, on which uvicorn finishes the
requests in flight first.
"""

from __future__ import annotations

import contextlib
import logging
import socket

import uvicorn

from plugin_server.config import Settings, load_settings
from plugin_server.db.postgres import open_pool
from plugin_server.db.redis import open_redis
from plugin_server.ingestion.enqueue import open_enqueuer
from plugin_server.process_signals import obey_only_the_supervisor
from plugin_server.services.gc_tuning import tune_garbage_collector
from plugin_server.services.observability import setup_process
from plugin_server.topology import open_reads
from plugin_server.web.app import create_app
from plugin_server.web.context import WebContext
from plugin_server.web.health import WorkerStatus
from plugin_server.web.http_protocol import HttpProtocol

log = logging.getLogger(__name__)


async def serve(settings: Settings, workers: WorkerStatus | None = None) -> None:
    assert settings.database_url and settings.redis_url, "the supervisor resolves both URLs"
    async with contextlib.AsyncExitStack() as stack:
        pool = await open_pool(settings.database_url, min_size=1, max_size=8)
        stack.push_async_callback(pool.close)
        redis_client = await open_redis(
            settings.redis_url, min_size=settings.REDIS_POOL_MIN_SIZE, max_size=settings.REDIS_POOL_MAX_SIZE
        )
        stack.push_async_callback(redis_client.aclose)
        enqueuer = open_enqueuer(settings, redis_client)
        stack.push_async_callback(enqueuer.close)
        reads = await stack.enter_async_context(open_reads(settings, settings.database_url))
        app = create_app(WebContext(settings, pool, redis_client, enqueuer, workers, reads=reads))
        config = uvicorn.Config(
            app,
            host=settings.WEB_HOSTNAME,
            port=settings.WEB_PORT,
            log_config=None,  # our logging setup, not uvicorn's
            access_log=False,  # one line per captured request would drown everything else
            proxy_headers=False,  # the capture API reads X-Forwarded-For itself, from TRUSTED_PROXIES only
            lifespan="off",
            http=HttpProtocol,  # httptools, with each answer's head and body in one write
            # No `server: uvicorn` on every answer: it tells a scanner what runs here, and uvicorn checks
            # and copies each header of each answer in Python. `date` stays: HTTP requires it.
            server_header=False,
        )
        listening = shared_socket(settings.WEB_HOSTNAME, settings.WEB_PORT)
        stack.callback(listening.close)
        tune_garbage_collector()  # start-up is done: the app, its pools and imports live as long as we do
        log.info("starting the web server on http://%s:%d", settings.WEB_HOSTNAME, settings.WEB_PORT)
        if settings.CONSOLE_ENABLED:
            log.info(
                "the operator's console is at http://%s:%d/console%s",
                "localhost" if settings.WEB_HOSTNAME in ("0.0.0.0", "::") else settings.WEB_HOSTNAME,
                settings.WEB_PORT,
                "" if settings.ADMIN_TOKEN else " (set ADMIN_TOKEN to log in)",
            )
        await uvicorn.Server(config).serve(sockets=[listening])


def shared_socket(host: str, port: int) -> socket.socket:
    """A listening socket that the other web processes (WEB_CONCURRENCY) bind to as well: with
    SO_REUSEPORT the kernel spreads the connections over them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listening = socket.socket(family, socket.SOCK_STREAM)
    try:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listening.bind((host, port))
        listening.listen(2048)
        listening.set_inheritable(True)
    except BaseException:
        listening.close()
        raise
    return listening


def port_taken(host: str, port: int) -> str | None:
    """Why the web server cannot listen on host:port (another program holds it), or None.

    Checked once before anything starts, so that a busy WEB_PORT stops the start with this message
    instead of the web process failing and being restarted again and again.
    """
    if port == 0:
        return None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed connection's TIME_WAIT is fine
        try:
            probe.bind((host, port))
        except OSError as error:
            return (
                f"cannot listen on {host}:{port} (WEB_PORT): {error.strerror}. Another program (or another "
                "plugin-server) is using it: stop it, or set WEB_PORT to a free port "
                "(DISABLE_WEB=true runs without the web server)"
            )
    return None


def web_main(workers: WorkerStatus | None = None) -> None:
    """Entry point of the web process."""
    settings = load_settings()
    setup_process(settings, "web")
    obey_only_the_supervisor()
    import uvloop

    uvloop.run(serve(settings, workers))
    log.info("web server stopped")
