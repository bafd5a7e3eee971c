// `require('aws-sdk')` for plugins, written for this server: aws-sdk v2's service objects, whose
// requests run on the host (hosted/aws.py, boto3).
//
// This file is one JavaScript expression, a function that prelude.js calls once per isolate:
//
//     (aws.js)(kit, modules)  ->  {"aws-sdk": AWS, "aws-sdk/clients/s3": AWS.S3, ...}
//
//   kit.request(op, args)   aws.client(serviceName, options) -> handle; aws.call(handle, Operation, params)
//
// `new AWS.S3(options)` (and Kinesis, Firehose, SQS, SNS, DynamoDB, Lambda) has every operation of
// the service as a method named as in aws-sdk (`putObject`, `describeStream`...): `method(params,
// callback)` sends at once and calls back (error, data); `method(params)` returns an AWS.Request
// whose `promise()` or `send(callback)` sends it. S3 also has `upload(params, options, callback)`
// (a ManagedUpload: `promise()`, `send(callback)`, `on()`; one PutObject) and `getSignedUrlPromise`
// is not provided. Options: accessKeyId, secretAccessKey, sessionToken (or `credentials`), region,
// endpoint, s3ForcePathStyle, maxRetries, and AWS.config.update() for all later objects. Bytes
// (Buffer, Uint8Array, strings for blob members are sent as given) cross as {$bytes}, times as Date.
(function (kit, modules) {
    "use strict";

    const { request, Buffer } = kit;
    const { EventEmitter } = modules.stream;

    const SERVICES = ["S3", "Kinesis", "Firehose", "SQS", "SNS", "DynamoDB", "Lambda"];
    const OPTION_NAMES = ["accessKeyId", "secretAccessKey", "sessionToken", "region", "endpoint", "s3ForcePathStyle", "maxRetries"];

    const globalConfig = {};
    // Names asked of any object that are no operation: `then` (an async function returning a client
    // must not make it look like a promise), and what inspection and JSON look for.
    const NOT_OPERATIONS = new Set(["then", "toJSON", "inspect", "valueOf", "toString"]);

    function encodeParams(value) {
        if (value instanceof Uint8Array) return { $bytes: kit.base64Encode(value) };
        if (value instanceof ArrayBuffer) return { $bytes: kit.base64Encode(new Uint8Array(value)) };
        if (value instanceof Date) return { $date: value.toISOString() };
        if (Array.isArray(value)) return value.map(encodeParams);
        if (value !== null && typeof value === "object") {
            const encoded = {};
            for (const key of Object.keys(value)) {
                if (value[key] !== undefined) encoded[key] = encodeParams(value[key]);
            }
            return encoded;
        }
        return value;
    }

    function decodeResult(value) {
        if (Array.isArray(value)) return value.map(decodeResult);
        if (value !== null && typeof value === "object") {
            const names = Object.keys(value);
            if (names.length === 1 && names[0] === "$bytes") return Buffer.from(value.$bytes, "base64");
            if (names.length === 1 && names[0] === "$date") return new Date(value.$date);
            const decoded = {};
            for (const name of names) decoded[name] = decodeResult(value[name]);
            return decoded;
        }
        return value;
    }

    function optionsOf(given) {
        const merged = { ...globalConfig, ...(given || {}) };
        const credentials = merged.credentials || {};
        const options = {};
        for (const name of OPTION_NAMES) {
            const value = merged[name] !== undefined ? merged[name] : credentials[name];
            if (value !== undefined && value !== null) {
                options[name] = typeof value === "object" && typeof value.href === "string" ? value.href : value;
            }
        }
        return options;
    }

    // An AWS.Request: sent once, by promise() or send(); `on` listeners hear 'success' / 'error' / 'complete'.
    class AWSRequest extends EventEmitter {
        #start;
        #sent = null;

        constructor(start) {
            super();
            this.#start = start;
        }

        promise() {
            if (this.#sent === null) {
                this.#sent = this.#start().then((data) => {
                    this.emit("success", { data });
                    this.emit("complete", { data });
                    return data;
                }, (error) => {
                    if (this.listenerCount("error") > 0) this.emit("error", error);
                    this.emit("complete", { error });
                    throw error;
                });
            }
            return this.#sent;
        }

        send(callback) {
            this.promise().then((data) => callback && callback(null, data), (error) => callback && callback(error, null));
        }

        abort() {
            return this;
        }

        createReadStream() {
            throw new Error("aws-sdk: createReadStream is not provided here; use promise() and the Body Buffer");
        }
    }

    function operationName(method) {
        return method[0].toUpperCase() + method.slice(1);
    }

    function makeService(serviceName) {
        class Service {
            constructor(options) {
                this.config = optionsOf(options);
                // not a #private field: methods are also called on the proxy below
                Object.defineProperty(this, "_clientHandle", { value: null, writable: true });
                // Every other lower-case name is an operation of the service.
                return new Proxy(this, {
                    get: (target, name, receiver) => {
                        if (typeof name !== "string" || name in target || NOT_OPERATIONS.has(name)
                            || !/^[a-z][A-Za-z0-9]*$/.test(name)) {
                            return Reflect.get(target, name, receiver);
                        }
                        return (params, callback) => target.makeRequest(name, params, callback);
                    },
                });
            }

            async _handle() {
                if (this._clientHandle === null) {
                    this._clientHandle = request("aws.client", [serviceName, this.config]);
                }
                return this._clientHandle;
            }

            makeRequest(method, params, callback) {
                if (typeof params === "function") {
                    callback = params;
                    params = {};
                }
                const awsRequest = new AWSRequest(async () => {
                    const handle = await this._handle();
                    return decodeResult(await request("aws.call", [handle, operationName(method), encodeParams(params || {})]));
                });
                if (typeof callback === "function") {
                    awsRequest.send(callback);
                }
                return awsRequest;
            }
        }
        Object.defineProperty(Service, "name", { value: serviceName });
        return Service;
    }

    const AWS = {};
    for (const name of SERVICES) {
        AWS[name] = makeService(name);
    }

    // S3's managed upload, as one PutObject.
    AWS.S3.prototype.upload = function upload(params, options, callback) {
        if (typeof options === "function") {
            callback = options;
        }
        const location = () => {
            const key = encodeURI(String(params.Key)).replace(/%2F/g, "/");
            const endpoint = this.config.endpoint;
            if (endpoint) {
                const base = String(endpoint).includes("://") ? String(endpoint) : `https://${endpoint}`;
                return `${base.replace(/\/$/, "")}/${params.Bucket}/${key}`;
            }
            return `https://${params.Bucket}.s3.${this.config.region || "us-east-1"}.amazonaws.com/${key}`;
        };
        const managed = new AWSRequest(async () => {
            const body = params.Body;
            const sent = { ...params, Body: typeof body === "string" ? Buffer.from(body) : body };
            const data = await this.makeRequest("putObject", sent).promise();
            return { ...data, Location: location(), Bucket: params.Bucket, Key: params.Key, key: params.Key };
        });
        if (typeof callback === "function") {
            managed.send(callback);
        }
        return managed;
    };

    AWS.config = {
        update(options) {
            Object.assign(globalConfig, options || {});
        },
        get region() { return globalConfig.region; },
        set region(value) { globalConfig.region = value; },
    };
    AWS.Credentials = class Credentials {
        constructor(accessKeyId, secretAccessKey, sessionToken) {
            const given = typeof accessKeyId === "object" && accessKeyId !== null ? accessKeyId : { accessKeyId, secretAccessKey, sessionToken };
            Object.assign(this, given);
        }
    };
    AWS.Endpoint = class Endpoint {
        constructor(endpoint) {
            this.href = String(endpoint).includes("://") ? String(endpoint) : `https://${endpoint}`;
            this.host = this.href.replace(/^[a-z]+:\/\//, "").replace(/\/.*$/, "");
        }
    };
    AWS.Request = AWSRequest;

    const provided = { "aws-sdk": Object.freeze(AWS) };
    for (const name of SERVICES) {
        provided[`aws-sdk/clients/${name.toLowerCase()}`] = AWS[name];
    }
    return provided;
})
