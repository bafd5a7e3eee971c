"""The Celery task `posthog.tasks.plugins.plugin_job`, which PostHog sends to start a plugin job."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from plugin_server.ingestion.celery import PLUGIN_JOB_TASK
from plugin_server.jobs.queue import PluginJob


def job_from_celery_task(args: Sequence[Any]) -> PluginJob:
    """The job for args `[pluginConfigTeam, pluginConfigId, type, jobOp, payload]`, to run now.

    The payload gets `$operation = jobOp`, as in the original. Anything after the five args (the
    kwargs dict the original appended) is ignored. Malformed args raise ValueError."""
    if len(args) < 5:
        raise ValueError(f"{PLUGIN_JOB_TASK} needs 5 args, got {len(args)}")
    team_id, config_id, job_type, operation, payload = args[:5]
    for name, value in (("pluginConfigTeam", team_id), ("pluginConfigId", config_id)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{PLUGIN_JOB_TASK}: {name} must be an integer, got {value!r}")
    if not isinstance(job_type, str):
        raise ValueError(f"{PLUGIN_JOB_TASK}: type must be a string, got {job_type!r}")
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise ValueError(f"{PLUGIN_JOB_TASK}: payload must be an object, got {type(payload).__name__}")
    return PluginJob(
        type=job_type,
        payload={**payload, "$operation": operation},
        plugin_config_id=config_id,
        plugin_config_team=team_id,
        run_at=datetime.now(UTC),
    )
