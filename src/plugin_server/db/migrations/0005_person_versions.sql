-- Versions of persons and distinct ids, as today's PostHog keeps them (nullable bigint columns of the
-- same names): 0 when a row is created, one more on every update or move. A mirror of these tables
-- (ClickHouse's person and person_distinct_id2, ReplacingMergeTree on version) keeps the row with the
-- highest version, so a change delivered twice or late never overwrites a newer one. Rows written
-- before this migration count as version 0.
ALTER TABLE posthog_person ADD COLUMN IF NOT EXISTS version bigint NULL;
ALTER TABLE posthog_persondistinctid ADD COLUMN IF NOT EXISTS version bigint NULL;
