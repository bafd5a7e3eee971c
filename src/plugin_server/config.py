"""Settings, read from environment variables with the original server's names and defaults.

Booleans follow the original: y, yes, t, true, on and 1 are true (any case). Unlike the original,
a value that is neither a known true nor a known false word, or a number that does not parse, stops
startup with a message naming the variable (see :func:`load_settings`).
"""

from __future__ import annotations

import ipaddress
import os
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

TRUE_WORDS = frozenset({"y", "yes", "t", "true", "on", "1"})
FALSE_WORDS = frozenset({"n", "no", "f", "false", "off", "0", ""})
JOB_QUEUE_TYPES = ("graphile", "postgres")  # both name our durable Postgres job queue


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the variable."""


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"expected one of {sorted(TRUE_WORDS)} or {sorted(FALSE_WORDS - {''})}")


class Settings(BaseModel):
    """Every setting of the server. The field description is what `plugin-server --help` shows."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    # --- storage
    DATABASE_URL: str | None = Field(
        None, description="Postgres URL; unset (with no POSTHOG_DB_NAME) runs an embedded Postgres"
    )
    POSTHOG_DB_NAME: str | None = Field(None, description="database name, used when DATABASE_URL is unset")
    POSTHOG_DB_USER: str = Field("postgres", description="database user, used when DATABASE_URL is unset")
    POSTHOG_DB_PASSWORD: str = Field("", description="database password, used when DATABASE_URL is unset")
    POSTHOG_POSTGRES_HOST: str = Field(
        "localhost", description="database host, used when DATABASE_URL is unset"
    )
    POSTHOG_POSTGRES_PORT: int = Field(5432, description="database port, used when DATABASE_URL is unset")
    REDIS_URL: str | None = Field(
        None, description="Redis URL; unset (with no POSTHOG_REDIS_HOST) runs an embedded Valkey"
    )
    POSTHOG_REDIS_HOST: str = Field("", description="Redis host; when set it overrides REDIS_URL")
    POSTHOG_REDIS_PORT: int = Field(6379, description="Redis port, with POSTHOG_REDIS_HOST")
    POSTHOG_REDIS_PASSWORD: str = Field("", description="Redis password, with POSTHOG_REDIS_HOST")
    PLUGIN_SERVER_DATA_DIR: Path = Field(
        Path(".plugin-server"), description="folder for the embedded Postgres and Valkey data"
    )
    AUTO_MIGRATE: bool = Field(True, description="apply pending database migrations when the server starts")
    BASE_DIR: Path = Field(Path("."), description="base path for resolving local plugins")

    # --- processes
    WORKER_CONCURRENCY: int = Field(
        0, ge=0, description="number of worker processes; 0 means one per CPU core"
    )
    TASKS_PER_WORKER: int = Field(4, ge=1, description="micro-batches each worker keeps in flight at once")
    INGESTION_BATCH_SIZE: int = Field(
        2000, ge=1, description="most events a worker takes from the queue at once"
    )
    TASK_TIMEOUT: float = Field(30, gt=0, description="seconds a plugin call may run")
    SLOW_PLUGIN_PATIENCE_MS: float = Field(
        250,
        ge=0,
        description="milliseconds a micro-batch waits for a team's processEvent plugins before storing the "
        "other teams' events without waiting for that team (whose events are stored when its plugins finish)",
    )
    SLOW_PLUGIN_BACKLOG: int = Field(
        100,
        ge=1,
        description="most teams' shares of micro-batches a worker holds for slow plugins at once; "
        "past it (or past TASKS_PER_WORKER x INGESTION_BATCH_SIZE events in them), the worker takes no "
        "more events until one is done",
    )
    JS_HEAP_LIMIT_MB: float = Field(
        64, gt=0, description="V8 heap limit of each JavaScript plugin config's isolate"
    )
    JS_ARRAY_BUFFER_LIMIT_MB: float = Field(
        256,
        gt=0,
        description="most memory each JavaScript plugin config may hold in ArrayBuffers and typed arrays "
        "(outside the V8 heap)",
    )
    JS_MAX_TIMERS: int = Field(
        100,
        ge=1,
        description="most timers (setTimeout, setInterval...) a JavaScript plugin config may have pending",
    )
    JS_TIMER_MIN_INTERVAL_MS: float = Field(
        10,
        ge=0,
        description="least milliseconds between two rounds of timer firings of a JavaScript plugin config "
        "(the timers due by then fire together)",
    )
    JS_TIMER_CPU_SHARE: float = Field(
        0.1,
        gt=0,
        le=1,
        description="share of the time a JavaScript plugin config's timer callbacks may keep it busy; past it "
        "for TASK_TIMEOUT seconds in all, its timers are cleared and the error recorded",
    )
    PLUGIN_IDLE_UNLOAD_SECONDS: float = Field(
        600,
        ge=0,
        description="tear down a plugin config's instance unused for this long (set up again on next use); 0 disables",
    )
    REDIS_POOL_MIN_SIZE: int = Field(
        1, ge=0, description="Redis connections each worker and web process opens at start"
    )
    REDIS_POOL_MAX_SIZE: int = Field(
        3,
        ge=1,
        description="Redis connections each worker and web process uses for commands at once, "
        "besides 8 for long-held ones (blocking claim, reload listener); more commands wait their turn",
    )
    QUEUE_VISIBILITY_TIMEOUT: float = Field(
        30,
        gt=0,
        description="seconds without a heartbeat after which a consumer's unfinished events are redelivered",
    )
    SCHEDULE_LOCK_TTL: float = Field(
        60, gt=0, description="how many seconds to hold the lock for the schedule"
    )
    STALENESS_RESTART_SECONDS: float = Field(
        0,
        ge=0,
        description="restart a worker that made no progress for this long while events wait; 0 disables",
    )
    PLUGIN_SERVER_IDLE: bool = Field(
        False, description="whether to disengage the plugin server, e.g. for development"
    )

    # --- queues
    CELERY_DEFAULT_QUEUE: str = Field("celery", description="Celery outgoing queue")
    PLUGINS_CELERY_QUEUE: str = Field("posthog-plugins", description="Celery incoming queue")
    PLUGINS_RELOAD_PUBSUB_CHANNEL: str = Field(
        "reload-plugins", description="Redis channel for reload events"
    )
    JOB_QUEUES: str = Field(
        "graphile",
        description="job queue; 'graphile' (the original's name) and 'postgres' both mean the Postgres queue",
    )
    JOB_QUEUE_CONCURRENCY: int = Field(
        4, ge=1, description="plugin jobs and scheduled tasks each worker runs at once"
    )
    JOB_LEASE_SECONDS: float = Field(
        30, gt=0, description="seconds after which a job whose worker died runs again"
    )
    PLUGIN_METRICS_INTERVAL_SECONDS: float = Field(
        1800, gt=0, description="how often plugin metrics are reported as $$plugin_metrics events"
    )
    ACTION_HOOKS_VIA_CELERY: bool = Field(
        False,
        description="instead of delivering action hooks itself, send the seed's webhook Celery tasks to "
        "CELERY_DEFAULT_QUEUE, for a PostHog whose Django app delivers them",
    )
    HOOK_CONCURRENCY: int = Field(
        4,
        ge=1,
        description="webhook and REST hook deliveries each worker makes at once (besides plugin jobs)",
    )
    HOOK_TIMEOUT_SECONDS: float = Field(
        10, gt=0, description="seconds a webhook or REST hook delivery may take"
    )
    HOOK_MAX_ATTEMPTS: int = Field(
        5, ge=1, description="deliveries of a webhook or REST hook tried before it is given up"
    )
    HOOK_RETRY_DELAY_SECONDS: float = Field(
        10, ge=0, description="wait before the second delivery attempt of a hook; doubles each attempt"
    )
    POSTHOG_API_HOST: str = Field(
        "https://app.posthog.com",
        description="PostHog host of posthog.api calls by plugins, the only host it sends its API key to",
    )
    PLUGIN_HTTP_ALLOW_PRIVATE_NETWORKS: bool = Field(
        False,
        description="let plugin HTTP (fetch, posthog.api) reach any address, not only public ones",
    )
    PLUGIN_HTTP_ALLOWED_NETWORKS: str = Field(
        "",
        description="comma-separated IPs or CIDRs that plugin HTTP may reach besides public addresses",
    )

    # --- ClickHouse and Kafka
    CLICKHOUSE_HOST: str = Field(
        "localhost",
        description="ClickHouse host, optionally host:port (HTTP port 8123, 8443 with CLICKHOUSE_SECURE); or "
        "chdb:///folder for the in-process chDB engine storing in that folder (the chdb extra; one process at a time)",
    )
    CLICKHOUSE_DATABASE: str = Field("default", description="ClickHouse database")
    CLICKHOUSE_USER: str = Field("default", description="ClickHouse username")
    CLICKHOUSE_PASSWORD: str | None = Field(None, description="ClickHouse password")
    CLICKHOUSE_CA: str | None = Field(None, description="ClickHouse CA certs")
    CLICKHOUSE_SECURE: bool = Field(False, description="whether to secure ClickHouse connection")
    EVENT_STORE: Literal["postgres", "clickhouse-kafka", "clickhouse-direct"] = Field(
        "postgres",
        description="where events and recordings are stored (and historical exports read them) and persons, "
        "distinct ids and groups mirrored: postgres (PostHog's tables), clickhouse-kafka (ClickHouse's topics "
        "at KAFKA_HOSTS, with plugin logs) or clickhouse-direct (inserted straight into ClickHouse's tables at "
        "CLICKHOUSE_HOST, no Kafka); persons stay in Postgres, their source of truth",
    )
    CLICKHOUSE_KAFKA_FORMAT: Literal["original", "current"] = Field(
        "original",
        description="message formats of the ClickHouse topics: original (the 2021 plugin server's: protobuf "
        "events, clickhouse_person_unique_id) or current (today's PostHog's: clickhouse_events_json with "
        "person columns, versioned clickhouse_person_distinct_id)",
    )
    KAFKA_PREFIX: str = Field(
        "",
        description="prefix of the ClickHouse topic names (as PostHog's KAFKA_PREFIX), e.g. to share a broker",
    )
    KAFKA_ENABLED: bool = Field(False, description="use Kafka instead of Celery to ingest events")
    KAFKA_HOSTS: str | None = Field(None, description="comma-delimited Kafka hosts")
    KAFKA_CONSUMPTION_TOPIC: str = Field("events_plugin_ingestion", description="Kafka incoming events topic")
    KAFKA_CONSUMER_GROUP: str = Field(
        "clickhouse-ingestion",
        description="Kafka consumer group of the workers reading KAFKA_CONSUMPTION_TOPIC",
    )
    KAFKA_DEAD_LETTER_TOPIC: str = Field(
        "events_dead_letter_queue", description="Kafka topic of the messages the workers could not ingest"
    )
    KAFKA_CONSUMER_SESSION_TIMEOUT_MS: int = Field(
        45000,
        ge=1000,
        description="how long a silent consumer keeps its partitions before the group moves them",
    )
    KAFKA_MAX_LAG_READY: int | None = Field(
        None,
        ge=0,
        description="/_ready fails while this server's Kafka consumer lag (messages) is above it; unset: never",
    )
    KAFKA_CLIENT_CERT_B64: str | None = Field(None, description="Kafka certificate in Base64")
    KAFKA_CLIENT_CERT_KEY_B64: str | None = Field(None, description="Kafka certificate key in Base64")
    KAFKA_TRUSTED_CERT_B64: str | None = Field(None, description="Kafka trusted CA in Base64")
    KAFKA_PRODUCER_MAX_QUEUE_SIZE: int = Field(
        1000, ge=0, description="Kafka producer batch max size before flushing"
    )
    KAFKA_FLUSH_FREQUENCY_MS: int = Field(
        500, ge=0, description="Kafka producer batch max duration before flushing"
    )
    KAFKA_MAX_MESSAGE_BATCH_SIZE: int = Field(
        900000, ge=1, description="Kafka producer batch max size in bytes before flushing"
    )
    KAFKA_COMPRESSION_CODEC: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        "lz4", description="compression of the batches the Kafka producer sends"
    )

    # --- web, logs, metrics
    DISABLE_WEB: bool = Field(False, description="whether to disable web server")
    WEB_PORT: int = Field(3008, ge=0, le=65535, description="port for web server to listen on")
    WEB_CONCURRENCY: int = Field(
        1, ge=1, description="web processes serving the HTTP API, sharing WEB_PORT (SO_REUSEPORT)"
    )
    WEB_HOSTNAME: str = Field("0.0.0.0", description="hostname for web server to listen on")
    CAPTURE_MAX_BODY_BYTES: int = Field(
        20_971_520,
        ge=1,
        description="largest capture request body, as sent and once decompressed; larger is refused with 413",
    )
    CAPTURE_DECODE_TIMEOUT: float = Field(
        2.0,
        gt=0,
        description="seconds a capture request may spend decompressing and parsing its body; past it 413",
    )
    TRUSTED_PROXIES: str = Field(
        "",
        description="comma-separated IPs or CIDRs of proxies whose X-Forwarded-For gives the client IP",
    )
    ADMIN_TOKEN: str | None = Field(
        None,
        description="bearer token of the operator API (/api/admin); unset turns that API off (403)",
    )
    ADMIN_MAX_BODY_BYTES: int = Field(
        67_108_864,
        ge=1,
        description="largest operator API request body (e.g. a plugin archive upload); larger is refused "
        "with 413 before it is read",
    )
    CONSOLE_ENABLED: bool = Field(
        True,
        description="serve the operator's web console under /console (its login is ADMIN_TOKEN)",
    )
    LOG_LEVEL: Literal["none", "debug", "info", "log", "warn", "error"] = Field(
        "info", description="minimum log level"
    )
    LOG_FORMAT: Literal["human", "json"] = Field(
        "human", description="log line format: human (readable, for a terminal) or json (one object per line)"
    )
    SENTRY_DSN: str | None = Field(None, description="Sentry ingestion URL")
    STATSD_HOST: str | None = Field(
        None, description="StatsD host - integration disabled if this is not provided"
    )
    STATSD_PORT: int = Field(8125, ge=1, le=65535, description="StatsD port")
    STATSD_PREFIX: str = Field("plugin-server.", description="StatsD prefix")

    # --- GeoIP and persons
    DISABLE_MMDB: bool = Field(False, description="whether to disable MMDB IP location capabilities")
    MMDB_FILE_PATH: str | None = Field(
        None, description="GeoIP City database (.mmdb); unset uses the @posthog/mmdb attachment row"
    )
    INTERNAL_MMDB_SERVER_PORT: int = Field(
        0, ge=0, le=65535, description="port of the internal server used for IP location (0 means random)"
    )
    DISTINCT_ID_LRU_SIZE: int = Field(10000, ge=0, description="size of persons distinct ID LRU cache")

    @field_validator(
        "AUTO_MIGRATE",
        "PLUGIN_SERVER_IDLE",
        "CLICKHOUSE_SECURE",
        "KAFKA_ENABLED",
        "ACTION_HOOKS_VIA_CELERY",
        "DISABLE_WEB",
        "CONSOLE_ENABLED",
        "DISABLE_MMDB",
        "PLUGIN_HTTP_ALLOW_PRIVATE_NETWORKS",
        mode="before",
    )
    @classmethod
    def _boolean(cls, value: Any) -> bool:
        return parse_bool(value)

    @field_validator("LOG_LEVEL", "LOG_FORMAT", "EVENT_STORE", "CLICKHOUSE_KAFKA_FORMAT", mode="before")
    @classmethod
    def _lower_case(cls, value: Any) -> str:
        return str(value).strip().lower()

    @field_validator("JOB_QUEUES")
    @classmethod
    def _job_queues(cls, value: str) -> str:
        for name in (part.strip() for part in value.split(",") if part.strip()):
            if name not in JOB_QUEUE_TYPES:
                raise ValueError(f"unknown job queue {name!r}; known: {', '.join(JOB_QUEUE_TYPES)}")
        return value

    @field_validator("TRUSTED_PROXIES", "PLUGIN_HTTP_ALLOWED_NETWORKS")
    @classmethod
    def _network_list(cls, value: str) -> str:
        _networks(value)
        return value

    @cached_property
    def trusted_proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return _networks(self.TRUSTED_PROXIES)

    @cached_property
    def plugin_http_allowed_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return _networks(self.PLUGIN_HTTP_ALLOWED_NETWORKS)

    @property
    def worker_count(self) -> int:
        return self.WORKER_CONCURRENCY or os.cpu_count() or 1

    @cached_property
    def database_url(self) -> str | None:
        """The Postgres URL to use, or None when the embedded Postgres should be started."""
        if self.DATABASE_URL:
            return self.DATABASE_URL
        if self.POSTHOG_DB_NAME:
            auth = quote(self.POSTHOG_DB_USER, safe="")
            if self.POSTHOG_DB_PASSWORD:
                auth += ":" + quote(self.POSTHOG_DB_PASSWORD, safe="")
            host = f"{self.POSTHOG_POSTGRES_HOST}:{self.POSTHOG_POSTGRES_PORT}"
            return f"postgres://{auth}@{host}/{quote(self.POSTHOG_DB_NAME, safe='')}"
        return None

    @cached_property
    def redis_url(self) -> str | None:
        """The Redis URL to use, or None when the embedded Valkey should be started."""
        if self.POSTHOG_REDIS_HOST:
            auth = f":{quote(self.POSTHOG_REDIS_PASSWORD, safe='')}@" if self.POSTHOG_REDIS_PASSWORD else ""
            return f"redis://{auth}{self.POSTHOG_REDIS_HOST}:{self.POSTHOG_REDIS_PORT}"
        return self.REDIS_URL or None


def _networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """The comma-separated IPs or CIDRs of `text`; ValueError naming the first that is neither."""
    networks = []
    for part in (part.strip() for part in text.split(",") if part.strip()):
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{part!r} is not an IP address or CIDR network") from None
    return tuple(networks)


def load_settings(environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Read the settings from `environ` (default: the process environment) plus explicit overrides.

    Raises SettingsError with one line per bad variable, e.g.
    ``WORKER_CONCURRENCY='abc': Input should be a valid integer``.
    """
    source = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {name: source[name] for name in Settings.model_fields if name in source}
    values.update(overrides)
    try:
        return Settings.model_validate(values)
    except ValidationError as error:
        lines = []
        for problem in error.errors():
            name = str(problem["loc"][0]) if problem["loc"] else "?"
            message = problem["msg"].removeprefix("Value error, ")
            lines.append(f"{name}={source.get(name, overrides.get(name))!r}: {message}")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None


# The settings' groups in `--help`, by the first setting of each (they are declared group by group).
SETTING_GROUPS = {
    "DATABASE_URL": "Storage",
    "WORKER_CONCURRENCY": "Processes and plugins",
    "CELERY_DEFAULT_QUEUE": "Queues and jobs",
    "CLICKHOUSE_HOST": "ClickHouse and Kafka",
    "DISABLE_WEB": "Web, operator API, console, logs and metrics",
    "DISABLE_MMDB": "GeoIP and persons",
}


def settings_help() -> list[tuple[str, str, str]]:
    """(name, default, description) for every setting, in declaration order."""
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "unset" if default is None else str(default)
        if isinstance(default, bool):
            shown = str(default).lower()
        rows.append((name, shown, field.description or ""))
    return rows
