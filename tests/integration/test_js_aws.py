"""require('aws-sdk') in JS plugins against moto in server mode on loopback: S3 the way s3-export and
snowflake-export use it (upload with a callback, gzip and brotli bodies, aws-sdk/clients/s3), Kinesis
the way the kinesis app reads a stream (callbacks, Buffers), errors with their AWS codes, and what a
plugin's client never uses (the server's own credentials and endpoints)."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from typing import Any

import boto3
import botocore
import brotli
import pytest
from moto.server import ThreadedMotoServer

from plugin_server.plugins.js.hosted import BlockingCalls
from plugin_server.plugins.js.hosted.aws import AwsClients
from plugin_server.plugins.meta.network import resolve_addresses
from tests.js_support import body_outcome

KEYS = {"awsAccessKey": "AKIDEXAMPLE", "awsSecretAccessKey": "secret", "awsRegion": "us-east-1"}


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """S3 and Kinesis stand-ins on loopback (moto's server, started once for this module)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def boto(moto_url: str, service: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=moto_url,
        region_name="us-east-1",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret",
    )


HEAD = "const AWS = require('aws-sdk')\nconst { gzipSync, brotliCompressSync } = require('zlib')"


async def run(body: str, config: dict[str, Any]) -> Any:
    return await body_outcome(body, head=HEAD, config=config, timeout=10.0)


async def test_s3_export_uploads_with_a_callback(moto_url: str) -> None:
    boto(moto_url, "s3").create_bucket(Bucket="exports")
    out = await run(
        """
        const S3 = require('aws-sdk/clients/s3')
        const s3 = new AWS.S3({ accessKeyId: config.awsAccessKey, secretAccessKey: config.awsSecretAccessKey,
                                region: config.awsRegion, endpoint: config.endpoint, s3ForcePathStyle: true })
        const body = Buffer.from(['{"event":"a"}', '{"event":"b"}'].join('\\n'), 'utf8')
        const upload = (params) => new Promise((resolve, reject) => {
            s3.upload(params, (err, data) => (err ? reject(err) : resolve(data)))
        })
        const plain = await upload({ Bucket: 'exports', Key: 'day/batch.jsonl', Body: body })
        await upload({ Bucket: 'exports', Key: 'day/batch.jsonl.gz', Body: gzipSync(body) })
        await upload({ Bucket: 'exports', Key: 'day/batch.jsonl.br', Body: brotliCompressSync(body), ServerSideEncryption: 'AES256' })
        const other = new S3({ accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'secret', endpoint: config.endpoint, s3ForcePathStyle: true })
        const listed = await other.listObjectsV2({ Bucket: 'exports', Prefix: 'day/' }).promise()
        const got = await other.getObject({ Bucket: 'exports', Key: 'day/batch.jsonl' }).promise()
        const missing = await other.getObject({ Bucket: 'nope', Key: 'x' }).promise().catch((error) => error)
        out = {
            location: plain.Location, key: plain.Key, etag: typeof plain.ETag,
            keys: listed.Contents.map((item) => item.Key), modified: listed.Contents[0].LastModified instanceof Date,
            body: got.Body.toString(), isBuffer: Buffer.isBuffer(got.Body),
            missing: [missing.name, missing.code, missing.statusCode, missing.message],
        }
        """,
        {**KEYS, "endpoint": moto_url},
    )
    assert out["location"] == f"{moto_url}/exports/day/batch.jsonl"
    assert (out["key"], out["etag"]) == ("day/batch.jsonl", "string")
    assert out["keys"] == ["day/batch.jsonl", "day/batch.jsonl.br", "day/batch.jsonl.gz"]
    assert out["modified"] is True
    assert out["body"] == '{"event":"a"}\n{"event":"b"}' and out["isBuffer"] is True
    assert out["missing"] == ["NoSuchBucket", "NoSuchBucket", 404, "The specified bucket does not exist"]
    s3 = boto(moto_url, "s3")
    expected = b'{"event":"a"}\n{"event":"b"}'
    assert (
        gzip.decompress(s3.get_object(Bucket="exports", Key="day/batch.jsonl.gz")["Body"].read()) == expected
    )
    stored = s3.get_object(Bucket="exports", Key="day/batch.jsonl.br")
    assert brotli.decompress(stored["Body"].read()) == expected
    assert stored["ServerSideEncryption"] == "AES256"


async def test_kinesis_is_read_the_way_the_kinesis_app_reads_it(moto_url: str) -> None:
    kinesis = boto(moto_url, "kinesis")
    kinesis.create_stream(StreamName="events", ShardCount=1)
    out = await run(
        """
        const makeClient = async () => new AWS.Kinesis({ accessKeyId: config.awsAccessKey,
            secretAccessKey: config.awsSecretAccessKey, region: config.awsRegion, endpoint: config.endpoint })
        const kinesis = await makeClient()  // a client is not a promise
        const call = (method, params) => new Promise((resolve, reject) => {
            kinesis[method](params, function (err, data) { err ? reject(err) : resolve(data) })
        })
        await kinesis.putRecord({ StreamName: 'events', PartitionKey: 'p', Data: Buffer.from(JSON.stringify({ event: 'k' })) }).promise()
        const stream = await call('describeStream', { StreamName: 'events' })
        const shard = stream.StreamDescription.Shards[0]
        const iterator = await call('getShardIterator', { ShardId: shard.ShardId, ShardIteratorType: 'TRIM_HORIZON', StreamName: 'events' })
        const records = await call('getRecords', { ShardIterator: iterator.ShardIterator })
        const expired = await call('getRecords', { ShardIterator: 'not-an-iterator' }).catch((error) => error.code)
        out = {
            status: stream.StreamDescription.StreamStatus,
            data: records.Records.map((record) => JSON.parse(Buffer.from(record.Data).toString())),
            arrived: records.Records[0].ApproximateArrivalTimestamp instanceof Date,
            next: typeof records.NextShardIterator,
            expired,
            unknown: await kinesis.noSuchOperation({}).promise().catch((error) => `${error.name}: ${error.message}`),
        }
        """,
        {**KEYS, "endpoint": moto_url},
    )
    assert out["status"] == "ACTIVE"
    assert out["data"] == [{"event": "k"}]
    assert out["arrived"] is True and out["next"] == "string"
    assert out["expired"]  # moto's code for a malformed iterator
    assert out["unknown"] == "TypeError: aws-sdk: NoSuchOperation is not an operation of this service"


async def test_a_client_never_uses_the_servers_credentials_or_endpoints(
    monkeypatch: pytest.MonkeyPatch, moto_url: str
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIASERVERSOWN")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "server-secret")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    clients = AwsClients(resolve_addresses, timeout=5, blocking=BlockingCalls())
    try:
        anonymous = clients._clients[await clients.client("S3", {"region": "eu-west-1"})]
        assert anonymous.meta.config.signature_version is botocore.UNSIGNED
        assert anonymous.meta.endpoint_url == "https://s3.eu-west-1.amazonaws.com"
        signed = clients._clients[
            await clients.client("S3", {"accessKeyId": "AKIDPLUGIN", "secretAccessKey": "s"})
        ]
        assert signed._request_signer._credentials.access_key == "AKIDPLUGIN"
        with pytest.raises(Exception, match=r"AWS\.EC2 is not provided"):
            await clients.client("EC2", {})
    finally:
        await clients.close()
