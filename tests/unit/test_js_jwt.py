"""require('jsonwebtoken') in plugins (jwt.js): HS256 and RS256 tokens checked both ways against
Python's hmac and `cryptography` (RSA PKCS#1 v1.5 with SHA-256), key formats, claims and the errors
jsonwebtoken throws."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.js_support import body_outcome

HEAD = "const jwt = require('jsonwebtoken')"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey, form: str) -> str:
    private = {
        "pkcs8": serialization.PrivateFormat.PKCS8,
        "pkcs1": serialization.PrivateFormat.TraditionalOpenSSL,
    }
    if form in private:
        return key.private_bytes(
            serialization.Encoding.PEM, private[form], serialization.NoEncryption()
        ).decode()
    public = {
        "spki": serialization.PublicFormat.SubjectPublicKeyInfo,
        "pkcs1-public": serialization.PublicFormat.PKCS1,
    }
    return key.public_key().public_bytes(serialization.Encoding.PEM, public[form]).decode()


async def run(body: str, **config: Any) -> Any:
    return await body_outcome(body, head=HEAD, config=config, timeout=5.0)


@pytest.mark.parametrize("form", ["pkcs8", "pkcs1"])
async def test_rs256_tokens_verify_in_cryptography(key: rsa.RSAPrivateKey, form: str) -> None:
    token = await run(
        "out = jwt.sign({ iss: 'svc@example.iam', scope: 'bigquery' }, config.key, { algorithm: 'RS256', expiresIn: '1h', keyid: 'k1' })",
        key=pem(key, form),
    )
    header, payload, signature = token.split(".")
    key.public_key().verify(
        unb64url(signature), f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256()
    )  # raises if the signature is wrong
    assert json.loads(unb64url(header)) == {"alg": "RS256", "typ": "JWT", "kid": "k1"}
    claims = json.loads(unb64url(payload))
    assert claims["iss"] == "svc@example.iam" and claims["exp"] - claims["iat"] == 3600
    assert abs(claims["iat"] - time.time()) < 60


@pytest.mark.parametrize("form", ["spki", "pkcs1-public", "pkcs8"])
async def test_tokens_signed_by_cryptography_verify_here(key: rsa.RSAPrivateKey, form: str) -> None:
    header = b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps({"sub": "user-1", "aud": "posthog"}).encode())
    signature = b64url(key.sign(f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256()))
    token = f"{header}.{payload}.{signature}"
    tampered = f"{header}.{b64url(json.dumps({'sub': 'admin', 'aud': 'posthog'}).encode())}.{signature}"
    out = await run(
        """
        const attempt = (fn) => { try { return fn() } catch (error) { return `${error.name}: ${error.message}` } }
        out = {
            ok: jwt.verify(config.token, config.key, { audience: 'posthog' }),
            tampered: attempt(() => jwt.verify(config.tampered, config.key)),
            audience: attempt(() => jwt.verify(config.token, config.key, { audience: 'other' })),
            algorithm: attempt(() => jwt.verify(config.token, config.key, { algorithms: ['HS256'] })),
        }
        """,
        token=token,
        tampered=tampered,
        key=pem(key, form),
    )
    assert out == {
        "ok": {"sub": "user-1", "aud": "posthog"},
        "tampered": "JsonWebTokenError: invalid signature",
        "audience": "JsonWebTokenError: jwt audience invalid. expected: other",
        "algorithm": "JsonWebTokenError: invalid algorithm",
    }


async def test_hs256_decode_expiry_and_callbacks() -> None:
    out = await run(
        """
        const attempt = (fn) => { try { return fn() } catch (error) { return `${error.name}: ${error.message}` } }
        const token = jwt.sign({ user: 1, iat: 1000 }, 'shh')
        const expired = jwt.sign({ user: 2 }, 'shh', { expiresIn: -10 })
        const later = jwt.sign({ user: 3 }, 'shh', { notBefore: '2 days' })
        const viaCallback = await new Promise((resolve) => jwt.sign({ user: 4 }, 'shh', { noTimestamp: true }, (error, value) => resolve(error || value)))
        out = {
            token,
            decoded: jwt.decode(token, { complete: true }).header,
            verified: jwt.verify(token, 'shh'),
            wrongSecret: attempt(() => jwt.verify(token, 'other')),
            expired: attempt(() => jwt.verify(expired, 'shh')),
            ignored: jwt.verify(expired, 'shh', { ignoreExpiration: true }).user,
            notYet: attempt(() => jwt.verify(later, 'shh')),
            malformed: [jwt.decode('nope'), attempt(() => jwt.verify('a.b', 'shh'))],
            viaCallback: jwt.decode(viaCallback),
            unsupported: attempt(() => jwt.sign({}, 'shh', { algorithm: 'ES256' })),
        }
        """
    )
    header, payload, signature = out["token"].split(".")
    expected = hmac.new(b"shh", f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert unb64url(signature) == expected
    assert json.loads(unb64url(payload)) == {"user": 1, "iat": 1000}
    assert out["decoded"] == {"alg": "HS256", "typ": "JWT"}
    assert out["verified"] == {"user": 1, "iat": 1000}
    assert out["wrongSecret"] == "JsonWebTokenError: invalid signature"
    assert out["expired"] == "TokenExpiredError: jwt expired"
    assert out["ignored"] == 2
    assert out["notYet"] == "NotBeforeError: jwt not active"
    assert out["malformed"] == [None, "JsonWebTokenError: jwt malformed"]
    assert out["viaCallback"] == {"user": 4}
    assert out["unsupported"].startswith('JsonWebTokenError: "algorithm" must be a valid string enum value')
