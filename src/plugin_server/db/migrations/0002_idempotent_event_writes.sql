-- Columns and indexes of this server's own, added beside PostHog's. An event keeps the uuid it was
-- ingested with, so that a redelivered message (after a worker died before acknowledging it) stores
-- nothing twice: the unique index turns the second insert into a no-op. Rows written by PostHog or
-- the Node server have a NULL uuid, which the unique index allows any number of times.
ALTER TABLE posthog_event ADD COLUMN IF NOT EXISTS uuid uuid NULL;
CREATE UNIQUE INDEX IF NOT EXISTS plugin_server_event_team_uuid ON posthog_event (team_id, uuid);

ALTER TABLE posthog_sessionrecordingevent ADD COLUMN IF NOT EXISTS uuid uuid NULL;
CREATE UNIQUE INDEX IF NOT EXISTS plugin_server_recording_team_uuid
    ON posthog_sessionrecordingevent (team_id, uuid);

CREATE INDEX IF NOT EXISTS plugin_server_eventdefinition_team ON posthog_eventdefinition (team_id);
CREATE INDEX IF NOT EXISTS plugin_server_propertydefinition_team ON posthog_propertydefinition (team_id);
