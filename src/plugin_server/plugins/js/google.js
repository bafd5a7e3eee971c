// `require('@google-cloud/bigquery' | '@google-cloud/pubsub' | '@google-cloud/storage')` for plugins,
// written for this server: the parts of Google's node clients the export apps use, over Google's
// JSON APIs called by the host (hosted/google.py).
//
// This file is one JavaScript expression, a function that prelude.js calls once per isolate:
//
//     (google.js)(kit, modules)  ->  {"@google-cloud/bigquery": ..., "@google-cloud/pubsub": ..., "@google-cloud/storage": ...}
//
//   kit.request(op, args)   google.client({credentials, apiEndpoint}) -> handle;
//                           google.request(handle, service, method, pathSegments, query, body, media) -> JSON
//   modules.stream          Writable, for File.createWriteStream
//
// Client options: projectId (else the key's project_id), credentials (the service account key
// object), apiEndpoint. Errors are the node clients': BigQuery and Storage reject with an ApiError
// (the API's message, `code` = HTTP status, `errors`), Pub/Sub with its gRPC form
// ("5 NOT_FOUND: ...", `code` = 5).
(function (kit, modules) {
    "use strict";

    const { request, Buffer, later } = kit;
    const { Writable } = modules.stream;

    class ApiError extends Error {
        constructor(error) {
            super(error.message);
            this.name = "ApiError";
            for (const key of ["code", "errors", "status", "response"]) {
                if (error[key] !== undefined) this[key] = error[key];
            }
        }
    }

    class PartialFailureError extends Error {
        constructor(errors, response) {
            super("A failure occurred during this request.");
            this.name = "PartialFailureError";
            this.errors = errors;
            this.response = response;
        }
    }

    const GRPC_CODES = { CANCELLED: 1, UNKNOWN: 2, INVALID_ARGUMENT: 3, DEADLINE_EXCEEDED: 4, NOT_FOUND: 5,
        ALREADY_EXISTS: 6, PERMISSION_DENIED: 7, RESOURCE_EXHAUSTED: 8, FAILED_PRECONDITION: 9, ABORTED: 10,
        OUT_OF_RANGE: 11, UNIMPLEMENTED: 12, INTERNAL: 13, UNAVAILABLE: 14, DATA_LOSS: 15, UNAUTHENTICATED: 16 };
    const HTTP_STATUSES = { 400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
        409: "ALREADY_EXISTS", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED" };

    function grpcError(error) {
        if (error.name !== "ApiError") return error;
        const status = error.status || HTTP_STATUSES[error.code] || "UNKNOWN";
        const code = GRPC_CODES[status] || 2;
        const made = new Error(`${code} ${status}: ${error.message}`);
        made.code = code;
        made.details = error.message;
        return made;
    }

    // One host client per client object, made on first use.
    class Connection {
        #options;
        #handle = null;

        constructor(options) {
            this.#options = { credentials: options.credentials || null, apiEndpoint: options.apiEndpoint || null };
        }

        async call(service, method, path, { query = null, body = null, media = null } = {}) {
            if (this.#handle === null) {
                this.#handle = request("google.client", [this.#options]);
            }
            try {
                return await request("google.request", [await this.#handle, service, method, path, query, body, media]);
            } catch (error) {
                throw error.name === "ApiError" ? new ApiError(error) : error;
            }
        }
    }

    function projectOf(options) {
        const given = options || {};
        return given.projectId || (given.credentials && given.credentials.project_id) || "{{projectId}}";
    }

    function withCallback(promise, callback) {
        if (typeof callback !== "function") return promise;
        promise.then((value) => callback(null, ...(Array.isArray(value) ? value : [value])), (error) => callback(error));
        return undefined;
    }

    async function exists(get) {
        try {
            await get();
            return [true];
        } catch (error) {
            if (error.code === 404 || error.code === 5) return [false];
            throw error;
        }
    }

    // ------------------------------------------------------------------ BigQuery

    class Table {
        constructor(dataset, id) {
            this.dataset = dataset;
            this.bigQuery = dataset.bigQuery;
            this.id = id;
        }

        get _path() {
            return ["projects", this.bigQuery.projectId, "datasets", this.dataset.id, "tables", this.id];
        }

        getMetadata(callback) {
            return withCallback(this.bigQuery._call("GET", this._path).then((metadata) => {
                this.metadata = metadata;
                return [metadata, metadata];
            }), callback);
        }

        setMetadata(metadata, callback) {
            const body = { ...metadata };
            if (Array.isArray(body.schema)) body.schema = { fields: body.schema };
            return withCallback(this.bigQuery._call("PATCH", this._path, { body }).then((result) => {
                this.metadata = result;
                return [result, result];
            }), callback);
        }

        get(callback) {
            return withCallback(this.getMetadata().then(() => [this, this.metadata]), callback);
        }

        exists(callback) {
            return withCallback(exists(() => this.getMetadata()), callback);
        }

        delete(callback) {
            return withCallback(this.bigQuery._call("DELETE", this._path).then((response) => [response]), callback);
        }

        create(options, callback) {
            return this.dataset.createTable(this.id, options, callback);
        }

        // rows: objects (each becomes {json: row, insertId}) or, with {raw: true}, {json, insertId} entries.
        insert(rows, options, callback) {
            if (typeof options === "function") {
                callback = options;
                options = {};
            }
            const given = options || {};
            const list = Array.isArray(rows) ? rows : [rows];
            const entries = list.map((row) => {
                if (given.raw) return row;
                const entry = { json: row };
                if (given.createInsertId !== false) entry.insertId = kit.crypto.randomUUID();
                return entry;
            });
            const body = { rows: entries };
            if (given.skipInvalidRows !== undefined) body.skipInvalidRows = given.skipInvalidRows;
            if (given.ignoreUnknownValues !== undefined) body.ignoreUnknownValues = given.ignoreUnknownValues;
            if (given.templateSuffix !== undefined) body.templateSuffix = given.templateSuffix;
            const run = this.bigQuery._call("POST", [...this._path, "insertAll"], { body }).then((response) => {
                const failed = response.insertErrors || [];
                if (failed.length > 0) {
                    throw new PartialFailureError(failed.map((item) => ({ row: list[item.index], errors: item.errors })), response);
                }
                return [response];
            });
            return withCallback(run, callback);
        }
    }

    class Dataset {
        constructor(bigQuery, id) {
            this.bigQuery = bigQuery;
            this.id = id;
        }

        table(id) {
            return new Table(this, id);
        }

        createTable(id, options, callback) {
            if (typeof options === "function") {
                callback = options;
                options = {};
            }
            const body = { ...(options || {}), tableReference: { projectId: this.bigQuery.projectId, datasetId: this.id, tableId: id } };
            if (Array.isArray(body.schema)) body.schema = { fields: body.schema };
            const path = ["projects", this.bigQuery.projectId, "datasets", this.id, "tables"];
            return withCallback(this.bigQuery._call("POST", path, { body }).then((response) => {
                const table = this.table(id);
                table.metadata = response;
                return [table, response];
            }), callback);
        }

        getMetadata(callback) {
            const path = ["projects", this.bigQuery.projectId, "datasets", this.id];
            return withCallback(this.bigQuery._call("GET", path).then((metadata) => [metadata, metadata]), callback);
        }

        exists(callback) {
            return withCallback(exists(() => this.getMetadata()), callback);
        }

        create(options, callback) {
            return this.bigQuery.createDataset(this.id, options, callback);
        }
    }

    function rowsOf(response) {
        const fields = (response.schema && response.schema.fields) || [];
        return (response.rows || []).map((row) => {
            const object = {};
            fields.forEach((field, i) => {
                const value = row.f[i].v;
                object[field.name] = value === null ? null
                    : ["INTEGER", "INT64", "FLOAT", "FLOAT64"].includes(field.type) ? Number(value)
                        : ["BOOLEAN", "BOOL"].includes(field.type) ? value === "true" : value;
            });
            return object;
        });
    }

    class BigQuery {
        #connection;

        constructor(options = {}) {
            this.projectId = projectOf(options);
            this.#connection = new Connection(options);
        }

        _call(method, path, options) {
            return this.#connection.call("bigquery", method, path, options);
        }

        dataset(id) {
            return new Dataset(this, id);
        }

        createDataset(id, options, callback) {
            if (typeof options === "function") {
                callback = options;
                options = {};
            }
            const body = { ...(options || {}), datasetReference: { projectId: this.projectId, datasetId: id } };
            return withCallback(this._call("POST", ["projects", this.projectId, "datasets"], { body })
                .then((response) => [this.dataset(id), response]), callback);
        }

        query(query, options, callback) {
            if (typeof options === "function") {
                callback = options;
                options = {};
            }
            const given = typeof query === "string" ? { query } : query || {};
            const body = { query: given.query, useLegacySql: given.useLegacySql === true };
            if (given.params && !Array.isArray(given.params)) {
                body.parameterMode = "NAMED";
                body.queryParameters = Object.keys(given.params).map((name) => ({
                    name,
                    parameterType: { type: typeof given.params[name] === "number" ? (Number.isInteger(given.params[name]) ? "INT64" : "FLOAT64") : typeof given.params[name] === "boolean" ? "BOOL" : "STRING" },
                    parameterValue: { value: String(given.params[name]) },
                }));
            }
            return withCallback(this._call("POST", ["projects", this.projectId, "queries"], { body })
                .then((response) => [rowsOf(response)]), callback);
        }
    }

    // ------------------------------------------------------------------ Pub/Sub

    function topicName(projectId, name) {
        return name.startsWith("projects/") ? name : `projects/${projectId}/topics/${name}`;
    }

    class Topic {
        #pending = [];

        constructor(pubsub, name) {
            this.pubsub = pubsub;
            this.name = topicName(pubsub.projectId, name);
        }

        get _path() {
            return this.name.split("/");
        }

        async #call(method, path, options) {
            try {
                return await this.pubsub._call(method, path, options);
            } catch (error) {
                throw grpcError(error);
            }
        }

        getMetadata(callback) {
            return withCallback(this.#call("GET", this._path).then((metadata) => {
                this.metadata = metadata;
                return [metadata];
            }), callback);
        }

        create(callback) {
            return withCallback(this.#call("PUT", this._path, { body: {} }).then((response) => [this, response]), callback);
        }

        exists(callback) {
            return withCallback(exists(() => this.getMetadata()), callback);
        }

        get(options, callback) {
            if (typeof options === "function") {
                callback = options;
                options = {};
            }
            const run = this.getMetadata().then(() => [this, this.metadata], (error) => {
                if (options && options.autoCreate && error.code === 5) return this.create();
                throw error;
            });
            return withCallback(run, callback);
        }

        delete(callback) {
            return withCallback(this.#call("DELETE", this._path).then((response) => [response]), callback);
        }

        // Messages published in the same turn go in one request, as the node client batches them.
        publishMessage(message, callback) {
            const data = message.json !== undefined ? Buffer.from(JSON.stringify(message.json)) : message.data;
            if (!(data instanceof Uint8Array)) {
                return withCallback(Promise.reject(new TypeError("Data must be in the form of a Buffer or Uint8Array.")), callback);
            }
            const sent = { data: kit.base64Encode(data) };
            if (message.attributes) sent.attributes = message.attributes;
            if (message.orderingKey) sent.orderingKey = message.orderingKey;
            const result = new Promise((resolve, reject) => {
                if (this.#pending.length === 0) later(() => this.#flush());
                this.#pending.push({ message: sent, resolve, reject });
            });
            return withCallback(result, callback);
        }

        publish(data, attributes, callback) {
            if (typeof attributes === "function") {
                callback = attributes;
                attributes = undefined;
            }
            return this.publishMessage({ data, attributes }, callback);
        }

        publishJSON(json, attributes, callback) {
            return this.publishMessage({ json, attributes }, callback);
        }

        #flush() {
            const batch = this.#pending.splice(0);
            this.#call("POST", [...this._path.slice(0, -1), `${this._path[this._path.length - 1]}:publish`],
                { body: { messages: batch.map((item) => item.message) } })
                .then((response) => batch.forEach((item, i) => item.resolve((response.messageIds || [])[i])),
                    (error) => batch.forEach((item) => item.reject(error)));
        }
    }

    class PubSub {
        #connection;

        constructor(options = {}) {
            this.projectId = projectOf(options);
            this.#connection = new Connection(options);
        }

        _call(method, path, options) {
            return this.#connection.call("pubsub", method, path, options);
        }

        topic(name) {
            return new Topic(this, name);
        }

        createTopic(name, callback) {
            const topic = this.topic(name);
            return withCallback(topic.create(), callback);
        }
    }

    // ------------------------------------------------------------------ Storage

    class File {
        constructor(bucket, name) {
            this.bucket = bucket;
            this.name = name;
        }

        get _path() {
            return ["b", this.bucket.name, "o", this.name];
        }

        save(data, options, callback) {
            if (typeof options === "function") {
                callback = options;
                options = {};
            }
            const bytes = typeof data === "string" ? Buffer.from(data) : data;
            const media = { base64: kit.base64Encode(bytes), contentType: (options && (options.contentType || (options.metadata && options.metadata.contentType))) || "application/octet-stream" };
            const query = { uploadType: "media", name: this.name };
            const run = this.bucket.storage._call("storage-upload", "POST", ["b", this.bucket.name, "o"], { query, media })
                .then((metadata) => {
                    this.metadata = metadata;
                });
            return withCallback(run, callback);
        }

        // Collects what is written and uploads it when the stream ends ('finish', or 'error').
        createWriteStream(options) {
            const chunks = [];
            const file = this;
            return new Writable({
                write(chunk, encoding, done) {
                    chunks.push(typeof chunk === "string" ? Buffer.from(chunk, encoding === "buffer" ? undefined : encoding) : Buffer.from(chunk));
                    done();
                },
                final(done) {
                    file.save(Buffer.concat(chunks), options || {}).then(() => done(), (error) => done(error));
                },
            });
        }

        download(options, callback) {
            if (typeof options === "function") {
                callback = options;
            }
            const run = this.bucket.storage._call("storage", "GET", this._path, { query: { alt: "media" } })
                .then((answer) => [Buffer.from(answer.$bytes, "base64")]);
            return withCallback(run, callback);
        }

        getMetadata(callback) {
            return withCallback(this.bucket.storage._call("storage", "GET", this._path).then((metadata) => [metadata]), callback);
        }

        exists(callback) {
            return withCallback(exists(() => this.getMetadata()), callback);
        }

        delete(callback) {
            return withCallback(this.bucket.storage._call("storage", "DELETE", this._path).then((response) => [response]), callback);
        }
    }

    class Bucket {
        constructor(storage, name) {
            this.storage = storage;
            this.name = name;
        }

        file(name) {
            return new File(this, name);
        }

        getMetadata(callback) {
            return withCallback(this.storage._call("storage", "GET", ["b", this.name]).then((metadata) => [metadata]), callback);
        }

        exists(callback) {
            return withCallback(exists(() => this.getMetadata()), callback);
        }

        getFiles(options, callback) {
            if (typeof options === "function") {
                callback = options;
                options = {};
            }
            const query = options && options.prefix ? { prefix: options.prefix } : null;
            return withCallback(this.storage._call("storage", "GET", ["b", this.name, "o"], { query })
                .then((response) => [(response.items || []).map((item) => this.file(item.name))]), callback);
        }
    }

    class Storage {
        #connection;

        constructor(options = {}) {
            this.projectId = projectOf(options);
            this.#connection = new Connection(options);
        }

        _call(service, method, path, options) {
            return this.#connection.call(service, method, path, options);
        }

        bucket(name) {
            return new Bucket(this, name);
        }
    }

    return {
        "@google-cloud/bigquery": Object.freeze({ BigQuery, Dataset, Table, PartialFailureError, ApiError }),
        "@google-cloud/pubsub": Object.freeze({ PubSub, Topic }),
        "@google-cloud/storage": Object.freeze({ Storage, Bucket, File, ApiError }),
    };
})
