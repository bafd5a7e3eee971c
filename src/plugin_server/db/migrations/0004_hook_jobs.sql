-- Webhook and REST hook deliveries ride the job queue as kind 'hook' (plugin_config_id 0: no plugin).
ALTER TABLE plugin_server_jobs DROP CONSTRAINT IF EXISTS plugin_server_jobs_kind_check;
ALTER TABLE plugin_server_jobs ADD CONSTRAINT plugin_server_jobs_kind_check
    CHECK (kind IN ('job', 'schedule', 'hook'));
