"""ClickHouse: the schema (`schema`, `migrate`), the client built from the CLICKHOUSE_* settings
(`client`), the direct writer's transport (`topics`) and the reader of stored events (`reader`).

With the Kafka engine, ClickHouse reads the `clickhouse_*` topics itself, through the Kafka tables and
materialized views `migrate` creates. Without it (or with the in-process chDB engine), the Kafka tables
are Null tables, and the direct writer (EVENT_STORE=clickhouse-direct) inserts into them the very
records the Kafka sinks would produce: the same views then fill the same tables.
"""
