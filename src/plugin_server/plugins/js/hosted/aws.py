"""`require('aws-sdk')` for JS plugins: the host side of aws-sdk v2's service clients over boto3 (aws.js
is the JS side). aws-sdk v2 and boto3 share the API's shapes (operation `PutObject`, parameters
`Bucket`, `Key`...), so one generic call serves every operation of the services in SERVICES.

A plugin's client signs with the credentials it gives, or sends unsigned requests: never with the
server's own (environment, ~/.aws, instance metadata), and endpoints configured for the server are
ignored. A custom `endpoint` goes through the ConnectGuard when the client is made. Calls run in
threads (boto3 blocks), bounded by timeouts; bytes cross as {"$bytes": base64}, times as {"$date": iso}.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import itertools
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError
from botocore.response import StreamingBody

from plugin_server.plugins.js.hosted import BlockingCalls, HostedError, Operation
from plugin_server.plugins.meta.network import ConnectGuard, ConnectRefused

# aws-sdk's class name -> boto3's service name
SERVICES = {
    "S3": "s3",
    "Kinesis": "kinesis",
    "Firehose": "firehose",
    "SQS": "sqs",
    "SNS": "sns",
    "DynamoDB": "dynamodb",
    "Lambda": "lambda",
}
MAX_CLIENTS = 20
# The largest response body (S3 getObject) handed to a plugin.
MAX_BODY_BYTES = 32 * 1024 * 1024


def encode(value: Any) -> Any:
    """A boto3 response as JSON for aws.js: bytes and streaming bodies as {"$bytes"}, times as {"$date"}."""
    if isinstance(value, dict):
        return {key: encode(item) for key, item in value.items() if key != "ResponseMetadata"}
    if isinstance(value, list | tuple):
        return [encode(item) for item in value]
    if isinstance(value, bytes | bytearray):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, StreamingBody):
        data = value.read(MAX_BODY_BYTES + 1)
        if len(data) > MAX_BODY_BYTES:
            raise HostedError("RangeError", f"aws-sdk: a response body larger than {MAX_BODY_BYTES} bytes")
        return {"$bytes": base64.b64encode(data).decode()}
    if isinstance(value, datetime.datetime):
        return {"$date": value.isoformat()}
    return value


def decode(value: Any) -> Any:
    """Parameters from aws.js: {"$bytes": base64} as bytes, {"$date": iso} as datetime."""
    if isinstance(value, dict):
        if set(value) == {"$bytes"}:
            return base64.b64decode(str(value["$bytes"]))
        if set(value) == {"$date"}:
            return datetime.datetime.fromisoformat(str(value["$date"]).replace("Z", "+00:00"))
        return {key: decode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [decode(item) for item in value]
    return value


def _error(error: Exception) -> HostedError:
    """aws-sdk v2's error: `code` and `name` are the service's error code."""
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        metadata = error.response.get("ResponseMetadata", {})
        code = str(details.get("Code") or "UnknownError")
        status = metadata.get("HTTPStatusCode")
        return HostedError(
            code,
            str(details.get("Message") or code),
            code=code,
            statusCode=status,
            requestId=metadata.get("RequestId"),
            retryable=bool(status and status >= 500),
        )
    if isinstance(error, ParamValidationError):
        return HostedError("InvalidParameterType", str(error), code="InvalidParameterType")
    return HostedError("NetworkingError", str(error), code="NetworkingError", retryable=True)


class AwsClients:
    """The boto3 clients of one isolate, by the handle the plugin's service object holds."""

    def __init__(self, guard: ConnectGuard, timeout: float, blocking: BlockingCalls) -> None:
        self._guard = guard
        self._timeout = timeout
        self._blocking = blocking
        self._clients: dict[int, Any] = {}
        self._handles = itertools.count(1)

    def operations(self) -> dict[str, Operation]:
        return {"aws.client": self.client, "aws.call": self.call}

    async def client(self, service: str, options: dict[str, Any]) -> int:
        """A client of `service` (an aws-sdk class name) with the plugin's options."""
        if service not in SERVICES:
            raise HostedError(
                "TypeError", f"aws-sdk: AWS.{service} is not provided (only {', '.join(SERVICES)})"
            )
        if len(self._clients) >= MAX_CLIENTS:
            raise HostedError("Error", f"aws-sdk: a plugin may create at most {MAX_CLIENTS} service objects")
        endpoint = options.get("endpoint")
        if endpoint:
            endpoint = str(endpoint) if "://" in str(endpoint) else f"https://{endpoint}"
            url = urlsplit(endpoint)
            try:
                await self._guard(url.hostname or "", url.port or (443 if url.scheme == "https" else 80))
            except ConnectRefused as error:
                raise HostedError("UnknownEndpoint", str(error), code="UnknownEndpoint") from None
        client = await self._blocking.run(self._make, SERVICES[service], options, endpoint)
        handle = next(self._handles)
        self._clients[handle] = client
        return handle

    def _make(self, service: str, options: dict[str, Any], endpoint: str | None) -> Any:
        key, secret = options.get("accessKeyId"), options.get("secretAccessKey")
        signed = bool(key and secret)
        config = Config(
            region_name=str(options.get("region") or "us-east-1"),
            signature_version=None if signed else botocore.UNSIGNED,
            connect_timeout=self._timeout,
            read_timeout=self._timeout,
            retries={
                "mode": "standard",
                "total_max_attempts": 1 + min(int(options.get("maxRetries") or 2), 3),
            },
            s3={"addressing_style": "path" if options.get("s3ForcePathStyle") else "auto"},
            ignore_configured_endpoint_urls=True,
        )
        # A session of its own, given everything: nothing is read from the server's AWS setup.
        session = boto3.session.Session(
            aws_access_key_id=str(key) if signed else "unsigned",
            aws_secret_access_key=str(secret) if signed else "unsigned",
            aws_session_token=str(options["sessionToken"])
            if signed and options.get("sessionToken")
            else None,
            region_name=config.region_name,
        )
        return session.client(service, config=config, endpoint_url=endpoint)

    async def call(self, handle: int, operation: str, params: dict[str, Any] | None) -> Any:
        """`operation` (PascalCase, as aws-sdk's method name capitalised) with `params`."""
        client = self._clients.get(handle)
        if client is None:
            raise HostedError("Error", "aws-sdk: this service object is not usable")
        if operation not in client.meta.service_model.operation_names:
            raise HostedError("TypeError", f"aws-sdk: {operation} is not an operation of this service")
        method = getattr(client, botocore.xform_name(operation))
        try:
            response = await asyncio.wait_for(
                self._blocking.run(method, **decode(params or {})), self._timeout * 4
            )
            return await self._blocking.run(encode, response)
        except TimeoutError:
            raise HostedError(
                "TimeoutError", "aws-sdk: the request timed out", code="TimeoutError", retryable=True
            ) from None
        except (ClientError, BotoCoreError) as error:
            raise _error(error) from None

    async def close(self) -> None:
        clients = list(self._clients.values())
        self._clients.clear()
        for client in clients:
            client.close()
