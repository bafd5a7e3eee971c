// `require('jsonwebtoken')` for plugins, written for this server: jsonwebtoken 8's sign, verify and
// decode with HS256 and RS256, synchronous as in jsonwebtoken (or with a callback).
//
// This file is one JavaScript expression, a function that prelude.js calls once per isolate:
//
//     (jwt.js)(kit, modules)  ->  {jsonwebtoken: the module}
//
//   kit.crypto   require('crypto') (SHA-256, HMAC, timingSafeEqual); kit.Buffer
//
// RS256 is RSASSA-PKCS1-v1_5 with SHA-256 (RFC 8017) computed here with BigInt, the private key
// operation by the Chinese remainder theorem. Keys are PEM: "PRIVATE KEY" (PKCS#8), "RSA PRIVATE
// KEY" (PKCS#1), "PUBLIC KEY" (SPKI), "RSA PUBLIC KEY" (PKCS#1), up to 8192 bits. The isolate has no
// other source of RSA: this is the one the plugin gets, checked against Python's `cryptography`.
(function (kit) {
    "use strict";

    const { crypto, Buffer } = kit;
    const MAX_KEY_BITS = 8192;

    class JsonWebTokenError extends Error {
        constructor(message, error) {
            super(message);
            this.name = "JsonWebTokenError";
            if (error) this.inner = error;
        }
    }

    class TokenExpiredError extends JsonWebTokenError {
        constructor(message, expiredAt) {
            super(message);
            this.name = "TokenExpiredError";
            this.expiredAt = expiredAt;
        }
    }

    class NotBeforeError extends JsonWebTokenError {
        constructor(message, date) {
            super(message);
            this.name = "NotBeforeError";
            this.date = date;
        }
    }

    // ------------------------------------------------------------------ encodings

    function base64url(bytes) {
        return Buffer.from(bytes).toString("base64url");
    }

    function fromBase64url(text) {
        if (!/^[A-Za-z0-9_-]*$/.test(text)) throw new JsonWebTokenError("jwt malformed");
        return Buffer.from(text, "base64url");
    }

    function bigFromBytes(bytes) {
        let value = 0n;
        for (const byte of bytes) value = (value << 8n) | BigInt(byte);
        return value;
    }

    function bytesFromBig(value, length) {
        const bytes = new Uint8Array(length);
        for (let i = length - 1; i >= 0; i--) {
            bytes[i] = Number(value & 0xffn);
            value >>= 8n;
        }
        return bytes;
    }

    // ------------------------------------------------------------------ keys (PEM, DER)

    function pemBody(text) {
        const match = /-----BEGIN ([A-Z ]+)-----([\s\S]*?)-----END \1-----/.exec(String(text));
        if (match === null) throw new JsonWebTokenError("secretOrPrivateKey must be a PEM key for RS256");
        return { label: match[1], der: Buffer.from(match[2].replace(/\s+/g, ""), "base64") };
    }

    // One DER element at `at`: {tag, start (of contents), end}.
    function element(der, at) {
        const tag = der[at];
        let length = der[at + 1];
        let start = at + 2;
        if (length & 0x80) {
            const count = length & 0x7f;
            if (count > 4) throw new JsonWebTokenError("invalid key: DER length too large");
            length = 0;
            for (let i = 0; i < count; i++) length = length * 256 + der[start + i];
            start += count;
        }
        if (start + length > der.length) throw new JsonWebTokenError("invalid key: truncated DER");
        return { tag, start, end: start + length };
    }

    function children(der, parent) {
        const items = [];
        for (let at = parent.start; at < parent.end;) {
            const item = element(der, at);
            items.push(item);
            at = item.end;
        }
        return items;
    }

    function integers(der, sequence) {
        return children(der, sequence).filter((item) => item.tag === 0x02)
            .map((item) => bigFromBytes(der.subarray(item.start, item.end)));
    }

    const RSA_OID = "2a864886f70d010101";

    function rsaKey(der, label) {
        const top = element(der, 0);
        if (label === "RSA PRIVATE KEY" || label === "RSA PUBLIC KEY") {
            const values = integers(der, top);
            return label === "RSA PUBLIC KEY"
                ? { n: values[0], e: values[1] }
                : { n: values[1], e: values[2], d: values[3], p: values[4], q: values[5], dp: values[6], dq: values[7], qi: values[8] };
        }
        const [first, second, third] = children(der, top);
        const algorithm = label === "PRIVATE KEY" ? second : first;
        const oid = children(der, algorithm)[0];
        if (Buffer.from(der.subarray(oid.start, oid.end)).toString("hex") !== RSA_OID) {
            throw new JsonWebTokenError("only RSA keys are supported for RS256");
        }
        if (label === "PRIVATE KEY") {
            return rsaKey(der.subarray(third.start, third.end), "RSA PRIVATE KEY");
        }
        return rsaKey(der.subarray(second.start + 1, second.end), "RSA PUBLIC KEY");  // BIT STRING: skip unused-bits byte
    }

    const KEY_LABELS = ["PRIVATE KEY", "RSA PRIVATE KEY", "PUBLIC KEY", "RSA PUBLIC KEY"];

    function keyOf(pem) {
        const { label, der } = pemBody(Buffer.isBuffer(pem) ? pem.toString() : (pem && pem.key) || pem);
        if (!KEY_LABELS.includes(label)) throw new JsonWebTokenError(`unsupported key type: ${label}`);
        const key = rsaKey(der, label);
        const bits = key.n.toString(2).length;
        if (bits > MAX_KEY_BITS) throw new JsonWebTokenError(`RSA keys are limited to ${MAX_KEY_BITS} bits`);
        if (bits < 2048 - 8) throw new JsonWebTokenError("RS256 requires a key of at least 2048 bits");
        key.length = Math.ceil(bits / 8);
        return key;
    }

    // ------------------------------------------------------------------ RSA

    function modPow(base, exponent, modulus) {
        let result = 1n;
        base %= modulus;
        for (const bit of exponent.toString(2)) {
            result = (result * result) % modulus;
            if (bit === "1") result = (result * base) % modulus;
        }
        return result;
    }

    const SHA256_PREFIX = Buffer.from("3031300d060960864801650304020105000420", "hex");

    function encodedMessage(input, length) {
        const digest = crypto.createHash("sha256").update(input).digest();
        const t = Buffer.concat([SHA256_PREFIX, digest]);
        const em = new Uint8Array(length).fill(0xff);
        em[0] = 0;
        em[1] = 1;
        em[length - t.length - 1] = 0;
        em.set(t, length - t.length);
        return em;
    }

    function rsaSign(input, key) {
        if (key.d === undefined) throw new JsonWebTokenError("secretOrPrivateKey must be a private key for RS256");
        const m = bigFromBytes(encodedMessage(input, key.length));
        let s;
        if (key.p !== undefined && key.qi !== undefined) {
            const s1 = modPow(m, key.dp, key.p);
            const s2 = modPow(m, key.dq, key.q);
            const h = (key.qi * ((s1 - s2) % key.p + key.p)) % key.p;
            s = s2 + h * key.q;
        } else {
            s = modPow(m, key.d, key.n);
        }
        return bytesFromBig(s, key.length);
    }

    function rsaVerify(input, signature, key) {
        if (signature.length !== key.length) return false;
        const s = bigFromBytes(signature);
        if (s >= key.n) return false;
        const em = bytesFromBig(modPow(s, key.e, key.n), key.length);
        return crypto.timingSafeEqual(Buffer.from(em), Buffer.from(encodedMessage(input, key.length)));
    }

    // ------------------------------------------------------------------ algorithms

    const ALGORITHMS = {
        HS256: {
            sign: (input, secret) => crypto.createHmac("sha256", secretOf(secret)).update(input).digest(),
            verify(input, signature, secret) {
                const expected = crypto.createHmac("sha256", secretOf(secret)).update(input).digest();
                return expected.length === signature.length && crypto.timingSafeEqual(expected, signature);
            },
        },
        RS256: {
            sign: (input, pem) => rsaSign(input, keyOf(pem)),
            verify: (input, signature, pem) => rsaVerify(input, signature, keyOf(pem)),
        },
    };

    function secretOf(secret) {
        if (typeof secret !== "string" && !(secret instanceof Uint8Array)) {
            throw new JsonWebTokenError("secretOrPrivateKey must have a value");
        }
        return secret;
    }

    function algorithmOf(name) {
        const algorithm = ALGORITHMS[name];
        if (algorithm === undefined) {
            throw new JsonWebTokenError(`"algorithm" must be a valid string enum value (here: ${Object.keys(ALGORITHMS).join(", ")})`);
        }
        return algorithm;
    }

    // ------------------------------------------------------------------ time spans ("1h", 60)

    const UNITS = { ms: 0.001, s: 1, sec: 1, second: 1, seconds: 1, m: 60, min: 60, minute: 60, minutes: 60,
        h: 3600, hr: 3600, hour: 3600, hours: 3600, d: 86400, day: 86400, days: 86400, w: 604800, week: 604800,
        weeks: 604800, y: 31557600, year: 31557600, years: 31557600 };

    function seconds(span, name) {
        if (typeof span === "number") return span;
        const match = /^\s*(-?\d*\.?\d+)\s*([a-z]*)\s*$/i.exec(String(span));
        const unit = match && (match[2] === "" ? "ms" : match[2].toLowerCase());
        if (match === null || UNITS[unit] === undefined) {
            throw new JsonWebTokenError(`"${name}" should be a number of seconds or string representing a timespan`);
        }
        return Math.floor(parseFloat(match[1]) * UNITS[unit]);
    }

    // ------------------------------------------------------------------ sign, verify, decode

    function withCallback(callback, work) {
        if (typeof callback !== "function") return work();
        let result;
        try {
            result = work();
        } catch (error) {
            kit.later(() => callback(error));
            return undefined;
        }
        kit.later(() => callback(null, result));
        return undefined;
    }

    const CLAIMS = [["audience", "aud"], ["issuer", "iss"], ["subject", "sub"], ["jwtid", "jti"]];

    function sign(payload, secretOrPrivateKey, options, callback) {
        if (typeof options === "function") {
            callback = options;
            options = {};
        }
        const given = options || {};
        return withCallback(callback, () => {
            const name = given.algorithm || "HS256";
            const algorithm = algorithmOf(name);
            const header = { alg: name, typ: "JWT", ...(given.header || {}) };
            if (given.keyid) header.kid = given.keyid;
            let body = payload;
            if (payload !== null && typeof payload === "object" && !(payload instanceof Uint8Array)) {
                body = { ...payload };
                const now = typeof body.iat === "number" ? body.iat : Math.floor(Date.now() / 1000);
                if (!given.noTimestamp) body.iat = now;
                if (given.expiresIn !== undefined) body.exp = now + seconds(given.expiresIn, "expiresIn");
                if (given.notBefore !== undefined) body.nbf = now + seconds(given.notBefore, "notBefore");
                for (const [option, claim] of CLAIMS) {
                    if (given[option] !== undefined) body[claim] = given[option];
                }
            } else if (given.expiresIn !== undefined) {
                throw new JsonWebTokenError("invalid expiresIn option for string payload");
            }
            const content = typeof body === "string" ? body : JSON.stringify(body);
            const input = `${base64url(Buffer.from(JSON.stringify(header)))}.${base64url(Buffer.from(content))}`;
            return `${input}.${base64url(algorithm.sign(input, secretOrPrivateKey))}`;
        });
    }

    function split(token) {
        if (typeof token !== "string") throw new JsonWebTokenError("jwt must be a string");
        const parts = token.split(".");
        if (parts.length !== 3) throw new JsonWebTokenError("jwt malformed");
        let header;
        let payload;
        try {
            header = JSON.parse(fromBase64url(parts[0]).toString());
            const text = fromBase64url(parts[1]).toString();
            try {
                payload = JSON.parse(text);
            } catch (error) {
                payload = text;
            }
        } catch (error) {
            throw new JsonWebTokenError("invalid token", error);
        }
        return { header, payload, parts };
    }

    function decode(token, options) {
        try {
            const { header, payload, parts } = split(token);
            return options && options.complete ? { header, payload, signature: parts[2] } : payload;
        } catch (error) {
            return null;
        }
    }

    function expected(actual, wanted) {
        const wants = Array.isArray(wanted) ? wanted : [wanted];
        const actuals = Array.isArray(actual) ? actual : [actual];
        return actuals.some((value) => wants.some((want) => (want instanceof RegExp ? want.test(value) : want === value)));
    }

    function verify(token, secretOrPublicKey, options, callback) {
        if (typeof options === "function") {
            callback = options;
            options = {};
        }
        const given = options || {};
        return withCallback(callback, () => {
            const { header, payload, parts } = split(token);
            if (!secretOrPublicKey) throw new JsonWebTokenError("secret or public key must be provided");
            const isPem = /-----BEGIN/.test(String(secretOrPublicKey.key || secretOrPublicKey));
            const allowed = given.algorithms || (isPem ? ["RS256"] : ["HS256"]);
            if (!allowed.includes(header.alg)) throw new JsonWebTokenError("invalid algorithm");
            const algorithm = algorithmOf(header.alg);
            if (!algorithm.verify(`${parts[0]}.${parts[1]}`, fromBase64url(parts[2]), secretOrPublicKey)) {
                throw new JsonWebTokenError("invalid signature");
            }
            const now = Math.floor(Date.now() / 1000);
            const tolerance = given.clockTolerance || 0;
            if (typeof payload === "object" && payload !== null) {
                if (payload.nbf !== undefined && !given.ignoreNotBefore && payload.nbf > now + tolerance) {
                    throw new NotBeforeError("jwt not active", new Date(payload.nbf * 1000));
                }
                if (payload.exp !== undefined && !given.ignoreExpiration && now >= payload.exp + tolerance) {
                    throw new TokenExpiredError("jwt expired", new Date(payload.exp * 1000));
                }
                for (const [option, claim] of CLAIMS) {
                    if (given[option] !== undefined && !expected(payload[claim], given[option])) {
                        throw new JsonWebTokenError(`jwt ${option} invalid. expected: ${[].concat(given[option]).join(" or ")}`);
                    }
                }
                if (given.maxAge !== undefined) {
                    if (typeof payload.iat !== "number") throw new JsonWebTokenError("iat required when maxAge is specified");
                    const maxAge = seconds(given.maxAge, "maxAge");
                    if (now - payload.iat > maxAge + tolerance) {
                        throw new TokenExpiredError("maxAge exceeded", new Date((payload.iat + maxAge) * 1000));
                    }
                }
            }
            return given.complete ? { header, payload, signature: parts[2] } : payload;
        });
    }

    const jsonwebtoken = Object.freeze({ sign, verify, decode, JsonWebTokenError, TokenExpiredError, NotBeforeError });
    return { jsonwebtoken };
})
