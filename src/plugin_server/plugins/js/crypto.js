// `require('crypto')` for plugins, written for this server: the parts of node's module plugins use.
//
// This file is one JavaScript expression, a function that prelude.js calls once per isolate:
//
//     (crypto.js)({encodeText, decodeBytes, bytesOf, wrapBytes, seed})  ->  the module
//
//   encodeText(text, encoding)    a string to bytes (Buffer's encodings)
//   decodeBytes(bytes, encoding)  bytes to a string ("hex", "base64", ...)
//   bytesOf(value)                a Uint8Array over an ArrayBuffer or view, or undefined
//   wrapBytes(bytes)              a Buffer over the same memory
//   seed                          64 hex digits from the host's secure random source
//
// createHash and createHmac support md5, sha1 and sha256. Randomness: the isolate has no secure
// source of its own (no crypto.getRandomValues in mini-racer's V8, and Math.random is not one), so
// randomBytes and randomUUID come from a generator seeded by the host when the isolate starts: block
// i is SHA-256(key || i), and the key is replaced by SHA-256(key || "rekey" || i) after each call, so
// earlier output cannot be recomputed from a later state. The seed never reaches plugin code.
(function (host) {
    "use strict";

    const { encodeText, decodeBytes, bytesOf, wrapBytes, seed } = host;

    const NativeError = Error;
    const NativeTypeError = TypeError;
    const NativePromise = Promise;

    // ------------------------------------------------------------------ block functions

    const SHA256_K = new Int32Array([
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ]);

    // MD5's sine table and shifts.
    const MD5_K = new Int32Array(64).map((_, i) => Math.floor(Math.abs(Math.sin(i + 1)) * 2 ** 32) | 0);
    const MD5_S = [7, 12, 17, 22, 5, 9, 14, 20, 4, 11, 16, 23, 6, 10, 15, 21];

    const rotl = (x, n) => (x << n) | (x >>> (32 - n));

    function sha256Block(h, w) {
        for (let i = 16; i < 64; i++) {
            const a = w[i - 15];
            const b = w[i - 2];
            const s0 = rotl(a, 25) ^ rotl(a, 14) ^ (a >>> 3);
            const s1 = rotl(b, 15) ^ rotl(b, 13) ^ (b >>> 10);
            w[i] = (w[i - 16] + s0 + w[i - 7] + s1) | 0;
        }
        let [a, b, c, d, e, f, g, k] = h;
        for (let i = 0; i < 64; i++) {
            const t1 = (k + (rotl(e, 26) ^ rotl(e, 21) ^ rotl(e, 7)) + ((e & f) ^ (~e & g)) + SHA256_K[i] + w[i]) | 0;
            const t2 = ((rotl(a, 30) ^ rotl(a, 19) ^ rotl(a, 10)) + ((a & b) ^ (a & c) ^ (b & c))) | 0;
            k = g;
            g = f;
            f = e;
            e = (d + t1) | 0;
            d = c;
            c = b;
            b = a;
            a = (t1 + t2) | 0;
        }
        h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += k;
    }

    function sha1Block(h, w) {
        for (let i = 16; i < 80; i++) {
            w[i] = rotl(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
        }
        let [a, b, c, d, e] = h;
        for (let i = 0; i < 80; i++) {
            const f = i < 20 ? ((b & c) | (~b & d)) + 0x5a827999
                : i < 40 ? (b ^ c ^ d) + 0x6ed9eba1
                    : i < 60 ? ((b & c) | (b & d) | (c & d)) + 0x8f1bbcdc
                        : (b ^ c ^ d) + 0xca62c1d6;
            const t = (rotl(a, 5) + f + e + w[i]) | 0;
            e = d;
            d = c;
            c = rotl(b, 30);
            b = a;
            a = t;
        }
        h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e;
    }

    function md5Block(h, w) {
        let [a, b, c, d] = h;
        for (let i = 0; i < 64; i++) {
            let f;
            let g;
            if (i < 16) {
                f = (b & c) | (~b & d);
                g = i;
            } else if (i < 32) {
                f = (d & b) | (~d & c);
                g = (5 * i + 1) & 15;
            } else if (i < 48) {
                f = b ^ c ^ d;
                g = (3 * i + 5) & 15;
            } else {
                f = c ^ (b | ~d);
                g = (7 * i) & 15;
            }
            const t = d;
            d = c;
            c = b;
            b = (b + rotl((a + f + MD5_K[i] + w[g]) | 0, MD5_S[(i >> 4) * 4 + (i & 3)])) | 0;
            a = t;
        }
        h[0] += a; h[1] += b; h[2] += c; h[3] += d;
    }

    const ALGORITHMS = {
        md5: { block: md5Block, words: 16, littleEndian: true, initial: [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476] },
        sha1: { block: sha1Block, words: 80, littleEndian: false, initial: [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476, 0xc3d2e1f0] },
        sha256: {
            block: sha256Block, words: 64, littleEndian: false,
            initial: [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19],
        },
    };

    function algorithmOf(name) {
        const key = String(name).toLowerCase().replace(/^(rsa-)?sha-?/, "sha");
        if (!Object.hasOwn(ALGORITHMS, key)) {
            throw new NativeError(`Digest method not supported: ${name}`);
        }
        return ALGORITHMS[key];
    }

    // ------------------------------------------------------------------ streaming digest

    class Digest {
        constructor(algorithm) {
            this.algorithm = algorithm;
            this.state = new Int32Array(algorithm.initial);
            this.words = new Int32Array(algorithm.words);
            this.buffer = new Uint8Array(64);
            this.view = new DataView(this.buffer.buffer);
            this.filled = 0;
            this.length = 0;
        }

        compress() {
            const { words, view } = this;
            const little = this.algorithm.littleEndian;
            for (let i = 0; i < 16; i++) {
                words[i] = view.getInt32(i * 4, little);
            }
            this.algorithm.block(this.state, words);
        }

        update(bytes) {
            this.length += bytes.length;
            let at = 0;
            while (at < bytes.length) {
                const take = Math.min(64 - this.filled, bytes.length - at);
                this.buffer.set(bytes.subarray(at, at + take), this.filled);
                this.filled += take;
                at += take;
                if (this.filled === 64) {
                    this.compress();
                    this.filled = 0;
                }
            }
        }

        finish() {
            const little = this.algorithm.littleEndian;
            const bits = this.length * 8;
            this.buffer[this.filled++] = 0x80;
            if (this.filled > 56) {
                this.buffer.fill(0, this.filled);
                this.compress();
                this.filled = 0;
            }
            this.buffer.fill(0, this.filled);
            const high = Math.floor(bits / 2 ** 32);
            this.view.setUint32(little ? 56 : 60, bits >>> 0, little);
            this.view.setUint32(little ? 60 : 56, high, little);
            this.compress();
            const out = new Uint8Array(this.state.length * 4);
            const outView = new DataView(out.buffer);
            this.state.forEach((word, i) => outView.setInt32(i * 4, word, little));
            return out;
        }
    }

    function digestOf(algorithm, ...parts) {
        const digest = new Digest(algorithm);
        parts.forEach((part) => digest.update(part));
        return digest.finish();
    }

    function inputBytes(data, encoding) {
        if (typeof data === "string") {
            return encodeText(data, encoding === undefined ? "utf8" : encoding);
        }
        const bytes = bytesOf(data);
        if (bytes === undefined) {
            throw new NativeTypeError("The \"data\" argument must be of type string or an instance of Buffer, TypedArray, or DataView.");
        }
        return bytes;
    }

    function output(bytes, encoding) {
        return encoding === undefined || encoding === "buffer" ? wrapBytes(bytes) : decodeBytes(bytes, encoding);
    }

    // node's Hash and Hmac: update(data[, inputEncoding]) returns this; digest([encoding]) once.
    class Hash {
        #digest;
        #finish;

        constructor(digest, finish) {
            this.#digest = digest;
            this.#finish = finish;
        }

        update(data, inputEncoding) {
            if (this.#digest === null) {
                throw new NativeError("Digest already called");
            }
            this.#digest.update(inputBytes(data, inputEncoding));
            return this;
        }

        digest(encoding) {
            if (this.#digest === null) {
                throw new NativeError("Digest already called");
            }
            const bytes = this.#finish(this.#digest.finish());
            this.#digest = null;
            return output(bytes, encoding);
        }
    }

    function createHash(algorithm) {
        return new Hash(new Digest(algorithmOf(algorithm)), (bytes) => bytes);
    }

    function createHmac(algorithm, key) {
        const chosen = algorithmOf(algorithm);
        let keyBytes = inputBytes(key, "utf8");
        if (keyBytes.length > 64) {
            keyBytes = digestOf(chosen, keyBytes);
        }
        const inner = new Uint8Array(64).fill(0x36);
        const outer = new Uint8Array(64).fill(0x5c);
        keyBytes.forEach((byte, i) => {
            inner[i] ^= byte;
            outer[i] ^= byte;
        });
        const digest = new Digest(chosen);
        digest.update(inner);
        return new Hash(digest, (innerHash) => digestOf(chosen, outer, innerHash));
    }

    // ------------------------------------------------------------------ randomness

    if (typeof seed !== "string" || !/^[0-9a-f]{64}$/.test(seed)) {
        throw new NativeError("crypto.js needs a 32-byte random seed from the host");
    }
    let key = encodeText(seed, "hex");
    let counter = 0;
    const REKEY = encodeText("rekey", "utf8");

    function counterBytes() {
        const bytes = new Uint8Array(8);
        new DataView(bytes.buffer).setFloat64(0, counter++);
        return bytes;
    }

    function randomFill(bytes) {
        for (let at = 0; at < bytes.length; at += 32) {
            const block = digestOf(ALGORITHMS.sha256, key, counterBytes());
            bytes.set(block.subarray(0, Math.min(32, bytes.length - at)), at);
        }
        key = digestOf(ALGORITHMS.sha256, key, REKEY, counterBytes());
        return bytes;
    }

    function randomBytes(size, callback) {
        if (typeof size !== "number" || !(size >= 0) || size > 2 ** 31 - 1 || size % 1 !== 0) {
            throw new RangeError(`The value of "size" is out of range. Received ${size}`);
        }
        const bytes = wrapBytes(randomFill(new Uint8Array(size)));
        if (typeof callback === "function") {
            NativePromise.resolve().then(() => callback(null, bytes));
            return undefined;
        }
        return bytes;
    }

    function randomUUID() {
        const bytes = randomFill(new Uint8Array(16));
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        const hex = decodeBytes(bytes, "hex");
        return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
    }

    function randomInt(min, max) {
        const [low, high] = max === undefined ? [0, min] : [min, max];
        if (!Number.isSafeInteger(low) || !Number.isSafeInteger(high) || high <= low || high - low > 2 ** 48) {
            throw new RangeError("randomInt needs safe integers min < max, at most 2**48 apart");
        }
        const range = high - low;
        const limit = 2 ** 48 - (2 ** 48 % range);
        for (;;) {
            const bytes = randomFill(new Uint8Array(6));
            const value = bytes.reduce((sum, byte) => sum * 256 + byte, 0);
            if (value < limit) {
                return low + (value % range);
            }
        }
    }

    function timingSafeEqual(a, b) {
        const left = bytesOf(a);
        const right = bytesOf(b);
        if (left === undefined || right === undefined) {
            throw new NativeTypeError("The \"buf1\" and \"buf2\" arguments must be Buffers, TypedArrays, or DataViews.");
        }
        if (left.length !== right.length) {
            throw new RangeError("Input buffers must have the same byte length");
        }
        let difference = 0;
        for (let i = 0; i < left.length; i++) {
            difference |= left[i] ^ right[i];
        }
        return difference === 0;
    }

    return Object.freeze({
        createHash,
        createHmac,
        randomBytes,
        randomUUID,
        randomInt,
        timingSafeEqual,
        getHashes: () => ["md5", "sha1", "sha256"],
    });
})
