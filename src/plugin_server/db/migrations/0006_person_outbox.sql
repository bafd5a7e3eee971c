-- The person and distinct-id rows written but not yet taken by a person mirror (ClickHouse through
-- Kafka): recorded in the transaction that writes them, deleted once the mirror took them, and sent
-- again by the workers when a dead worker left them (ingestion/person_outbox.py).
CREATE TABLE IF NOT EXISTS plugin_server_person_outbox (
    id          bigserial PRIMARY KEY,
    row         jsonb NOT NULL,
    written_at  timestamptz NOT NULL DEFAULT now()
);
