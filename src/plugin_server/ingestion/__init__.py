"""Event ingestion: queue consumers, the per-batch pipeline and PostHog's ingestion rules."""
