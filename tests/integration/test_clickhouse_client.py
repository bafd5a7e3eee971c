"""The ClickHouse client built from the CLICKHOUSE_* settings: host (and port), database, user and
password, CLICKHOUSE_SECURE (HTTPS, certificate verified) with CLICKHOUSE_CA (the CA to trust), or a
chdb:///folder address for the in-process engine. The TLS test talks to an HTTPS stand-in on loopback
whose certificate only the given CA vouches for."""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from plugin_server.config import Settings, load_settings
from plugin_server.sinks.clickhouse.client import client_options, is_in_process, open_client


def test_the_settings_become_the_client_options() -> None:
    settings = load_settings(
        {
            "CLICKHOUSE_HOST": "ch.example.com:9440",
            "CLICKHOUSE_DATABASE": "posthog",
            "CLICKHOUSE_USER": "ingest",
            "CLICKHOUSE_PASSWORD": "s3cret",
            "CLICKHOUSE_SECURE": "true",
            "CLICKHOUSE_CA": "/etc/ssl/ch-ca.pem",
        }
    )
    assert client_options(settings) == {
        "host": "ch.example.com",
        "port": 9440,
        "database": "posthog",
        "username": "ingest",
        "password": "s3cret",
        "interface": "https",
        "verify": True,
        "ca_cert": "/etc/ssl/ch-ca.pem",
        "autogenerate_session_id": False,
        "settings": {"async_insert": 1, "wait_for_async_insert": 1},
    }
    plain = client_options(load_settings({}))
    assert (plain["host"], plain["interface"], plain["password"], plain["database"]) == (
        "localhost",
        "http",
        "",
        "default",
    )
    assert "port" not in plain and "ca_cert" not in plain  # 8123, clickhouse-connect's default for http
    in_process = load_settings({"CLICKHOUSE_HOST": "chdb:///var/lib/ch", "CLICKHOUSE_DATABASE": "posthog"})
    assert is_in_process(in_process) and not is_in_process(settings)
    assert client_options(in_process) == {"dsn": "chdb:///var/lib/ch", "database": "posthog"}


def test_chdb_folder_is_a_real_clickhouse(clickhouse_settings: Settings) -> None:
    client = open_client(clickhouse_settings, database="default")
    try:
        assert client.query("SELECT 1 + 1").result_rows == [(2,)]
        assert int((client.server_version or "0").split(".")[0]) >= 24
    finally:
        client.close()


def certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, ec.EllipticCurvePrivateKey] | None
) -> x509.Certificate:
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer[0] if issuer else subject)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    else:
        names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def write_certificates(folder: Path) -> None:
    """ca.pem, and server.pem/server.key for 127.0.0.1 signed by that CA."""
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    (folder / "ca.pem").write_bytes(
        certificate("test CA", ca_key, None).public_bytes(serialization.Encoding.PEM)
    )
    server = certificate("clickhouse", server_key, ("test CA", ca_key))
    (folder / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    key = server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (folder / "server.key").write_bytes(key)


@contextlib.contextmanager
def https_stand_in(folder: Path) -> Iterator[tuple[int, list[tuple[dict[str, str], dict[str, list[str]]]]]]:
    """An HTTPS server on loopback that records each request (headers, query) and answers it with a
    ClickHouse error; its port and the requests."""
    seen: list[tuple[dict[str, str], dict[str, list[str]]]] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append(
                ({k.lower(): v for k, v in self.headers.items()}, parse_qs(urlsplit(self.path).query))
            )
            body = b"Code: 516. DB::Exception: the stand-in answers nothing. (AUTHENTICATION_FAILED)"
            self.send_response(500)
            self.send_header("X-ClickHouse-Exception-Code", "516")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "server.pem", folder / "server.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()


def test_secure_connections_trust_the_given_ca(tmp_path: Path) -> None:
    write_certificates(tmp_path)
    with https_stand_in(tmp_path) as (port, seen):
        settings = {
            "CLICKHOUSE_HOST": f"127.0.0.1:{port}",
            "CLICKHOUSE_DATABASE": "posthog",
            "CLICKHOUSE_USER": "ingest",
            "CLICKHOUSE_PASSWORD": "s3cret",
            "CLICKHOUSE_SECURE": "1",
        }
        with pytest.raises(OperationalError, match="CERTIFICATE_VERIFY_FAILED"):
            open_client(load_settings(settings))  # the system's CAs do not know the stand-in
        assert seen == []
        with pytest.raises(DatabaseError, match="the stand-in answers nothing"):
            open_client(load_settings({**settings, "CLICKHOUSE_CA": str(tmp_path / "ca.pem")}))
    headers, query = seen[0]
    assert base64.b64decode(headers["authorization"].removeprefix("Basic ")) == b"ingest:s3cret"
    assert "session_id" not in query  # concurrent batches share the client
