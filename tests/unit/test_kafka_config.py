"""The librdkafka config built from the KAFKA_* settings (TLS end to end: tests/integration/test_kafka_producer.py)."""

from __future__ import annotations

import base64
import textwrap
from typing import Any

import pytest

from plugin_server.config import Settings, SettingsError, load_settings
from plugin_server.ingestion.kafka_config import kafka_config
from plugin_server.ingestion.kafka_producer import producer_config

CERT = "-----BEGIN CERTIFICATE-----\nMIIBclient\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIIEkey\n-----END PRIVATE KEY-----\n"
CA = "-----BEGIN CERTIFICATE-----\nMIIBca\n-----END CERTIFICATE-----\n"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def settings(**values: Any) -> Settings:
    return load_settings({}, KAFKA_ENABLED=True, **{"KAFKA_HOSTS": "kafka-1:9092,kafka-2:9092", **values})


def test_plain_config_names_the_brokers() -> None:
    assert kafka_config(settings()) == {
        "bootstrap.servers": "kafka-1:9092,kafka-2:9092",
        "client.id": "plugin-server",
    }


def test_the_three_base64_certificates_become_pem_properties() -> None:
    config = kafka_config(
        settings(
            KAFKA_CLIENT_CERT_B64=b64(CERT),
            KAFKA_CLIENT_CERT_KEY_B64="\n".join(textwrap.wrap(b64(KEY), 16)),  # wrapped like `base64` does
            KAFKA_TRUSTED_CERT_B64=b64(CA),
        )
    )
    assert config["security.protocol"] == "ssl"
    assert (config["ssl.certificate.pem"], config["ssl.key.pem"], config["ssl.ca.pem"]) == (CERT, KEY, CA)
    assert config["ssl.endpoint.identification.algorithm"] == "none"  # as the original (Heroku Kafka)


def test_some_but_not_all_certificates_is_an_error_naming_the_missing_ones() -> None:
    with pytest.raises(SettingsError, match="KAFKA_CLIENT_CERT_KEY_B64, KAFKA_TRUSTED_CERT_B64 not set"):
        kafka_config(settings(KAFKA_CLIENT_CERT_B64=b64(CERT)))


def test_a_certificate_that_is_not_base64_is_an_error_naming_it() -> None:
    with pytest.raises(SettingsError, match="KAFKA_TRUSTED_CERT_B64 is not base64"):
        kafka_config(
            settings(
                KAFKA_CLIENT_CERT_B64=b64(CERT),
                KAFKA_CLIENT_CERT_KEY_B64=b64(KEY),
                KAFKA_TRUSTED_CERT_B64="%%%",
            )
        )


def test_missing_hosts_is_an_error() -> None:
    with pytest.raises(SettingsError, match="KAFKA_HOSTS"):
        kafka_config(load_settings({}, KAFKA_ENABLED=True))


def test_producer_settings_come_from_the_original_kafka_producer_settings() -> None:
    config = producer_config(
        settings(
            KAFKA_PRODUCER_MAX_QUEUE_SIZE=0, KAFKA_FLUSH_FREQUENCY_MS=20, KAFKA_MAX_MESSAGE_BATCH_SIZE=5000
        ),
        3.0,
    )
    assert config["bootstrap.servers"] == "kafka-1:9092,kafka-2:9092"
    assert (config["linger.ms"], config["batch.num.messages"], config["batch.size"]) == (20, 1, 5000)
    assert config["message.timeout.ms"] == 3000


def test_producer_batches_are_compressed_with_lz4_unless_set_otherwise() -> None:
    assert producer_config(settings(), 3.0)["compression.codec"] == "lz4"
    assert producer_config(settings(KAFKA_COMPRESSION_CODEC="zstd"), 3.0)["compression.codec"] == "zstd"
    with pytest.raises(SettingsError, match="KAFKA_COMPRESSION_CODEC"):
        load_settings({"KAFKA_COMPRESSION_CODEC": "brotli"})
