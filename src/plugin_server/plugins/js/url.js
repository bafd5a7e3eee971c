// URL and URLSearchParams for plugins (the globals, and `require('url')`), written for this server.
//
// This file is one JavaScript expression, a function that prelude.js calls once per isolate:
//
//     (url.js)(utf8Encode, utf8Decode)  ->  { URL, URLSearchParams }
//
// It follows the WHATWG URL Standard for the common cases: special schemes (http, https, ws, wss,
// ftp, file) with credentials, host, port (default ports dropped), path ("." and ".." segments
// resolved), query and fragment, each percent-encoded with the Standard's encode sets; IPv4 hosts
// in their numeric forms and IPv6 hosts, compressed; other schemes with an opaque host or an opaque
// path (mailto:, data:); relative references resolved against a base. Not covered: IDNA (a host
// outside ASCII is only lowercased, not converted to punycode), Windows drive letters in file URLs,
// and the Standard's exact behaviour of setters on invalid input (here an invalid value is ignored).
(function (utf8Encode, utf8Decode) {
    "use strict";

    const NativeTypeError = TypeError;
    const NativeString = String;
    const DEFAULT_PORTS = { "http:": "80", "https:": "443", "ws:": "80", "wss:": "443", "ftp:": "21", "file:": "" };

    function invalid() {
        return new NativeTypeError("Invalid URL");
    }

    function isSpecial(scheme) {
        return Object.hasOwn(DEFAULT_PORTS, scheme);
    }

    // ------------------------------------------------------------------ percent-encoding

    const C0 = (c) => c < 0x20 || c > 0x7e;
    const FRAGMENT = (c) => C0(c) || c === 0x20 || c === 0x22 || c === 0x3c || c === 0x3e || c === 0x60;
    const QUERY = (c) => C0(c) || c === 0x20 || c === 0x22 || c === 0x23 || c === 0x3c || c === 0x3e;
    const SPECIAL_QUERY = (c) => QUERY(c) || c === 0x27;
    const PATH = (c) => QUERY(c) || c === 0x3f || c === 0x60 || c === 0x7b || c === 0x7d;
    const USERINFO = (c) => PATH(c) || c === 0x2f || c === 0x3a || c === 0x3b || c === 0x3d || c === 0x40
        || (c >= 0x5b && c <= 0x5e) || c === 0x7c;
    const HEX = "0123456789ABCDEF";

    function encode(text, inSet) {
        let out = "";
        let plain = 0;
        for (let i = 0; i < text.length; i++) {
            if (!inSet(text.charCodeAt(i))) {
                continue;
            }
            out += text.slice(plain, i);
            let end = i + 1;
            while (end < text.length && inSet(text.charCodeAt(end))) {
                end++;
            }
            for (const byte of utf8Encode(text.slice(i, end))) {
                out += "%" + HEX[byte >> 4] + HEX[byte & 15];
            }
            plain = end;
            i = end - 1;
        }
        return out + text.slice(plain);
    }

    function hexValue(c) {
        return c >= 0x30 && c <= 0x39 ? c - 0x30 : (c | 0x20) >= 0x61 && (c | 0x20) <= 0x66 ? (c | 0x20) - 0x57 : -1;
    }

    // Percent-decoding then UTF-8 decoding, lenient: a "%" not followed by two hex digits stays.
    function decode(text) {
        const bytes = utf8Encode(text);
        const out = new Uint8Array(bytes.length);
        let at = 0;
        for (let i = 0; i < bytes.length; i++) {
            const high = bytes[i] === 0x25 && i + 2 < bytes.length ? hexValue(bytes[i + 1]) : -1;
            const low = high >= 0 ? hexValue(bytes[i + 2]) : -1;
            if (low >= 0) {
                out[at++] = high * 16 + low;
                i += 2;
            } else {
                out[at++] = bytes[i];
            }
        }
        return utf8Decode(out.subarray(0, at), false);
    }

    // ------------------------------------------------------------------ hosts

    function parseIPv4Number(part) {
        if (/^0[xX][0-9a-fA-F]*$/.test(part)) {
            return part.length === 2 ? 0 : parseInt(part.slice(2), 16);
        }
        if (/^0[0-7]+$/.test(part)) {
            return parseInt(part.slice(1), 8);
        }
        return /^(0|[1-9][0-9]*)$/.test(part) ? parseInt(part, 10) : NaN;
    }

    // The host as an IPv4 address, or undefined when its last part is not a number (a domain).
    function parseIPv4(host) {
        const parts = host.split(".");
        if (parts.length > 1 && parts[parts.length - 1] === "") {
            parts.pop();
        }
        const last = parts[parts.length - 1];
        if (!/^([0-9]+|0[xX][0-9a-fA-F]*)$/.test(last)) {
            return undefined;
        }
        const numbers = parts.map(parseIPv4Number);
        if (parts.length > 4 || numbers.some((n) => Number.isNaN(n))
            || numbers.slice(0, -1).some((n) => n > 255) || numbers[numbers.length - 1] >= 256 ** (5 - numbers.length)) {
            throw invalid();
        }
        let address = numbers[numbers.length - 1];
        for (let i = 0; i < numbers.length - 1; i++) {
            address += numbers[i] * 256 ** (3 - i);
        }
        return [address >>> 24, (address >>> 16) & 255, (address >>> 8) & 255, address & 255].join(".");
    }

    function parseIPv6(text) {
        const halves = text.split("::");
        if (halves.length > 2) {
            throw invalid();
        }
        const groups = (half) => (half === "" ? [] : half.split(":"));
        const pieces = (list, isEnd) => list.flatMap((group, i) => {
            if (isEnd && i === list.length - 1 && group.includes(".")) {
                const v4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(group);
                if (!v4 || v4.slice(1).some((n) => +n > 255 || (n.length > 1 && n[0] === "0"))) {
                    throw invalid();
                }
                return [+v4[1] * 256 + +v4[2], +v4[3] * 256 + +v4[4]];
            }
            if (!/^[0-9a-fA-F]{1,4}$/.test(group)) {
                throw invalid();
            }
            return [parseInt(group, 16)];
        });
        const head = pieces(groups(halves[0]), halves.length === 1);
        const tail = halves.length === 2 ? pieces(groups(halves[1]), true) : [];
        const missing = 8 - head.length - tail.length;
        if (halves.length === 1 ? missing !== 0 : missing < 1) {
            throw invalid();
        }
        const address = [...head, ...new Array(halves.length === 2 ? missing : 0).fill(0), ...tail];
        // Serialize: the first longest run of two or more zero pieces becomes "::".
        let runStart = -1;
        let runLength = 1;
        for (let i = 0; i < 8;) {
            let end = i;
            while (end < 8 && address[end] === 0) {
                end++;
            }
            if (end - i > runLength) {
                runStart = i;
                runLength = end - i;
            }
            i = end > i ? end : i + 1;
        }
        const hex = (list) => list.map((n) => n.toString(16)).join(":");
        return runStart < 0 ? `[${hex(address)}]`
            : `[${hex(address.slice(0, runStart))}::${hex(address.slice(runStart + runLength))}]`;
    }

    const FORBIDDEN_HOST = /[\0\t\n\r #/:<>?@[\\\]^|]/;
    const FORBIDDEN_DOMAIN = /[\0-\x1f #%/:<>?@[\\\]^|\x7f]/;

    function parseHost(text, special) {
        if (text.startsWith("[")) {
            if (!text.endsWith("]")) {
                throw invalid();
            }
            return parseIPv6(text.slice(1, -1));
        }
        if (!special) {
            if (FORBIDDEN_HOST.test(text)) {
                throw invalid();
            }
            return encode(text, C0);
        }
        const domain = decode(text).toLowerCase();
        if (domain === "" || FORBIDDEN_DOMAIN.test(domain)) {
            throw invalid();
        }
        const ipv4 = parseIPv4(domain);
        return ipv4 === undefined ? domain : ipv4;
    }

    // ------------------------------------------------------------------ parsing

    function isDot(segment) {
        return segment === "." || segment.toLowerCase() === "%2e";
    }

    function isDoubleDot(segment) {
        return /^(\.|%2e)(\.|%2e)$/i.test(segment);
    }

    // Appends the segments of `text` (a path without its leading slash) to `path`.
    function addPath(path, text, special) {
        const parts = text.split(special ? /[/\\]/ : "/");
        parts.forEach((segment, i) => {
            const last = i === parts.length - 1;
            if (isDoubleDot(segment)) {
                path.pop();
                if (last) {
                    path.push("");
                }
            } else if (isDot(segment)) {
                if (last) {
                    path.push("");
                }
            } else {
                path.push(encode(segment, PATH));
            }
        });
        return path;
    }

    // A record: {scheme, username, password, host (null when absent), port, path (a list of
    // segments, or a string for an opaque path), query (null or text), fragment (null or text)}.
    function splitTail(record, text) {
        const hash = text.indexOf("#");
        if (hash >= 0) {
            record.fragment = encode(text.slice(hash + 1), FRAGMENT);
            text = text.slice(0, hash);
        }
        const question = text.indexOf("?");
        if (question >= 0) {
            record.query = encode(text.slice(question + 1), isSpecial(record.scheme) ? SPECIAL_QUERY : QUERY);
            text = text.slice(0, question);
        }
        return text;
    }

    function parseAuthority(record, text) {
        const special = isSpecial(record.scheme);
        const end = text.search(special ? /[/\\?#]/ : /[/?#]/);
        const authority = end < 0 ? text : text.slice(0, end);
        const at = authority.lastIndexOf("@");
        if (at >= 0) {
            const userinfo = authority.slice(0, at);
            const colon = userinfo.indexOf(":");
            record.username = encode(colon < 0 ? userinfo : userinfo.slice(0, colon), USERINFO);
            record.password = colon < 0 ? "" : encode(userinfo.slice(colon + 1), USERINFO);
        }
        const hostPort = authority.slice(at + 1);
        const portMatch = /:([^\]:]*)$/.exec(hostPort);
        const hostText = portMatch ? hostPort.slice(0, portMatch.index) : hostPort;
        if (portMatch && portMatch[1] !== "") {
            if (!/^[0-9]+$/.test(portMatch[1]) || +portMatch[1] > 65535) {
                throw invalid();
            }
            const port = NativeString(+portMatch[1]);
            record.port = port === DEFAULT_PORTS[record.scheme] ? "" : port;
        }
        if (hostText === "") {
            if (special && record.scheme !== "file:") {
                throw invalid();
            }
            if (at >= 0 || record.port !== "") {
                throw invalid();
            }
            record.host = "";
        } else {
            record.host = record.scheme === "file:" && hostText.toLowerCase() === "localhost" ? "" : parseHost(hostText, special);
        }
        return end < 0 ? "" : text.slice(end);
    }

    function emptyRecord(scheme) {
        return { scheme, username: "", password: "", host: null, port: "", path: [], query: null, fragment: null };
    }

    function parse(input, base) {
        const text = NativeString(input).replace(/^[\0-\x20]+|[\0-\x20]+$/g, "").replace(/[\t\n\r]/g, "");
        const schemeMatch = /^[a-zA-Z][a-zA-Z0-9+.-]*:/.exec(text);
        let rest = schemeMatch ? text.slice(schemeMatch[0].length) : text;
        let scheme = schemeMatch ? schemeMatch[0].toLowerCase() : undefined;
        if (scheme !== undefined && isSpecial(scheme) && base && base.scheme === scheme && !/^[/\\]/.test(rest)) {
            scheme = undefined;  // "http:path" relative to an http base
        }
        if (scheme !== undefined) {
            const record = emptyRecord(scheme);
            const special = isSpecial(scheme);
            if (special || rest.startsWith("//")) {
                if (special && scheme !== "file:") {
                    rest = rest.replace(/^[/\\]*/, "");
                } else {
                    rest = rest.startsWith("//") || (special && /^[/\\]{2}/.test(rest)) ? rest.slice(2) : rest;
                    if (scheme === "file:" && !/^[/\\]/.test(text.slice(schemeMatch[0].length))) {
                        rest = "/" + rest;  // "file:x" has an empty host
                        record.host = "";
                    }
                }
                if (record.host === null) {
                    rest = parseAuthority(record, rest);
                }
                rest = splitTail(record, rest);
                record.path = addPath([], rest.replace(/^[/\\]/, ""), special);
                if (!special && rest === "") {
                    record.path = [];
                }
                return record;
            }
            rest = splitTail(record, rest);
            if (rest.startsWith("/")) {
                record.path = addPath([], rest.slice(1), false);
            } else {
                record.path = encode(rest, C0);  // opaque: mailto:someone, data:...
            }
            return record;
        }
        if (!base) {
            throw invalid();
        }
        const record = { ...base, path: typeof base.path === "string" ? base.path : [...base.path], fragment: null };
        const special = isSpecial(record.scheme);
        if (typeof base.path === "string") {
            if (!rest.startsWith("#")) {
                throw invalid();
            }
            splitTail(record, rest);
            return record;
        }
        const slash = special ? /^[/\\]/ : /^\//;
        if (slash.test(rest) && slash.test(rest.slice(1))) {
            Object.assign(record, emptyRecord(record.scheme));
            return parse(record.scheme + rest);
        }
        if (rest.startsWith("#")) {
            splitTail(record, rest);
            return record;
        }
        record.query = null;
        rest = splitTail(record, rest);
        if (rest === "") {
            if (record.query === null) {
                record.query = base.query;
            }
            return record;
        }
        if (slash.test(rest)) {
            record.path = addPath([], rest.slice(1), special);
        } else {
            record.path.pop();
            record.path = addPath(record.path, rest, special);
        }
        return record;
    }

    // ------------------------------------------------------------------ serializing

    function hostOf(record) {
        return record.host === null ? "" : record.host + (record.port === "" ? "" : ":" + record.port);
    }

    function pathOf(record) {
        return typeof record.path === "string" ? record.path : record.path.length ? "/" + record.path.join("/") : "";
    }

    function serialize(record, withFragment) {
        let out = record.scheme;
        if (record.host !== null) {
            out += "//";
            if (record.username !== "" || record.password !== "") {
                out += record.username + (record.password === "" ? "" : ":" + record.password) + "@";
            }
            out += hostOf(record);
        }
        out += pathOf(record);
        if (record.query !== null) {
            out += "?" + record.query;
        }
        if (withFragment && record.fragment !== null) {
            out += "#" + record.fragment;
        }
        return out;
    }

    // ------------------------------------------------------------------ URLSearchParams

    // application/x-www-form-urlencoded
    function formEncode(text) {
        let out = "";
        for (const byte of utf8Encode(text)) {
            if ((byte >= 0x30 && byte <= 0x39) || ((byte | 0x20) >= 0x61 && (byte | 0x20) <= 0x7a)
                || byte === 0x2a || byte === 0x2d || byte === 0x2e || byte === 0x5f) {
                out += String.fromCharCode(byte);
            } else {
                out += byte === 0x20 ? "+" : "%" + HEX[byte >> 4] + HEX[byte & 15];
            }
        }
        return out;
    }

    function formDecode(text) {
        const pairs = [];
        for (const piece of text.split("&")) {
            if (piece === "") {
                continue;
            }
            const equals = piece.indexOf("=");
            const name = equals < 0 ? piece : piece.slice(0, equals);
            const value = equals < 0 ? "" : piece.slice(equals + 1);
            pairs.push([decode(name.replace(/\+/g, " ")), decode(value.replace(/\+/g, " "))]);
        }
        return pairs;
    }

    function toUSVString(value) {
        return NativeString(value).toWellFormed();
    }

    let setUrlQuery;  // URL's, defined below

    class URLSearchParams {
        #list = [];
        #url = null;

        constructor(init) {
            if (init === undefined || init === null) {
                return;
            }
            if (typeof init === "object" || typeof init === "function") {
                if (typeof init[Symbol.iterator] === "function") {
                    for (const pair of init) {
                        const items = [...pair];
                        if (items.length !== 2) {
                            throw new NativeTypeError("Each query pair must be an iterable [name, value] tuple");
                        }
                        this.#list.push([toUSVString(items[0]), toUSVString(items[1])]);
                    }
                } else {
                    for (const name of Object.keys(init)) {
                        this.#list.push([toUSVString(name), toUSVString(init[name])]);
                    }
                }
                return;
            }
            const text = toUSVString(init);
            this.#list = formDecode(text.startsWith("?") ? text.slice(1) : text);
        }

        static link(params, url, query) {
            params.#url = url;
            params.#list = query === null ? [] : formDecode(query);
        }

        static reset(params, query) {
            params.#list = query === null ? [] : formDecode(query);
        }

        #update() {
            if (this.#url !== null) {
                const text = this.toString();
                setUrlQuery(this.#url, text === "" ? null : text);
            }
        }

        get size() {
            return this.#list.length;
        }

        append(name, value) {
            this.#list.push([toUSVString(name), toUSVString(value)]);
            this.#update();
        }

        delete(name, value) {
            const key = toUSVString(name);
            const only = value === undefined ? undefined : toUSVString(value);
            this.#list = this.#list.filter(([n, v]) => n !== key || (only !== undefined && v !== only));
            this.#update();
        }

        get(name) {
            const key = toUSVString(name);
            const found = this.#list.find(([n]) => n === key);
            return found === undefined ? null : found[1];
        }

        getAll(name) {
            const key = toUSVString(name);
            return this.#list.filter(([n]) => n === key).map(([, v]) => v);
        }

        has(name, value) {
            const key = toUSVString(name);
            const only = value === undefined ? undefined : toUSVString(value);
            return this.#list.some(([n, v]) => n === key && (only === undefined || v === only));
        }

        set(name, value) {
            const key = toUSVString(name);
            const index = this.#list.findIndex(([n]) => n === key);
            if (index < 0) {
                this.#list.push([key, toUSVString(value)]);
            } else {
                this.#list[index][1] = toUSVString(value);
                this.#list = this.#list.filter(([n], i) => n !== key || i <= index);
            }
            this.#update();
        }

        sort() {
            // Stable, by UTF-16 code units, as the Standard says.
            this.#list = this.#list
                .map((pair, i) => [pair, i])
                .sort(([a, i], [b, j]) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : i - j))
                .map(([pair]) => pair);
            this.#update();
        }

        forEach(callback, thisArg) {
            for (const [name, value] of this.#list.slice()) {
                callback.call(thisArg, value, name, this);
            }
        }

        *entries() {
            for (let i = 0; i < this.#list.length; i++) {
                yield [this.#list[i][0], this.#list[i][1]];
            }
        }

        *keys() {
            for (const [name] of this.entries()) {
                yield name;
            }
        }

        *values() {
            for (const [, value] of this.entries()) {
                yield value;
            }
        }

        [Symbol.iterator]() {
            return this.entries();
        }

        toString() {
            return this.#list.map(([n, v]) => formEncode(n) + "=" + formEncode(v)).join("&");
        }

        get [Symbol.toStringTag]() {
            return "URLSearchParams";
        }
    }

    const link = URLSearchParams.link;
    const reset = URLSearchParams.reset;
    delete URLSearchParams.link;
    delete URLSearchParams.reset;

    // ------------------------------------------------------------------ URL

    class URL {
        #record;
        #params = new URLSearchParams();

        constructor(url, base) {
            const baseRecord = base === undefined ? undefined : parse(base instanceof URL ? base.href : base);
            this.#record = parse(url instanceof URL ? url.href : url, baseRecord);
            link(this.#params, this, this.#record.query);
        }

        static canParse(url, base) {
            try {
                new URL(url, base);
                return true;
            } catch (error) {
                return false;
            }
        }

        static setQuery(url, query) {
            url.#record.query = query;
        }

        // Setters rebuild the URL from its parts and parse it again; an invalid result is ignored.
        #replace(change) {
            const record = { ...this.#record, path: this.#record.path };
            change(record);
            try {
                this.#record = parse(serialize(record, true));
            } catch (error) {
                return;
            }
            reset(this.#params, this.#record.query);
        }

        get href() {
            return serialize(this.#record, true);
        }

        set href(value) {
            this.#record = parse(value);
            reset(this.#params, this.#record.query);
        }

        get origin() {
            const r = this.#record;
            return isSpecial(r.scheme) && r.scheme !== "file:" ? r.scheme + "//" + hostOf(r) : "null";
        }

        get protocol() {
            return this.#record.scheme;
        }

        set protocol(value) {
            const scheme = NativeString(value).replace(/:.*$/, "").toLowerCase() + ":";
            if (/^[a-z][a-z0-9+.-]*:$/.test(scheme) && isSpecial(scheme) === isSpecial(this.#record.scheme)) {
                this.#replace((r) => {
                    r.scheme = scheme;
                    r.port = r.port === DEFAULT_PORTS[scheme] ? "" : r.port;
                });
            }
        }

        get username() {
            return this.#record.username;
        }

        set username(value) {
            if (this.#record.host) {
                this.#replace((r) => { r.username = encode(NativeString(value), USERINFO); });
            }
        }

        get password() {
            return this.#record.password;
        }

        set password(value) {
            if (this.#record.host) {
                this.#replace((r) => { r.password = encode(NativeString(value), USERINFO); });
            }
        }

        get host() {
            return hostOf(this.#record);
        }

        set host(value) {
            const text = NativeString(value);
            const match = /^(\[[^\]]*\]|[^:/?#\\]*)(?::([0-9]*))?/.exec(text);
            if (typeof this.#record.path !== "string" && match[1] !== "") {
                this.#replace((r) => {
                    r.host = match[1];
                    r.port = match[2] === undefined || match[2] === "" ? r.port : match[2];
                });
            }
        }

        get hostname() {
            return this.#record.host === null ? "" : this.#record.host;
        }

        set hostname(value) {
            const host = /^(\[[^\]]*\]|[^:/?#\\]*)/.exec(NativeString(value))[1];
            if (typeof this.#record.path !== "string" && host !== "") {
                this.#replace((r) => { r.host = host; });
            }
        }

        get port() {
            return this.#record.port;
        }

        set port(value) {
            const digits = /^[0-9]*/.exec(NativeString(value))[0];
            if (this.#record.host && this.#record.scheme !== "file:" && (digits !== "" || NativeString(value) === "")) {
                this.#replace((r) => { r.port = digits; });
            }
        }

        get pathname() {
            return pathOf(this.#record);
        }

        set pathname(value) {
            if (typeof this.#record.path !== "string") {
                const text = NativeString(value);
                const special = isSpecial(this.#record.scheme);
                this.#replace((r) => {
                    r.path = addPath([], (special ? /^[/\\]/ : /^\//).test(text) ? text.slice(1) : text, special)
                        .map((segment) => segment.replace(/[?#]/g, (c) => (c === "?" ? "%3F" : "%23")));
                });
            }
        }

        get search() {
            const query = this.#record.query;
            return query === null || query === "" ? "" : "?" + query;
        }

        set search(value) {
            const text = NativeString(value).replace(/^\?/, "");
            this.#record.query = text === "" ? null
                : encode(text, isSpecial(this.#record.scheme) ? SPECIAL_QUERY : QUERY);
            reset(this.#params, this.#record.query);
        }

        get searchParams() {
            return this.#params;
        }

        get hash() {
            const fragment = this.#record.fragment;
            return fragment === null || fragment === "" ? "" : "#" + fragment;
        }

        set hash(value) {
            const text = NativeString(value).replace(/^#/, "");
            this.#record.fragment = text === "" ? null : encode(text, FRAGMENT);
        }

        toString() {
            return this.href;
        }

        toJSON() {
            return this.href;
        }

        get [Symbol.toStringTag]() {
            return "URL";
        }
    }

    setUrlQuery = URL.setQuery;
    delete URL.setQuery;

    return Object.freeze({ URL, URLSearchParams });
})
