// `require('zlib')` for plugins, written for this server: node's synchronous one-shot functions.
//
// This file is one JavaScript expression, a function that prelude.js calls once per isolate:
//
//     (zlib.js)({encodeText, bytesOf, wrapBytes})  ->  the module
//
//   encodeText(text, encoding)  a string to bytes (a string input is UTF-8, like node's)
//   bytesOf(value)              a Uint8Array over an ArrayBuffer or view, or undefined
//   wrapBytes(bytes)            a Buffer over the same memory
//
// gzipSync/gunzipSync (RFC 1952), deflateSync/inflateSync (RFC 1950, zlib) and
// deflateRawSync/inflateRawSync (RFC 1951), plus unzipSync (gzip or zlib, by the header) and
// crc32. Inflate reads stored, fixed and dynamic Huffman blocks and checks the wrappers' CRC-32 /
// Adler-32 and lengths; gunzip reads concatenated members, as node does. Deflate writes one
// fixed-Huffman block after LZ77 matching with a hash chain (lazy matching is not done), or stored
// blocks when that would be larger than the input: valid for every inflater, but about 40% larger
// than zlib's level 6 on text (dynamic Huffman codes are not written). brotliCompressSync writes
// uncompressed brotli meta-blocks (see brotliStored). Options are ignored.
(function (host) {
    "use strict";

    const { encodeText, bytesOf, wrapBytes } = host;
    const NativeError = Error;
    const NativeTypeError = TypeError;

    function zlibError(message, code) {
        const error = new NativeError(message);
        error.code = code;
        error.errno = code === "Z_BUF_ERROR" ? -5 : -3;
        return error;
    }

    function inputBytes(value) {
        if (typeof value === "string") {
            return encodeText(value, "utf8");
        }
        const bytes = bytesOf(value);
        if (bytes === undefined) {
            throw new NativeTypeError("The \"buffer\" argument must be of type string or an instance of Buffer, TypedArray, DataView, or ArrayBuffer.");
        }
        return bytes;
    }

    // ------------------------------------------------------------------ checksums

    const CRC_TABLE = new Int32Array(256);
    for (let n = 0; n < 256; n++) {
        let c = n;
        for (let k = 0; k < 8; k++) {
            c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
        }
        CRC_TABLE[n] = c;
    }

    function crc32(bytes, start = 0) {
        let crc = ~start;
        for (let i = 0; i < bytes.length; i++) {
            crc = CRC_TABLE[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
        }
        return ~crc >>> 0;
    }

    function adler32(bytes) {
        let a = 1;
        let b = 0;
        for (let i = 0; i < bytes.length;) {
            const end = Math.min(i + 5552, bytes.length);  // the most bytes before b can overflow
            for (; i < end; i++) {
                a += bytes[i];
                b += a;
            }
            a %= 65521;
            b %= 65521;
        }
        return ((b << 16) | a) >>> 0;
    }

    // ------------------------------------------------------------------ tables of RFC 1951

    const LENGTH_BASE = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99,
        115, 131, 163, 195, 227, 258];
    const LENGTH_EXTRA = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0];
    const DISTANCE_BASE = [1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025,
        1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577];
    const DISTANCE_EXTRA = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12,
        12, 13, 13];
    const CODE_LENGTH_ORDER = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];

    function fixedLiteralLengths() {
        const lengths = new Uint8Array(288);
        lengths.fill(8, 0, 144);
        lengths.fill(9, 144, 256);
        lengths.fill(7, 256, 280);
        lengths.fill(8, 280, 288);
        return lengths;
    }

    // ------------------------------------------------------------------ inflate

    // A canonical Huffman decoding table: entry [reversed code] = symbol << 4 | length, for codes
    // read LSB-first `bits` at a time (the longest code's length).
    function decodingTable(lengths) {
        let bits = 0;
        for (const length of lengths) {
            bits = length > bits ? length : bits;
        }
        const table = new Int32Array(1 << bits).fill(-1);
        const counts = new Int32Array(16);
        for (const length of lengths) {
            counts[length]++;
        }
        counts[0] = 0;
        const next = new Int32Array(16);
        let code = 0;
        for (let length = 1; length < 16; length++) {
            code = (code + counts[length - 1]) << 1;
            next[length] = code;
        }
        for (let symbol = 0; symbol < lengths.length; symbol++) {
            const length = lengths[symbol];
            if (length === 0) {
                continue;
            }
            let reversed = 0;
            for (let i = 0, c = next[length]++; i < length; i++, c >>= 1) {
                reversed = (reversed << 1) | (c & 1);
            }
            if (reversed >= 1 << length) {
                throw zlibError("invalid code lengths set", "Z_DATA_ERROR");  // over-subscribed
            }
            for (let i = reversed; i < table.length; i += 1 << length) {
                table[i] = (symbol << 4) | length;
            }
        }
        return { table, bits };
    }

    const FIXED_LITERALS = decodingTable(fixedLiteralLengths());
    const FIXED_DISTANCES = decodingTable(new Uint8Array(30).fill(5));

    function inflateRaw(input, start) {
        let position = start;  // next byte to load into `bitBuffer`
        let bitBuffer = 0;
        let bitCount = 0;
        let out = new Uint8Array(Math.max(1024, input.length * 4));
        let size = 0;

        function need(count) {
            while (bitCount < count) {
                if (position >= input.length) {
                    throw zlibError("unexpected end of file", "Z_BUF_ERROR");
                }
                bitBuffer |= input[position++] << bitCount;
                bitCount += 8;
            }
        }

        function bits(count) {
            need(count);
            const value = bitBuffer & ((1 << count) - 1);
            bitBuffer >>>= count;
            bitCount -= count;
            return value;
        }

        function decode(huffman) {
            // Load what is there: the last code of a stream may be shorter than the table's width.
            while (bitCount < huffman.bits && position < input.length) {
                bitBuffer |= input[position++] << bitCount;
                bitCount += 8;
            }
            const entry = huffman.table[bitBuffer & ((1 << huffman.bits) - 1)];
            const length = entry & 15;
            if (entry < 0 || length > bitCount) {
                throw zlibError(entry < 0 ? "invalid code" : "unexpected end of file",
                    entry < 0 ? "Z_DATA_ERROR" : "Z_BUF_ERROR");
            }
            bitBuffer >>>= length;
            bitCount -= length;
            return entry >> 4;
        }

        function reserve(count) {
            if (size + count > out.length) {
                const bigger = new Uint8Array(Math.max(out.length * 2, size + count));
                bigger.set(out.subarray(0, size));
                out = bigger;
            }
        }

        function dynamicTables() {
            const literalCount = bits(5) + 257;
            const distanceCount = bits(5) + 1;
            const codeLengthCount = bits(4) + 4;
            const codeLengths = new Uint8Array(19);
            for (let i = 0; i < codeLengthCount; i++) {
                codeLengths[CODE_LENGTH_ORDER[i]] = bits(3);
            }
            const codeLengthTable = decodingTable(codeLengths);
            const lengths = new Uint8Array(literalCount + distanceCount);
            for (let i = 0; i < lengths.length;) {
                const symbol = decode(codeLengthTable);
                if (symbol < 16) {
                    lengths[i++] = symbol;
                    continue;
                }
                let repeat;
                let value = 0;
                if (symbol === 16) {
                    if (i === 0) {
                        throw zlibError("invalid bit length repeat", "Z_DATA_ERROR");
                    }
                    value = lengths[i - 1];
                    repeat = 3 + bits(2);
                } else {
                    repeat = symbol === 17 ? 3 + bits(3) : 11 + bits(7);
                }
                if (i + repeat > lengths.length) {
                    throw zlibError("invalid bit length repeat", "Z_DATA_ERROR");
                }
                lengths.fill(value, i, i + repeat);
                i += repeat;
            }
            if (lengths[256] === 0) {
                throw zlibError("invalid code -- missing end-of-block", "Z_DATA_ERROR");
            }
            return [decodingTable(lengths.subarray(0, literalCount)), decodingTable(lengths.subarray(literalCount))];
        }

        let last = 0;
        while (!last) {
            last = bits(1);
            const type = bits(2);
            if (type === 0) {
                bitBuffer = 0;  // to the byte boundary; whole bytes loaded ahead are not consumed
                position -= bitCount >> 3;
                bitCount = 0;
                if (position + 4 > input.length) {
                    throw zlibError("unexpected end of file", "Z_BUF_ERROR");
                }
                const length = input[position] | (input[position + 1] << 8);
                const inverse = input[position + 2] | (input[position + 3] << 8);
                if ((length ^ 0xffff) !== inverse) {
                    throw zlibError("invalid stored block lengths", "Z_DATA_ERROR");
                }
                position += 4;
                if (position + length > input.length) {
                    throw zlibError("unexpected end of file", "Z_BUF_ERROR");
                }
                reserve(length);
                out.set(input.subarray(position, position + length), size);
                size += length;
                position += length;
                continue;
            }
            if (type === 3) {
                throw zlibError("invalid block type", "Z_DATA_ERROR");
            }
            const [literals, distances] = type === 1 ? [FIXED_LITERALS, FIXED_DISTANCES] : dynamicTables();
            for (;;) {
                const symbol = decode(literals);
                if (symbol < 256) {
                    reserve(1);
                    out[size++] = symbol;
                    continue;
                }
                if (symbol === 256) {
                    break;
                }
                const index = symbol - 257;
                if (index >= 29) {
                    throw zlibError("invalid literal/length code", "Z_DATA_ERROR");
                }
                const length = LENGTH_BASE[index] + bits(LENGTH_EXTRA[index]);
                const distanceCode = decode(distances);
                if (distanceCode >= 30) {
                    throw zlibError("invalid distance code", "Z_DATA_ERROR");
                }
                const distance = DISTANCE_BASE[distanceCode] + bits(DISTANCE_EXTRA[distanceCode]);
                if (distance > size) {
                    throw zlibError("invalid distance too far back", "Z_DATA_ERROR");
                }
                reserve(length);
                for (let i = 0, from = size - distance; i < length; i++) {
                    out[size++] = out[from + i];
                }
            }
        }
        position -= bitCount >> 3;  // give back whole bytes loaded but not used
        return { output: out.subarray(0, size), end: position };
    }

    // ------------------------------------------------------------------ deflate

    // Fixed-Huffman codes, bit-reversed for LSB-first writing: [code, length] per literal/length symbol.
    const FIXED_CODES = (() => {
        const lengths = fixedLiteralLengths();
        const codes = new Int32Array(288);
        for (let symbol = 0; symbol < 288; symbol++) {
            const length = lengths[symbol];
            let c = symbol < 144 ? 0b00110000 + symbol
                : symbol < 256 ? 0b110010000 + symbol - 144
                    : symbol < 280 ? symbol - 256 : 0b11000000 + symbol - 280;
            let reversed = 0;
            for (let i = 0; i < length; i++, c >>= 1) {
                reversed = (reversed << 1) | (c & 1);
            }
            codes[symbol] = (reversed << 4) | length;
        }
        return codes;
    })();

    // Symbol and extra bits of each match length (3..258) and of distance codes (by log search).
    const LENGTH_SYMBOL = new Int32Array(259);
    for (let index = 0; index < 29; index++) {
        const top = index === 28 ? 258 : LENGTH_BASE[index] + (1 << LENGTH_EXTRA[index]) - 1;
        for (let length = LENGTH_BASE[index]; length <= top && length <= 258; length++) {
            LENGTH_SYMBOL[length] = index;
        }
    }
    LENGTH_SYMBOL[258] = 28;

    function distanceCodeOf(distance) {
        let code = 0;
        while (code < 29 && DISTANCE_BASE[code + 1] <= distance) {
            code++;
        }
        return code;
    }

    const WINDOW = 32768;
    const HASH_BITS = 15;
    const MAX_CHAIN = 64;
    const MIN_MATCH = 3;
    const MAX_MATCH = 258;

    function deflateRaw(input) {
        let out = new Uint8Array(Math.max(64, (input.length >> 1) + 64));
        let size = 0;
        let bitBuffer = 0;
        let bitCount = 0;

        function put(value, count) {  // count <= 16
            bitBuffer |= value << bitCount;
            bitCount += count;
            while (bitCount >= 8) {
                if (size === out.length) {
                    const bigger = new Uint8Array(out.length * 2);
                    bigger.set(out);
                    out = bigger;
                }
                out[size++] = bitBuffer & 0xff;
                bitBuffer >>>= 8;
                bitCount -= 8;
            }
        }

        function symbol(value) {
            const code = FIXED_CODES[value];
            put(code >>> 4, code & 15);
        }

        put(1, 1);  // the last block
        put(1, 2);  // fixed Huffman
        const head = new Int32Array(1 << HASH_BITS).fill(-1);
        const previous = new Int32Array(WINDOW);
        const hashAt = (i) => (((input[i] << 10) ^ (input[i + 1] << 5) ^ input[i + 2]) & ((1 << HASH_BITS) - 1));
        const insert = (i) => {
            const hash = hashAt(i);
            previous[i & (WINDOW - 1)] = head[hash];
            head[hash] = i;
        };
        const end = input.length;
        let i = 0;
        while (i < end) {
            let bestLength = 0;
            let bestDistance = 0;
            if (i + MIN_MATCH <= end) {
                const limit = Math.min(MAX_MATCH, end - i);
                let candidate = head[hashAt(i)];
                for (let chain = MAX_CHAIN; candidate >= 0 && i - candidate <= WINDOW && chain > 0; chain--) {
                    if (input[candidate + bestLength] === input[i + bestLength]) {
                        let length = 0;
                        while (length < limit && input[candidate + length] === input[i + length]) {
                            length++;
                        }
                        if (length > bestLength) {
                            bestLength = length;
                            bestDistance = i - candidate;
                            if (length === limit) {
                                break;
                            }
                        }
                    }
                    const older = previous[candidate & (WINDOW - 1)];
                    if (older >= candidate) {
                        break;  // the slot was reused by a newer position
                    }
                    candidate = older;
                }
            }
            if (bestLength >= MIN_MATCH) {
                const lengthIndex = LENGTH_SYMBOL[bestLength];
                symbol(257 + lengthIndex);
                put(bestLength - LENGTH_BASE[lengthIndex], LENGTH_EXTRA[lengthIndex]);
                const distanceCode = distanceCodeOf(bestDistance);
                let reversed = 0;
                for (let b = 0, c = distanceCode; b < 5; b++, c >>= 1) {
                    reversed = (reversed << 1) | (c & 1);
                }
                put(reversed, 5);
                put(bestDistance - DISTANCE_BASE[distanceCode], DISTANCE_EXTRA[distanceCode]);
                const stop = Math.min(i + bestLength, end - MIN_MATCH + 1);
                for (let j = i; j < stop; j++) {
                    insert(j);
                }
                i += bestLength;
            } else {
                symbol(input[i]);
                if (i + MIN_MATCH <= end) {
                    insert(i);
                }
                i++;
            }
        }
        symbol(256);
        put(0, 7);  // flush the last partial byte
        return size > input.length + 5 * Math.ceil(input.length / 65535) ? stored(input) : out.subarray(0, size);
    }

    // Stored blocks, for input that fixed Huffman codes would expand (random or compressed bytes).
    function stored(input) {
        const count = Math.max(1, Math.ceil(input.length / 65535));
        const out = new Uint8Array(input.length + 5 * count);
        for (let block = 0, at = 0; block < count; block++) {
            const data = input.subarray(block * 65535, block * 65535 + 65535);
            const length = data.length;
            out.set([block === count - 1 ? 1 : 0, length & 0xff, length >> 8, ~length & 0xff, (~length >> 8) & 0xff], at);
            out.set(data, at + 5);
            at += 5 + length;
        }
        return out;
    }

    // ------------------------------------------------------------------ wrappers

    function concat(parts) {
        let total = 0;
        for (const part of parts) {
            total += part.length;
        }
        const result = new Uint8Array(total);
        let offset = 0;
        for (const part of parts) {
            result.set(part, offset);
            offset += part.length;
        }
        return result;
    }

    function bigEndian32(value) {
        return [(value >>> 24) & 0xff, (value >>> 16) & 0xff, (value >>> 8) & 0xff, value & 0xff];
    }

    function littleEndian32(value) {
        return [value & 0xff, (value >>> 8) & 0xff, (value >>> 16) & 0xff, (value >>> 24) & 0xff];
    }

    function readLittleEndian32(bytes, at) {
        return (bytes[at] | (bytes[at + 1] << 8) | (bytes[at + 2] << 16) | (bytes[at + 3] << 24)) >>> 0;
    }

    function zlibWrap(input) {
        // CMF 0x78 (deflate, 32K window), FLG 0x01 (fastest compression level, FCHECK) is a multiple of 31.
        const body = deflateRaw(input);
        return concat([[0x78, 0x01], body, bigEndian32(adler32(input))]);
    }

    function zlibUnwrap(input) {
        if (input.length < 2) {
            throw zlibError("unexpected end of file", "Z_BUF_ERROR");
        }
        const cmf = input[0];
        const flg = input[1];
        if ((cmf & 15) !== 8 || (cmf >> 4) > 7 || ((cmf << 8) | flg) % 31 !== 0) {
            throw zlibError("incorrect header check", "Z_DATA_ERROR");
        }
        if (flg & 0x20) {
            throw zlibError("need dictionary", "Z_NEED_DICT");
        }
        const { output, end } = inflateRaw(input, 2);
        if (end + 4 > input.length) {
            throw zlibError("unexpected end of file", "Z_BUF_ERROR");
        }
        const stored = ((input[end] << 24) | (input[end + 1] << 16) | (input[end + 2] << 8) | input[end + 3]) >>> 0;
        if (stored !== adler32(output)) {
            throw zlibError("incorrect data check", "Z_DATA_ERROR");
        }
        return output;
    }

    function gzipWrap(input) {
        // ID1 ID2, CM = deflate, no flags, no mtime, XFL = 4 (fastest), OS = 255 (unknown)
        const header = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 255];
        return concat([header, deflateRaw(input), littleEndian32(crc32(input)), littleEndian32(input.length)]);
    }

    function gzipMember(input, start) {
        let at = start;
        if (input.length < at + 10) {
            throw zlibError("unexpected end of file", "Z_BUF_ERROR");
        }
        if (input[at] !== 0x1f || input[at + 1] !== 0x8b) {
            throw zlibError("incorrect header check", "Z_DATA_ERROR");
        }
        if (input[at + 2] !== 8) {
            throw zlibError("unknown compression method", "Z_DATA_ERROR");
        }
        const flags = input[at + 3];
        at += 10;
        if (flags & 4) {  // FEXTRA
            at += 2 + (input[at] | (input[at + 1] << 8));
        }
        for (const flag of [8, 16]) {  // FNAME, FCOMMENT: zero-terminated
            if (flags & flag) {
                while (at < input.length && input[at] !== 0) {
                    at++;
                }
                at++;
            }
        }
        if (flags & 2) {  // FHCRC
            at += 2;
        }
        if (at > input.length) {
            throw zlibError("unexpected end of file", "Z_BUF_ERROR");
        }
        const { output, end } = inflateRaw(input, at);
        if (end + 8 > input.length) {
            throw zlibError("unexpected end of file", "Z_BUF_ERROR");
        }
        if (readLittleEndian32(input, end) !== crc32(output)) {
            throw zlibError("incorrect data check", "Z_DATA_ERROR");
        }
        if (readLittleEndian32(input, end + 4) !== output.length >>> 0) {
            throw zlibError("incorrect length check", "Z_DATA_ERROR");
        }
        return { output, end: end + 8 };
    }

    function gzipUnwrap(input) {
        const parts = [];
        let at = 0;
        do {
            const { output, end } = gzipMember(input, at);
            parts.push(output);
            at = end;
        } while (at < input.length && input[at] === 0x1f);  // concatenated members; trailing junk ignored
        return parts.length === 1 ? parts[0] : concat(parts);
    }

    // Brotli (RFC 7932) made of uncompressed meta-blocks: a valid stream that every brotli decoder
    // reads, the size of the input plus 3 bytes per 64 KiB (no compression is attempted).
    const BROTLI_BLOCK = 65536;

    function brotliStored(input) {
        const blocks = Math.ceil(input.length / BROTLI_BLOCK);
        const output = new Uint8Array(input.length + 3 * blocks + 2);
        let at = 0;
        let bits = 0;  // WBITS: one 0 bit (a 64 KiB window)
        let used = 1;
        const flush = () => {  // pads to a byte boundary
            while (used > 0) {
                output[at++] = bits & 0xff;
                bits >>>= 8;
                used = Math.max(0, used - 8);
            }
            bits = 0;
        };
        for (let start = 0; start < input.length; start += BROTLI_BLOCK) {
            const length = Math.min(BROTLI_BLOCK, input.length - start);
            // ISLAST 0, MNIBBLES 4 (code 00), MLEN - 1 in 16 bits, ISUNCOMPRESSED 1
            bits |= (((length - 1) << 3) | (1 << 19)) << used;
            used += 20;
            flush();
            output.set(input.subarray(start, start + length), at);
            at += length;
        }
        bits |= 3 << used;  // ISLAST 1, ISLASTEMPTY 1
        used += 2;
        flush();
        return output.slice(0, at);
    }

    function oneShot(transform) {
        return (buffer) => wrapBytes(transform(inputBytes(buffer)));
    }

    return Object.freeze({
        gzipSync: oneShot(gzipWrap),
        gunzipSync: oneShot(gzipUnwrap),
        deflateSync: oneShot(zlibWrap),
        inflateSync: oneShot(zlibUnwrap),
        deflateRawSync: oneShot(deflateRaw),
        inflateRawSync: oneShot((input) => inflateRaw(input, 0).output),
        unzipSync: oneShot((input) => (input[0] === 0x1f && input[1] === 0x8b ? gzipUnwrap(input) : zlibUnwrap(input))),
        brotliCompressSync: oneShot(brotliStored),
        crc32: (data, value = 0) => crc32(inputBytes(data), value),
    });
})
