-- The durable queue of plugin jobs (meta.jobs runNow/runIn/runAt, the Celery task plugin_job) and of
-- scheduled tasks (runEveryMinute/Hour/Day). A job is 'waiting' until a runner claims it ('running',
-- with a lease the runner keeps extending). Success deletes the row; a handler error keeps it as
-- 'failed' with the error text. A 'running' job whose lease ran out (its runner died) goes back to
-- 'waiting', or to 'failed' once it has used up its attempts.
CREATE TABLE IF NOT EXISTS plugin_server_jobs (
    id                  bigserial PRIMARY KEY,
    kind                text NOT NULL CHECK (kind IN ('job', 'schedule')),
    type                text NOT NULL,
    payload             jsonb NULL,
    plugin_config_id    integer NOT NULL,
    team_id             integer NOT NULL,
    run_at              timestamptz NOT NULL,
    status              text NOT NULL DEFAULT 'waiting' CHECK (status IN ('waiting', 'running', 'failed')),
    attempts            integer NOT NULL DEFAULT 0,
    locked_by           text NULL,
    lease_until         timestamptz NULL,
    last_error          text NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz NULL
);
CREATE INDEX IF NOT EXISTS plugin_server_jobs_due ON plugin_server_jobs (run_at) WHERE status = 'waiting';
CREATE INDEX IF NOT EXISTS plugin_server_jobs_lease ON plugin_server_jobs (lease_until) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS plugin_server_jobs_failed ON plugin_server_jobs (finished_at) WHERE status = 'failed';
-- Debounce: a scheduled task of a plugin config is never queued again while a run is waiting or running.
CREATE UNIQUE INDEX IF NOT EXISTS plugin_server_jobs_one_schedule_run
    ON plugin_server_jobs (plugin_config_id, type) WHERE kind = 'schedule' AND status IN ('waiting', 'running');

-- Every (plugin config, task, period) the scheduler has handled, so that the period is scheduled at
-- most once even when two instances both believe they hold the schedule lock.
CREATE TABLE IF NOT EXISTS plugin_server_schedule_periods (
    period_start        timestamptz NOT NULL,
    plugin_config_id    integer NOT NULL,
    task                text NOT NULL,
    PRIMARY KEY (period_start, plugin_config_id, task)
);
