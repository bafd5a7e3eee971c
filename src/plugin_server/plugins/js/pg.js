// `require('pg')` for plugins, written for this server: node-postgres' Client and Pool, whose
// connections and queries run on the host (hosted/pg.py, psycopg).
//
// This file is one JavaScript expression, a function that prelude.js calls once per isolate:
//
//     (pg.js)(kit, modules)  ->  {pg: the module}
//
//   kit.request(op, args)     a host operation: pg.connect(options) -> handle, pg.query(handle,
//                             text, values) -> [{command, rowCount, oid, fields, rows}], pg.end(handle)
//   modules.stream            for EventEmitter
//
// As in node-postgres, parameters are sent as text (Date as ISO 8601, arrays as array literals,
// objects as JSON, Buffers as bytes) for the server to cast, and result values are parsed by their
// type: booleans, int2/int4/oid and float4/float8 numbers, json/jsonb parsed, date/timestamp/
// timestamptz as Date, bytea as Buffer, arrays of those as arrays; int8 and numeric stay strings.
(function (kit, modules) {
    "use strict";

    const { request, Buffer } = kit;
    const { EventEmitter } = modules.stream;

    // ------------------------------------------------------------------ values to text

    function escapeArrayElement(text) {
        return "\"" + text.replace(/\\/g, "\\\\").replace(/"/g, "\\\"") + "\"";
    }

    function arrayLiteral(values) {
        const parts = values.map((value) => {
            if (value === null || value === undefined) return "NULL";
            if (Array.isArray(value)) return arrayLiteral(value);
            if (value instanceof Uint8Array) return "\"\\\\x" + Buffer.from(value).toString("hex") + "\"";
            return escapeArrayElement(textOf(value));
        });
        return "{" + parts.join(",") + "}";
    }

    function textOf(value) {
        if (value instanceof Date) return value.toISOString();
        if (Array.isArray(value)) return arrayLiteral(value);
        if (typeof value === "object" && typeof value.toPostgres === "function") return textOf(value.toPostgres(textOf));
        if (typeof value === "object") return JSON.stringify(value);
        return String(value);
    }

    function parameter(value) {
        if (value === null || value === undefined) return null;
        if (value instanceof Uint8Array) return ["b", kit.base64Encode(value)];
        return ["t", textOf(value)];
    }

    // ------------------------------------------------------------------ text to values

    // An array literal ({1,2,NULL}, {"a b","c\"d"}, {{1,2},{3,4}}) as nested arrays of strings/null.
    function parseArray(text, parseElement) {
        let at = 0;
        function parseLevel() {
            const items = [];
            at++;  // {
            while (at < text.length && text[at] !== "}") {
                if (text[at] === "{") {
                    items.push(parseLevel());
                } else if (text[at] === "\"") {
                    let value = "";
                    at++;
                    while (text[at] !== "\"") {
                        if (text[at] === "\\") at++;
                        value += text[at++];
                    }
                    at++;
                    items.push(parseElement(value));
                } else {
                    let end = at;
                    while (text[end] !== "," && text[end] !== "}") end++;
                    const raw = text.slice(at, end);
                    items.push(raw === "NULL" ? null : parseElement(raw));
                    at = end;
                }
                if (text[at] === ",") at++;
            }
            at++;  // }
            return items;
        }
        const start = text.indexOf("{");  // skips dimensions such as [0:1]=
        at = start < 0 ? 0 : start;
        return parseLevel();
    }

    function parseBytea(text) {
        if (text.startsWith("\\x")) return Buffer.from(text.slice(2), "hex");
        const bytes = [];  // the escape format
        for (let i = 0; i < text.length; i++) {
            if (text[i] === "\\" && text[i + 1] === "\\") { bytes.push(92); i++; }
            else if (text[i] === "\\") { bytes.push(parseInt(text.substr(i + 1, 3), 8)); i += 3; }
            else bytes.push(text.charCodeAt(i));
        }
        return Buffer.from(bytes);
    }

    function parseTimestamp(text, withZone) {
        if (text === "infinity") return Infinity;
        if (text === "-infinity") return -Infinity;
        const match = /^(\d{4,})-(\d\d)-(\d\d)(?:[ T](\d\d):(\d\d):(\d\d)(\.\d+)?)?(Z|[+-]\d\d(?::?\d\d)?(?::?\d\d)?)?( BC)?$/.exec(text);
        if (match === null) return null;
        let year = parseInt(match[1], 10);
        if (match[9]) year = 1 - year;
        const ms = match[7] ? Math.round(parseFloat(match[7]) * 1000) : 0;
        const parts = [year, parseInt(match[2], 10) - 1, parseInt(match[3], 10),
            parseInt(match[4] || "0", 10), parseInt(match[5] || "0", 10), parseInt(match[6] || "0", 10), ms];
        if (!withZone || !match[8]) {
            const local = new Date(...parts);  // node-postgres reads these in local time
            if (year < 100) local.setFullYear(year);
            return local;
        }
        let offset = 0;
        if (match[8] !== "Z") {
            const sign = match[8][0] === "-" ? -1 : 1;
            const digits = match[8].slice(1).replace(/:/g, "");
            offset = sign * (parseInt(digits.slice(0, 2), 10) * 3600 + parseInt(digits.slice(2, 4) || "0", 10) * 60
                + parseInt(digits.slice(4, 6) || "0", 10));
        }
        const utc = new Date(Date.UTC(...parts) - offset * 1000);
        if (year < 100) utc.setUTCFullYear(year);
        return utc;
    }

    const parseBool = (text) => text === "t" || text === "true" || text === "y" || text === "yes" || text === "on" || text === "1";
    const parseInteger = (text) => parseInt(text, 10);
    const parseJson = (text) => JSON.parse(text);

    const PARSERS = new Map([
        [16, parseBool], [17, parseBytea], [21, parseInteger], [23, parseInteger], [26, parseInteger],
        [700, parseFloat], [701, parseFloat], [114, parseJson], [3802, parseJson],
        [1082, (text) => parseTimestamp(text, false)], [1114, (text) => parseTimestamp(text, false)],
        [1184, (text) => parseTimestamp(text, true)],
    ]);
    const ARRAYS = new Map([
        [1000, 16], [1001, 17], [1005, 21], [1007, 23], [1028, 26], [1021, 700], [1022, 701], [199, 114],
        [3807, 3802], [1182, 1082], [1115, 1114], [1185, 1184], [1016, 0], [1231, 0], [1009, 0], [1015, 0],
        [1014, 0], [2951, 0], [1041, 0],
    ]);
    const custom = new Map();

    function parserFor(oid) {
        if (custom.has(oid)) return custom.get(oid);
        if (PARSERS.has(oid)) return PARSERS.get(oid);
        if (ARRAYS.has(oid)) {
            const element = ARRAYS.get(oid);
            const parseElement = element === 0 ? (text) => text : parserFor(element);
            return (text) => parseArray(text, parseElement);
        }
        return (text) => text;
    }

    const types = Object.freeze({
        setTypeParser(oid, format, parser) {
            custom.set(Number(oid), typeof format === "function" ? format : parser);
        },
        getTypeParser: (oid) => parserFor(Number(oid)),
        builtins: Object.freeze({ BOOL: 16, BYTEA: 17, INT8: 20, INT2: 21, INT4: 23, TEXT: 25, OID: 26, JSON: 114,
            FLOAT4: 700, FLOAT8: 701, VARCHAR: 1043, DATE: 1082, TIMESTAMP: 1114, TIMESTAMPTZ: 1184, NUMERIC: 1700,
            UUID: 2950, JSONB: 3802 }),
    });

    function resultOf(raw, rowMode) {
        const parsers = raw.fields.map((field) => parserFor(field.dataTypeID));
        const rows = raw.rows.map((values) => {
            const parsed = values.map((value, i) => (value === null ? null : parsers[i](value)));
            if (rowMode === "array") return parsed;
            const row = {};
            raw.fields.forEach((field, i) => { row[field.name] = parsed[i]; });
            return row;
        });
        return { command: raw.command, rowCount: raw.rowCount, oid: raw.oid, rows, fields: raw.fields, rowAsArray: rowMode === "array" };
    }

    // ------------------------------------------------------------------ Client

    function withCallback(promise, callback) {
        if (typeof callback !== "function") return promise;
        promise.then((value) => callback(null, value), (error) => callback(error));
        return undefined;
    }

    function configOf(config) {
        if (typeof config === "string") return { connectionString: config };
        return config === undefined || config === null ? {} : config;
    }

    function connectionOptions(config) {
        const options = {};
        for (const key of ["connectionString", "host", "port", "user", "password", "database", "application_name", "connectionTimeoutMillis"]) {
            if (config[key] !== undefined && config[key] !== null) options[key] = config[key];
        }
        if (config.ssl !== undefined && config.ssl !== null && config.ssl !== false) {
            options.ssl = typeof config.ssl === "object" ? { rejectUnauthorized: config.ssl.rejectUnauthorized !== false } : true;
        }
        return options;
    }

    class Client extends EventEmitter {
        #config;
        #handle = null;
        #connecting = null;
        #ended = false;

        constructor(config) {
            super();
            this.#config = configOf(config);
            this.host = this.#config.host;
            this.port = this.#config.port;
            this.user = this.#config.user;
            this.database = this.#config.database;
        }

        connect(callback) {
            if (this.#connecting !== null) {
                return withCallback(Promise.reject(new Error("Client has already been connected. You cannot reuse a client.")), callback);
            }
            this.#connecting = request("pg.connect", [connectionOptions(this.#config)]).then((handle) => {
                this.#handle = handle;
                this.emit("connect");
            });
            return withCallback(this.#connecting, callback);
        }

        query(config, values, callback) {
            if (typeof values === "function") {
                callback = values;
                values = undefined;
            }
            const query = typeof config === "string" ? { text: config } : config || {};
            if (typeof query.callback === "function") callback = query.callback;
            const given = values !== undefined ? values : query.values;
            const run = async () => {
                if (this.#ended) throw new Error("Client was closed and is not queryable");
                if (this.#connecting === null) throw new Error("Client has not been connected: call client.connect() first");
                await this.#connecting;
                const results = await request("pg.query", [this.#handle, String(query.text),
                    given === undefined || given === null ? null : Array.from(given, parameter)]);
                const parsed = results.map((raw) => resultOf(raw, query.rowMode));
                return parsed.length === 1 ? parsed[0] : parsed;
            };
            return withCallback(run(), callback);
        }

        end(callback) {
            this.#ended = true;
            const handle = this.#handle;
            this.#handle = null;
            const ending = (this.#connecting || Promise.resolve()).catch(() => {})
                .then(() => (handle === null ? undefined : request("pg.end", [handle])))
                .then(() => { this.emit("end"); });
            return withCallback(ending, callback);
        }

        escapeIdentifier(text) {
            return "\"" + String(text).replace(/"/g, "\"\"") + "\"";
        }

        escapeLiteral(text) {
            const value = String(text);
            const quoted = "'" + value.replace(/'/g, "''") + "'";
            return value.includes("\\") ? " E" + quoted.replace(/\\/g, "\\\\") : quoted;
        }
    }

    // ------------------------------------------------------------------ Pool

    class Pool extends EventEmitter {
        #config;
        #idle = [];
        #all = new Set();
        #waiting = [];
        #ended = false;

        constructor(config) {
            super();
            this.#config = configOf(config);
            this.options = { max: 10, ...this.#config };
        }

        get totalCount() { return this.#all.size; }
        get idleCount() { return this.#idle.length; }
        get waitingCount() { return this.#waiting.length; }
        get ending() { return this.#ended; }
        get ended() { return this.#ended && this.#all.size === 0; }

        connect(callback) {
            if (this.#ended) return withCallback(Promise.reject(new Error("Cannot use a pool after calling end on the pool")), callback);
            return withCallback(new Promise((resolve, reject) => {
                this.#waiting.push({ resolve, reject });
                this.#dispense();
            }), callback);
        }

        #dispense() {
            while (this.#waiting.length > 0 && this.#idle.length > 0) {
                const client = this.#idle.shift();
                this.#waiting.shift().resolve(client);
            }
            if (this.#waiting.length > 0 && this.#all.size < this.options.max) {
                const waiter = this.#waiting.shift();
                const client = new Client(this.#config);
                this.#all.add(client);
                let released = false;
                client.release = (error) => {
                    if (released) throw new Error("Release called on client which has already been released to the pool.");
                    released = true;
                    if (error || this.#ended) {
                        this.#all.delete(client);
                        client.end().catch(() => {});
                    } else {
                        released = false;
                        this.#idle.push(client);
                        this.emit("release", undefined, client);
                    }
                    this.#dispense();
                };
                client.connect().then(() => {
                    this.emit("connect", client);
                    this.emit("acquire", client);
                    waiter.resolve(client);
                }, (error) => {
                    this.#all.delete(client);
                    waiter.reject(error);
                    this.#dispense();
                });
            }
        }

        query(text, values, callback) {
            if (typeof values === "function") {
                callback = values;
                values = undefined;
            }
            const run = async () => {
                const client = await this.connect();
                try {
                    const result = await client.query(text, values);
                    client.release();
                    return result;
                } catch (error) {
                    client.release(error);
                    throw error;
                }
            };
            return withCallback(run(), callback);
        }

        end(callback) {
            this.#ended = true;
            const idle = this.#idle.splice(0);
            for (const client of idle) this.#all.delete(client);
            return withCallback(Promise.all(idle.map((client) => client.end())).then(() => { this.emit("end"); }), callback);
        }
    }

    class DatabaseError extends Error {}

    const pg = Object.freeze({ Client, Pool, types, DatabaseError, defaults: Object.freeze({ host: "localhost", port: 5432 }) });
    return { pg };
})
