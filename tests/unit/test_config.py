from pathlib import Path

import pytest

from plugin_server.config import SettingsError, load_settings, parse_bool, settings_help


def test_a_worker_holds_four_batches_of_2000_by_default() -> None:
    """Not the original's 10 tasks (single events there): fewer, larger batches cost less CPU per event
    (README, "CPU per event")."""
    settings = load_settings({})
    assert (settings.TASKS_PER_WORKER, settings.INGESTION_BATCH_SIZE) == (4, 2000)


def test_defaults_follow_the_original() -> None:
    settings = load_settings({})
    assert settings.PLUGINS_CELERY_QUEUE == "posthog-plugins"
    assert settings.CELERY_DEFAULT_QUEUE == "celery"
    assert settings.PLUGINS_RELOAD_PUBSUB_CHANNEL == "reload-plugins"
    assert settings.SCHEDULE_LOCK_TTL == 60
    assert settings.TASK_TIMEOUT == 30
    assert settings.DISTINCT_ID_LRU_SIZE == 10000
    assert settings.STATSD_PREFIX == "plugin-server."
    assert settings.KAFKA_CONSUMPTION_TOPIC == "events_plugin_ingestion"
    assert settings.WEB_PORT == 3008
    assert settings.worker_count >= 1
    assert settings.database_url is None and settings.redis_url is None


@pytest.mark.parametrize("word", ["y", "YES", "t", "True", "on", "1"])
def test_true_words(word: str) -> None:
    assert parse_bool(word) is True
    assert load_settings({"KAFKA_ENABLED": word}).KAFKA_ENABLED is True


@pytest.mark.parametrize("word", ["n", "no", "F", "false", "off", "0", ""])
def test_false_words(word: str) -> None:
    assert parse_bool(word) is False


def test_numbers_are_parsed() -> None:
    settings = load_settings({"WORKER_CONCURRENCY": "3", "TASK_TIMEOUT": "2.5", "STATSD_PORT": "9125"})
    assert (settings.WORKER_CONCURRENCY, settings.TASK_TIMEOUT, settings.STATSD_PORT) == (3, 2.5, 9125)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WORKER_CONCURRENCY", "abc"),
        ("KAFKA_ENABLED", "maybe"),
        ("WEB_PORT", "70000"),
        ("LOG_LEVEL", "loud"),
        ("JOB_QUEUES", "graphile,carrier-pigeon"),
        ("TASKS_PER_WORKER", "0"),
    ],
)
def test_an_invalid_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"{name}='{value}'"):
        load_settings({name: value})


def test_posthog_db_fallbacks_build_the_url_only_without_database_url() -> None:
    fields = {
        "POSTHOG_DB_NAME": "posthog",
        "POSTHOG_DB_USER": "me",
        "POSTHOG_DB_PASSWORD": "s3cr/t",
        "POSTHOG_POSTGRES_HOST": "db",
        "POSTHOG_POSTGRES_PORT": "6543",
    }
    assert load_settings(fields).database_url == "postgres://me:s3cr%2Ft@db:6543/posthog"
    assert load_settings({**fields, "DATABASE_URL": "postgres://x/y"}).database_url == "postgres://x/y"


def test_posthog_redis_host_overrides_redis_url() -> None:
    settings = load_settings(
        {"REDIS_URL": "redis://a", "POSTHOG_REDIS_HOST": "b", "POSTHOG_REDIS_PASSWORD": "pw"}
    )
    assert settings.redis_url == "redis://:pw@b:6379"


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    missing = [name for name, _, _ in settings_help() if f"`{name}`" not in readme]
    assert missing == []
