"""A job runner process for test_job_survives_kill: `python job_runner.py DATABASE_URL SLEEP_SECONDS`.

Its handler records each start and end of a job in `e2e_job_runs`, sleeping in between."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from psycopg.types.json import Jsonb

from plugin_server.db.postgres import open_pool
from plugin_server.jobs.queue import JobQueue, PluginJob

LEASE_SECONDS = 0.5


async def main(database_url: str, sleep_seconds: float) -> None:
    pool = await open_pool(database_url)
    queue = JobQueue(pool, lease_seconds=LEASE_SECONDS, poll_interval=0.05)

    async def record(job: PluginJob, event: str) -> None:
        async with pool.connection() as connection:
            await connection.execute(
                "INSERT INTO e2e_job_runs (pid, event, payload) VALUES (%s, %s, %s)",
                (os.getpid(), event, Jsonb(job.payload)),
            )

    async def handler(job: PluginJob) -> None:
        await record(job, "start")
        await asyncio.sleep(sleep_seconds)
        await record(job, "done")

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await queue.run_forever(handler, stop_event=stop)
    finally:
        await pool.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
