"""`require('@google-cloud/bigquery' | '@google-cloud/pubsub' | '@google-cloud/storage')` for JS
plugins: the host side, Google's JSON APIs over the plugin's HTTP client (google.js is the JS side,
which keeps the node clients' API and errors).

A client authenticates as the service account whose key the plugin passes (`credentials`, the JSON
key file the apps keep as an attachment): a JWT signed with its private key (`cryptography`) is
exchanged at the key's `token_uri` for an access token, kept until shortly before it expires. Without
a key, requests go unauthenticated (emulators). Every request (the token's too) goes through the
plugin's HTTP client, so whatever guards plugin HTTP (the SSRF guard) guards these as well.
"""

from __future__ import annotations

import base64
import itertools
import json
import time
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from plugin_server.plugins.js.hosted import HostedError, Operation
from plugin_server.plugins.meta.network import fetch_failed

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
# service -> (default endpoint, path prefix of its JSON API)
SERVICES = {
    "bigquery": ("https://bigquery.googleapis.com", "/bigquery/v2"),
    "pubsub": ("https://pubsub.googleapis.com", "/v1"),
    "storage": ("https://storage.googleapis.com", "/storage/v1"),
    "storage-upload": ("https://storage.googleapis.com", "/upload/storage/v1"),
}
MAX_CLIENTS = 20
MAX_RESPONSE_BYTES = 32 * 1024 * 1024
TOKEN_MARGIN_SECONDS = 60


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class ServiceAccount:
    """Access tokens for one service account key."""

    def __init__(self, key: dict[str, Any]) -> None:
        try:
            private_key = serialization.load_pem_private_key(str(key["private_key"]).encode(), password=None)
            self.email = str(key["client_email"])
        except (KeyError, ValueError, TypeError) as error:
            raise HostedError("Error", f"The credentials are not a service account key: {error}") from None
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise HostedError("Error", "The service account key is not an RSA key")
        self._key = private_key
        self._key_id = key.get("private_key_id")
        self.token_uri = str(key.get("token_uri") or "https://oauth2.googleapis.com/token")
        self._token: str | None = None
        self._expires = 0.0

    def assertion(self, now: int) -> str:
        header = {"alg": "RS256", "typ": "JWT", **({"kid": self._key_id} if self._key_id else {})}
        claims = {"iss": self.email, "scope": SCOPE, "aud": self.token_uri, "iat": now, "exp": now + 3600}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    async def token(self, http: httpx.AsyncClient) -> str:
        if self._token is not None and time.time() < self._expires:
            return self._token
        response = await http.post(
            self.token_uri,
            data={
                "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                "assertion": self.assertion(int(time.time())),
            },
        )
        answer = _json_of(response)
        if response.status_code != 200 or "access_token" not in answer:
            detail = answer.get("error_description") or answer.get("error") or response.text[:200]
            raise HostedError(
                "Error",
                f"Could not get an access token for {self.email}: {detail}",
                code=response.status_code,
            )
        self._token = str(answer["access_token"])
        self._expires = time.time() + float(answer.get("expires_in", 3600)) - TOKEN_MARGIN_SECONDS
        return self._token


def _json_of(response: httpx.Response) -> dict[str, Any]:
    try:
        answer = response.json()
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def _api_error(response: httpx.Response) -> HostedError:
    """The API's error: its message, HTTP code, gRPC status name and the `errors` list."""
    error = _json_of(response).get("error")
    details = error if isinstance(error, dict) else {}
    message = str(details.get("message") or response.reason_phrase or f"HTTP {response.status_code}")
    return HostedError(
        "ApiError",
        message,
        code=response.status_code,
        status=details.get("status"),
        errors=details.get("errors") or [],
    )


class GoogleClients:
    """The Google clients of one isolate, by the handle the plugin's client object holds."""

    def __init__(self, http: httpx.AsyncClient, timeout: float) -> None:
        self._http = http
        self._timeout = timeout
        self._clients: dict[int, tuple[str | None, ServiceAccount | None]] = {}
        self._handles = itertools.count(1)

    def operations(self) -> dict[str, Operation]:
        return {"google.client": self.client, "google.request": self.request}

    async def client(self, options: dict[str, Any]) -> int:
        """A client with the plugin's `credentials` (a service account key) and `apiEndpoint`."""
        if len(self._clients) >= MAX_CLIENTS:
            raise HostedError("Error", f"@google-cloud: a plugin may create at most {MAX_CLIENTS} clients")
        endpoint = options.get("apiEndpoint")
        if endpoint:
            endpoint = str(endpoint).rstrip("/")
            endpoint = endpoint if "://" in endpoint else f"https://{endpoint}"
            self._check(endpoint)
        credentials = options.get("credentials")
        account = ServiceAccount(credentials) if isinstance(credentials, dict) and credentials else None
        if account is not None:
            self._check(account.token_uri)
        handle = next(self._handles)
        self._clients[handle] = (endpoint, account)
        return handle

    @staticmethod
    def _check(url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise HostedError("TypeError", f"@google-cloud: {url!r} is not an http(s) URL")

    async def request(
        self,
        handle: int,
        service: str,
        method: str,
        path: list[str],
        query: dict[str, str] | None,
        body: Any,
        media: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """`method` on the service's JSON API at `path` (segments, each URL-quoted here), with a JSON
        `body`, or the bytes of `media` ({base64, contentType}) for an upload; the JSON answer."""
        client = self._clients.get(handle)
        if (
            client is None
            or service not in SERVICES
            or method not in ("GET", "POST", "PUT", "PATCH", "DELETE")
        ):
            raise HostedError("Error", "@google-cloud: not a request this client can make")
        endpoint, account = client
        default, prefix = SERVICES[service]
        url = (
            (endpoint or default) + prefix + "".join("/" + quote(str(segment), safe=":@") for segment in path)
        )
        try:
            response = await self._send(account, method, url, query, body, media)
        except httpx.HTTPError as error:  # the token request's too
            raise fetch_failed(url, error) from None
        if len(response.content) > MAX_RESPONSE_BYTES:
            raise HostedError(
                "RangeError", f"@google-cloud: a response larger than {MAX_RESPONSE_BYTES} bytes"
            )
        if response.status_code >= 400:
            raise _api_error(response)
        if media is None and method == "GET" and query and query.get("alt") == "media":
            return {"$bytes": base64.b64encode(response.content).decode()}
        return _json_of(response)

    async def _send(
        self,
        account: ServiceAccount | None,
        method: str,
        url: str,
        query: dict[str, str] | None,
        body: Any,
        media: dict[str, str] | None,
    ) -> httpx.Response:
        headers = (
            {"Authorization": f"Bearer {await account.token(self._http)}"} if account is not None else {}
        )
        content: bytes | None = None
        if media is not None:
            content = base64.b64decode(media["base64"])
            headers["Content-Type"] = media.get("contentType") or "application/octet-stream"
        elif body is not None:
            content = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        return await self._http.request(
            method, url, params=query or None, content=content, headers=headers, timeout=self._timeout
        )

    async def close(self) -> None:
        self._clients.clear()
