"""require('@google-cloud/bigquery' | 'pubsub' | 'storage') in JS plugins against a loopback stand-in of
Google's token endpoint and JSON APIs: the service account key from the plugin's attachment signs the
token request (checked with the key's public half), and the plugin code does what the bigquery, pubsub
and gcs apps do (table metadata, create on "Not found", insert; topic create on NOT_FOUND, publish;
a PassThrough piped into File.createWriteStream), with the node clients' errors."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, unquote

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.js_support import body_outcome
from tests.loopback import LoopbackService, Request

PROJECT = "test-project"


class GoogleStandIn:
    """Google's token endpoint, BigQuery, Pub/Sub and Cloud Storage, in memory."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.tables: dict[str, dict[str, Any]] = {}
        self.rows: list[dict[str, Any]] = []
        self.topics: set[str] = set()
        self.messages: list[bytes] = []
        self.objects: dict[str, bytes] = {}
        self.tokens_issued = 0

    def credentials(self, token_uri: str) -> dict[str, str]:
        pem = self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        return {
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": "key-1",
            "private_key": pem,
            "client_email": "exporter@test-project.iam.gserviceaccount.com",
            "token_uri": token_uri,
        }

    def answer(self, request: Request) -> tuple[int, bytes]:
        if request.path == "/token":
            return self._token(request)
        if request.headers.get("authorization") != "Bearer access-1":
            return _error(401, "Request had invalid authentication credentials.", "UNAUTHENTICATED")
        body = json.loads(request.body) if request.body and "upload" not in request.path else None
        if request.path.startswith("/bigquery/v2/"):
            return self._bigquery(request.method, request.path.removeprefix("/bigquery/v2/"), body)
        if request.path.startswith("/v1/"):
            return self._pubsub(request.method, unquote(request.path.removeprefix("/v1/")), body)
        return self._storage(request)

    def _token(self, request: Request) -> tuple[int, bytes]:
        form = {key: values[0] for key, values in parse_qs(request.body.decode()).items()}
        header, claims, signature = form["assertion"].split(".")
        decoded = json.loads(base64.urlsafe_b64decode(claims + "=="))
        self.key.public_key().verify(
            base64.urlsafe_b64decode(signature + "=="),
            f"{header}.{claims}".encode(),
            padding.PKCS1v15(),
            hashes.SHA256(),
        )
        assert decoded["iss"] == "exporter@test-project.iam.gserviceaccount.com"
        assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
        self.tokens_issued += 1
        return 200, json.dumps({"access_token": "access-1", "expires_in": 3600}).encode()

    def _bigquery(self, method: str, path: str, body: Any) -> tuple[int, bytes]:
        match = re.fullmatch(r"projects/([^/]+)/datasets/([^/]+)/tables(?:/([^/]+))?(/insertAll)?", path)
        assert match, path
        project, dataset, table, insert = match.groups()
        if method == "POST" and table is None:
            table = body["tableReference"]["tableId"]
            if table in self.tables:
                return _error(409, f"Already Exists: Table {project}:{dataset}.{table}", "ALREADY_EXISTS")
            self.tables[table] = {"tableReference": body["tableReference"], "schema": body["schema"]}
            return 200, json.dumps(self.tables[table]).encode()
        if table not in self.tables:
            return _error(404, f"Not found: Table {project}:{dataset}.{table}", "NOT_FOUND")
        if insert:
            errors = []
            for index, row in enumerate(body["rows"]):
                if "nope" in row["json"]:
                    errors.append(
                        {"index": index, "errors": [{"reason": "invalid", "message": "no such field: nope."}]}
                    )
                else:
                    self.rows.append(row)
            return 200, json.dumps(
                {"insertErrors": errors} if errors else {"kind": "bigquery#tableDataInsertAllResponse"}
            ).encode()
        if method == "PATCH":
            self.tables[table].update(body)
        return 200, json.dumps(self.tables[table]).encode()

    def _pubsub(self, method: str, path: str, body: Any) -> tuple[int, bytes]:
        topic, _, action = path.partition(":")
        if method == "PUT":
            if topic in self.topics:
                return _error(
                    409, "Resource already exists in the project (resource=events).", "ALREADY_EXISTS"
                )
            self.topics.add(topic)
            return 200, json.dumps({"name": topic}).encode()
        if topic not in self.topics:
            return _error(404, "Resource not found (resource=events).", "NOT_FOUND")
        if action == "publish":
            start = len(self.messages)
            self.messages.extend(base64.b64decode(message["data"]) for message in body["messages"])
            return 200, json.dumps(
                {"messageIds": [str(start + i) for i in range(len(body["messages"]))]}
            ).encode()
        return 200, json.dumps({"name": topic}).encode()

    def _storage(self, request: Request) -> tuple[int, bytes]:
        if request.path.startswith("/upload/storage/v1/b/"):
            bucket = request.path.split("/")[5]
            self.objects[f"{bucket}/{request.query['name']}"] = request.body
            return 200, json.dumps(
                {"bucket": bucket, "name": request.query["name"], "size": str(len(request.body))}
            ).encode()
        bucket, _, name = unquote(request.path.removeprefix("/storage/v1/b/")).partition("/o/")
        stored = self.objects.get(f"{bucket}/{name}")
        if stored is None:
            return _error(404, f"No such object: {bucket}/{name}", "NOT_FOUND")
        return 200, stored if request.query.get("alt") == "media" else json.dumps({"name": name}).encode()


def _error(code: int, message: str, status: str) -> tuple[int, bytes]:
    return code, json.dumps(
        {"error": {"code": code, "message": message, "status": status, "errors": [{"message": message}]}}
    ).encode()


@pytest.fixture(scope="module")
def google() -> Iterator[tuple[GoogleStandIn, str]]:
    stand_in = GoogleStandIn()
    with LoopbackService(stand_in.answer) as service:
        yield stand_in, service.url


async def run(body: str, head: str, google: tuple[GoogleStandIn, str]) -> Any:
    stand_in, url = google
    config = {"key": json.dumps(stand_in.credentials(f"{url}/token")), "endpoint": url}
    return await body_outcome(body, head=head, config=config, timeout=5.0)


async def test_bigquery_the_way_the_bigquery_app_uses_it(google: tuple[GoogleStandIn, str]) -> None:
    stand_in, _ = google
    out = await run(
        """
        const credentials = JSON.parse(config.key)
        const client = new BigQuery({ projectId: credentials.project_id, credentials, autoRetry: false, apiEndpoint: config.endpoint })
        const table = client.dataset('analytics').table('events')
        const missing = await table.getMetadata().catch((error) => error)
        await client.dataset('analytics').createTable('events', { schema: [{ name: 'uuid', type: 'STRING' }, { name: 'team_id', type: 'INT64' }] })
        const again = await client.dataset('analytics').createTable('events', { schema: [] }).catch((error) => error.message)
        const [metadata] = await table.getMetadata()
        metadata.schema.fields = metadata.schema.fields.concat([{ name: 'timestamp', type: 'TIMESTAMP' }])
        const [updated] = await table.setMetadata(metadata)
        await table.insert([{ json: { uuid: 'u1', team_id: 2 } }, { json: { uuid: 'u2', team_id: 2 } }], { createInsertId: false, partialRetries: 0, raw: true })
        const partial = await table.insert([{ uuid: 'u3' }, { nope: 1 }]).catch((error) => [error.name, error.errors.map((e) => e.errors[0].message)])
        out = {
            missing: [missing.name, missing.code, missing.message.includes('Not found')], again,
            fields: updated.schema.fields.map((field) => field.name), partial,
        }
        """,
        "const { BigQuery } = require('@google-cloud/bigquery')",
        google,
    )
    assert out["missing"] == ["ApiError", 404, True]
    assert out["again"] == f"Already Exists: Table {PROJECT}:analytics.events"
    assert out["fields"] == ["uuid", "team_id", "timestamp"]
    assert out["partial"] == ["PartialFailureError", ["no such field: nope."]]
    assert [row["json"]["uuid"] for row in stand_in.rows] == ["u1", "u2", "u3"]
    assert "insertId" not in stand_in.rows[0] and len(stand_in.rows[2]["insertId"]) == 36
    assert stand_in.tokens_issued == 1  # the token is kept for its lifetime


async def test_pubsub_the_way_the_pubsub_app_uses_it(google: tuple[GoogleStandIn, str]) -> None:
    stand_in, _ = google
    out = await run(
        """
        const credentials = JSON.parse(config.key)
        const client = new PubSub({ projectId: credentials.project_id, credentials, apiEndpoint: config.endpoint })
        const topic = client.topic('events')
        const missing = await topic.getMetadata().catch((error) => error)
        await topic.create()
        const exists = await topic.create().catch((error) => error.message)
        const ids = await Promise.all(['a', 'b', 'c'].map((name) => topic.publish(Buffer.from(JSON.stringify({ event: name })))))
        out = { missing: [missing.code, missing.message], exists, ids }
        """,
        "const { PubSub } = require('@google-cloud/pubsub')",
        google,
    )
    assert out["missing"] == [5, "5 NOT_FOUND: Resource not found (resource=events)."]
    assert out["exists"].startswith("6 ALREADY_EXISTS")
    assert out["ids"] == ["0", "1", "2"]
    assert [json.loads(message) for message in stand_in.messages] == [
        {"event": "a"},
        {"event": "b"},
        {"event": "c"},
    ]


async def test_storage_the_way_the_gcs_app_uploads(google: tuple[GoogleStandIn, str]) -> None:
    stand_in, _ = google
    out = await run(
        """
        const credentials = JSON.parse(config.key)
        const storage = new Storage({ projectId: credentials.project_id, credentials, autoRetry: false, apiEndpoint: config.endpoint })
        const bucket = storage.bucket('exports')
        const dataStream = new PassThrough()
        const gcFile = bucket.file('2021-05-06/20210506-070809-abc.csv')
        dataStream.push('uuid,event\\n')
        dataStream.push('u1,$pageview')
        dataStream.push(null)
        await new Promise((resolve, reject) => {
            dataStream.pipe(gcFile.createWriteStream({ resumable: false, validation: false }))
                .on('error', (error) => reject(error)).on('finish', () => resolve(true))
        })
        const [downloaded] = await gcFile.download()
        const [missing] = await bucket.file('nope.csv').exists()
        out = { downloaded: downloaded.toString(), missing }
        """,
        "const { Storage } = require('@google-cloud/storage')\nconst { PassThrough } = require('stream')",
        google,
    )
    assert out == {"downloaded": "uuid,event\nu1,$pageview", "missing": False}
    assert stand_in.objects["exports/2021-05-06/20210506-070809-abc.csv"] == b"uuid,event\nu1,$pageview"
