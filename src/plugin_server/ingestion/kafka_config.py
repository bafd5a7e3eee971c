"""The librdkafka settings every Kafka client of the server shares: brokers and TLS.

Producers and consumers add their own settings on top of :func:`kafka_config`.
"""

from __future__ import annotations

import base64
import binascii

from plugin_server.config import Settings, SettingsError

CLIENT_ID = "plugin-server"

KafkaConfig = dict[str, str | int | float | bool]

# Certificate settings (base64 of PEM text) and the librdkafka property each one becomes.
_CERTIFICATES = {
    "KAFKA_CLIENT_CERT_B64": "ssl.certificate.pem",
    "KAFKA_CLIENT_CERT_KEY_B64": "ssl.key.pem",
    "KAFKA_TRUSTED_CERT_B64": "ssl.ca.pem",
}


def kafka_config(settings: Settings) -> KafkaConfig:
    """Brokers from KAFKA_HOSTS; TLS when the three certificate settings are set.

    As in the original, the broker's certificate must be signed by the trusted CA but its host name is
    not checked (Heroku's Kafka certificates do not name the brokers). Setting only some of the three
    certificates is an error here (the original silently connected without TLS).
    """
    if not settings.KAFKA_HOSTS:
        raise SettingsError(
            "KAFKA_HOSTS must name the Kafka brokers when KAFKA_ENABLED is on or EVENT_STORE is clickhouse-kafka"
        )
    config: KafkaConfig = {"bootstrap.servers": settings.KAFKA_HOSTS, "client.id": CLIENT_ID}
    given = {name: getattr(settings, name) for name in _CERTIFICATES if getattr(settings, name)}
    if not given:
        return config
    missing = sorted(set(_CERTIFICATES) - set(given))
    if missing:
        raise SettingsError(f"Kafka TLS needs all three certificates; {', '.join(missing)} not set")
    config["security.protocol"] = "ssl"
    config["ssl.endpoint.identification.algorithm"] = "none"
    for name, value in given.items():
        config[_CERTIFICATES[name]] = _decode_pem(name, value)
    return config


def _decode_pem(name: str, value: str) -> str:
    try:  # line breaks are allowed: `base64` wraps its output
        return base64.b64decode("".join(value.split()), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise SettingsError(f"{name} is not base64 of a PEM text") from None
