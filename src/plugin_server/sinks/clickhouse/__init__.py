"""ClickHouse: the schema (`schema`, `migrate`), the client built from the CLICKHOUSE_* settings
(`client`), the direct event writer (`events`) and the reader of stored events (`reader`).

The direct writer inserts micro-batches straight into the tables, for installations whose ClickHouse
has no Kafka engine (or for the in-process chDB engine); with the Kafka engine, ClickHouse reads the
`clickhouse_*` topics itself, through the Kafka tables and materialized views `migrate` creates.
"""
