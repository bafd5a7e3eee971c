// The host side of one plugin config's V8 isolate, evaluated before any plugin code.
//
// It installs the globals plugins expect (console, fetch, posthog, RetryError, setTimeout and
// friends, Buffer, TextEncoder/TextDecoder, atob/btoa, URL/URLSearchParams), builds `meta`, and defines the entry points
// that runtime.py evaluates. There are no Python functions in the isolate: JS and Python exchange
// JSON text only.
//
// This file is one JavaScript expression, a function called once per isolate, which returns the
// `control` SharedArrayBuffer (below):
//
//     (prelude)(entryName, options, api, memory, createPluginGuards, createUrl, createCrypto, createContrib, createZlib, libraries)
//
//   entryName           the global under which the entry points are installed (a random name,
//                       non-enumerable, read-only)
//   options             {timeoutMs, maxTimers, config, attachments: {key: {content_type, file_name, base64}},
//                       randomSeed: 64 hex digits from the host's secure random source,
//                       sourcePrefix: what the sourceURL of each of the plugin's files starts with,
//                       notSetUp: the names of the provided modules not set up in this isolate}
//   api                 the meta API's declaration (meta/api.py, js_declaration): {operations: [{name,
//                       shapes}], globals, logLevels, logAliases, metricMethods}. The functions of
//                       `meta` (and of the `posthog` global) that post a host request are made from it.
//   memory              what memory.js returned (the ArrayBuffer budget, installed before this runs)
//   createPluginGuards  the value of guards.js (the run-time half of the transpiler's guards)
//   createUrl           a function returning the value of url.js (URL, URLSearchParams), called on first use
//   createCrypto        the value of crypto.js (require('crypto'))
//   createContrib       the value of contrib.js (require('@posthog/plugin-contrib')), or null
//   createZlib          the value of zlib.js (require('zlib')), or null
//   libraries           more modules, in order: functions `(kit, modules) -> {name: module}` (stream.js,
//                       pool.js, ...), given the `kit` below and the modules provided so far
//
// Protocol. `control` is an Int32Array shared with Python: [0] is bumped whenever plugin code is
// entered (Python reads it to time out each piece of plugin code rather than a whole script), [1] is
// unused, [2] is the number of a request, which run() copies to [3] when it starts (so Python
// knows whether a request it stopped had started), [4] is set when an ArrayBuffer allocation was
// refused (Python then runs `<entry>.collectGarbage()` and asks `<entry>.memoryStillOver()`), [5] is the KiB held in
// ArrayBuffers (past half the budget, Python asks V8 for a full collection after the script). Python
// sets [2] and calls `<entry>.run` with a request, JSON text, as its `this` (runtime.py, entry.py):
// V8 makes the string from UTF-8 natively, and no script text per request is compiled or cached. Requests:
//   ["batch", callId, events]      processEvent over a list of events
//   ["call", callId, name, args]   an exported function (setupPlugin, onEvent, runEveryHour...)
//   ["job", callId, name, payload]
//   ["resume", callId]             after Python stopped a batch's synchronous part: the event being
//                                  processed times out, the others go on
//   ["deliver", items]             answers and timer firings: [[id, status, value], ...]
//   ["recover"]                    after Python stopped a deliver (a timer callback ran too long)
//   ["clearTimers"]                forget every plugin timer (they used more time than allowed)
//   ["declareMetrics", types]      the plugin's metric types, for meta.metrics
// Besides run(), `<entry>.define(path, requires, links, moduleFunction, jsonText, lineMap)` defines
// one of the plugin's modules (modules.py: the literal names it requires, its relative ones resolved
// to paths or null; the transpiled module function, or null and the text of a JSON file; the line
// map of its source map, or null, for stack traces),
// `<entry>.load(callId, mainPath)` checks that every module required is there (one error names all
// that are missing), then runs the main module (its $done carries what it exports), and
// `<entry>.poll()` only collects messages. The shared buffers are not reachable from plugin code.
//
// Each of these returns, as JSON text, the messages the isolate posted since the previous return,
// `[[op, id, args], ...]`:
//   ["$done", callId, result]    a call ended; result is an outcome, or for a batch [values, errors]:
//                                the value of each event (null where it threw) and [index, error]
//                                of each that threw (cheaper for Python than an outcome per event).
//                                Outcome: [1, value] or [0, error], where
//                                error is {name, message, stack}.
//   ["$timer", timerId, [ms]]    fire timer `timerId` in `ms` milliseconds (deliver [timerId, 2])
//   ["$untimer", timerId, []]    forget that timer
//   ["$uncaught", 0, [error]]    a timer callback threw
//   ["$timerLimit", 0, []]       the plugin was first refused a timer (more than maxTimers pending)
//   ["console", 0, [level, text]], ["metric", 0, [name, kind, value]]   no answer expected
//   [operation, requestId, args] any other operation (cache.get, fetch, ...): Python answers with a
//                                delivery [requestId, 1, value] (resolve) or [requestId, 0, error].
(function (entryName, options, api, memory, createPluginGuards, createUrl, createCrypto, createContrib, createZlib, libraries) {
    "use strict";

    // Builtins the runtime relies on, captured before plugin code can replace them.
    const global = globalThis;
    const apply = Reflect.apply;
    const parse = JSON.parse;
    const stringify = JSON.stringify;
    const NativePromise = Promise;
    const promiseThen = Promise.prototype.then;
    const promiseResolve = (value) => NativePromise.resolve(value);
    const NativeError = Error;
    const NativeTypeError = TypeError;
    const NativeRangeError = RangeError;
    const NativeSyntaxError = SyntaxError;
    const NativeUint8Array = Uint8Array;
    const NativeString = String;
    const isArray = Array.isArray;
    const isView = ArrayBuffer.isView;
    const defineProperty = Object.defineProperty;
    const freeze = Object.freeze;
    const keys = Object.keys;
    const hasOwn = Object.hasOwn;
    const fromCharCode = String.fromCharCode;
    const dateNow = Date.now;
    const stringIndexOf = String.prototype.indexOf;
    const stringSlice = String.prototype.slice;
    const arrayJoin = Array.prototype.join;
    const stringReplace = String.prototype.replace;
    const regexExec = RegExp.prototype.exec;
    const MAX_DELAY_MS = 2147483647;

    const timeoutMs = options.timeoutMs;
    const maxTimers = options.maxTimers;

    function then(promise, onValue, onError) {
        return apply(promiseThen, promiseResolve(promise), [onValue, onError]);
    }

    function isThenable(value) {
        return value !== null && (typeof value === "object" || typeof value === "function")
            && typeof value.then === "function";
    }

    // ------------------------------------------------------------------ messages to Python

    let outbox = [];

    function post(message) {
        outbox[outbox.length] = message;
    }

    // JSON.stringify spells a lone surrogate as an escape (`\udXXX`, after an even number of
    // backslashes), which Python's JSON cannot read: one in a message would fail all of them.
    const LONE_SURROGATE = /(?:^|[^\\])(?:\\\\)*\\ud[89a-f]/;
    const LONE_SURROGATES = /(?<=(?:^|[^\\])(?:\\\\)*)\\ud[89a-f][0-9a-f]{2}/g;

    function holdsLoneSurrogate(json) {
        return apply(stringIndexOf, json, ["\\ud"]) !== -1 && apply(regexExec, LONE_SURROGATE, [json]) !== null;
    }

    function takeOutbox() {
        let text = "[" + outbox.join(",") + "]";
        outbox = [];
        if (holdsLoneSurrogate(text)) {  // in a log line or an error message: written as U+FFFD
            text = apply(stringReplace, text, [LONE_SURROGATES, "\\ufffd"]);
        }
        return text;
    }

    // Arguments are serialized when the operation is asked for, so a value that is not JSON
    // (circular, BigInt) throws in the plugin's own code.
    function notify(op, args) {
        post("[" + stringify(op) + ",0," + stringify(args) + "]");
    }

    const waiting = new Map();
    let nextRequest = 1;

    function request(op, args) {
        let text;
        try {
            text = stringify(args);
        } catch (error) {
            return NativePromise.reject(error);
        }
        return new NativePromise((resolve, reject) => {
            const id = nextRequest++;
            waiting.set(id, { resolve, reject, op });
            post("[" + stringify(op) + "," + id + "," + text + "]");
        });
    }

    function hostError(error, op) {
        const name = NativeString(error && error.name || "Error");
        const message = NativeString(error && error.message || "");
        const made = name === "TypeError" ? new NativeTypeError(message)
            : name === "RangeError" ? new NativeRangeError(message)
                : name === "FetchError" ? new FetchError(message, "system") : new NativeError(message);
        if (made.name !== name) made.name = name;
        made.stack = `${name}: ${message}\n    at ${op} (plugin server)`;
        for (const key of keys(error || {})) {
            if (key !== "name" && key !== "message" && key !== "stack") {
                made[key] = error[key];  // what the client library's errors have: code, detail...
            }
        }
        return made;
    }

    // ------------------------------------------------------------------ progress and timers

    // [0]: the progress counter; [1]: unused; [2]: the request's number; [3]: the number of the last request that started; [4]: an ArrayBuffer allocation was
    // refused; [5]: the KiB the plugin holds in ArrayBuffers (both kept by memory.js).
    const control = new Int32Array(memory.uncountedSharedBuffer(24));
    memory.report(control, 4, 5);

    function bump() {
        control[0] = (control[0] + 1) | 0;
    }

    // Plugin timers have positive ids, the runtime's own negative ones (a plugin cannot clear them).
    // At most maxTimers plugin timers are pending at once (timers.py); the first refusal is reported
    // (once per isolate, so that a plugin living at the limit does not flood its error records).
    const timers = new Map();
    let nextPluginTimer = 1;
    let nextInternalTimer = -1;
    let pluginTimers = 0;
    let limitReported = false;

    function delayOf(ms) {
        const number = +ms;
        return number > 0 ? (number < MAX_DELAY_MS ? number : MAX_DELAY_MS) : 0;
    }

    function schedule(id, timer, ms) {
        timers.set(id, timer);
        post("[\"$timer\"," + id + ",[" + delayOf(ms) + "]]");
    }

    function pluginTimer(fn, ms, args, repeat) {
        if (typeof fn !== "function") {
            throw new NativeTypeError("The \"callback\" argument must be of type function");
        }
        if (pluginTimers >= maxTimers) {
            if (!limitReported) {
                limitReported = true;
                post("[\"$timerLimit\",0,[]]");
            }
            throw new NativeRangeError(`Too many timers: at most ${maxTimers} may be pending at once`);
        }
        pluginTimers++;
        const id = nextPluginTimer++;
        schedule(id, { fn, args, repeat: repeat ? delayOf(ms) : undefined }, ms);
        return id;
    }

    function forgetPluginTimer(id) {
        if (timers.delete(id)) {
            pluginTimers--;
            return true;
        }
        return false;
    }

    function clearPluginTimer(id) {
        const number = +id;
        if (number > 0 && forgetPluginTimer(number)) {
            post("[\"$untimer\"," + number + ",[]]");
        }
    }

    function clearTimers() {
        for (const id of [...timers.keys()]) {
            if (id > 0) {
                forgetPluginTimer(id);
            }
        }
        return takeOutbox();
    }

    function internalTimer(fn, ms) {
        const id = nextInternalTimer--;
        schedule(id, { fn, args: [], repeat: undefined }, ms);
        return id;
    }

    function fire(id) {
        const timer = timers.get(id);
        if (timer === undefined) {
            return;
        }
        if (timer.repeat === undefined) {
            if (id > 0) {
                forgetPluginTimer(id);
            } else {
                timers.delete(id);
            }
        } else {
            post("[\"$timer\"," + id + ",[" + timer.repeat + "]]");
        }
        bump();
        try {
            apply(timer.fn, undefined, timer.args);
        } catch (error) {
            reportUncaught(error);
        }
    }

    function reportUncaught(error) {
        post("[\"$uncaught\",0,[" + stringify(describeError(error)) + "]]");
    }

    // Deadlines of calls and events: all last timeoutMs and start in time order, so one timer for the
    // oldest live entry serves them all. An entry whose call ended has onExpire undefined.
    let deadlines = [];
    let deadlinesHead = 0;
    let deadlineTimerArmed = false;

    function dropEndedDeadlines() {
        while (deadlinesHead < deadlines.length && deadlines[deadlinesHead].onExpire === undefined) {
            deadlines[deadlinesHead++] = undefined;
        }
        if (deadlinesHead === deadlines.length) {
            deadlines = [];
            deadlinesHead = 0;
        } else if (deadlinesHead > 1024 && deadlinesHead * 2 > deadlines.length) {
            deadlines = deadlines.slice(deadlinesHead);
            deadlinesHead = 0;
        }
    }

    function addDeadline(onExpire) {
        dropEndedDeadlines();
        const entry = { at: dateNow() + timeoutMs, onExpire };
        deadlines[deadlines.length] = entry;
        if (!deadlineTimerArmed) {
            deadlineTimerArmed = true;
            internalTimer(expireDeadlines, timeoutMs);
        }
        return entry;
    }

    function expireDeadlines() {
        deadlineTimerArmed = false;
        const now = dateNow();
        dropEndedDeadlines();
        while (deadlinesHead < deadlines.length && deadlines[deadlinesHead].at <= now) {
            const onExpire = deadlines[deadlinesHead].onExpire;
            deadlines[deadlinesHead].onExpire = undefined;
            onExpire();
            dropEndedDeadlines();
        }
        if (deadlinesHead < deadlines.length) {
            deadlineTimerArmed = true;
            internalTimer(expireDeadlines, deadlines[deadlinesHead].at - now);
        }
    }

    const guards = createPluginGuards({ timeoutMs, setTimeout: internalTimer });
    const PluginTimeoutError = guards.TimeoutError;

    function timedOut() {
        const error = new PluginTimeoutError(`Script execution timed out after running for ${timeoutMs / 1000} second(s)`);
        error.stack = undefined;  // the runtime's own frames, of no use to the plugin's author
        return error;
    }

    // ------------------------------------------------------------------ errors and outcomes

    // Stack frames in the plugin's files, `<sourcePrefix><path>:<line>:<column>`, name lines of the
    // transpiled code: each module's line map (from its source map, per generated line the segments
    // [generated column, source line, source column], 0-based) turns them into the source's.
    const lineMaps = new Map();
    const escapedPrefix = NativeString(options.sourcePrefix || "").replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    const SOURCE_FRAME = new RegExp(escapedPrefix + "([^:()\\s]+):(\\d+):(\\d+)", "g");

    function sourcePosition(whole, path, line, column) {
        const segments = lineMaps.has(path) ? lineMaps.get(path)[+line - 1] : undefined;
        if (segments === undefined || segments.length === 0) {
            return whole;
        }
        let found = segments[0];
        for (const segment of segments) {
            if (segment[0] <= +column - 1) found = segment;
        }
        return `${options.sourcePrefix}${path}:${found[1] + 1}:${found[2] + 1}`;
    }

    function sourceStack(stack) {
        return lineMaps.size === 0 || !options.sourcePrefix ? stack : stack.replace(SOURCE_FRAME, sourcePosition);
    }

    function describeError(error) {
        try {
            if (error !== null && typeof error === "object") {
                return {
                    name: NativeString(error.name === undefined ? "Error" : error.name),
                    message: NativeString(error.message === undefined ? "" : error.message),
                    stack: typeof error.stack === "string" ? sourceStack(error.stack) : null,
                };
            }
            return { name: "Error", message: NativeString(error), stack: null };
        } catch (failure) {
            return { name: "Error", message: "the plugin threw a value that cannot be described", stack: null };
        }
    }

    function errorOutcome(error) {
        return "[0," + stringify(describeError(error)) + "]";
    }

    function valueOutcome(value, what) {
        const type = typeof value;
        if (type === "function" || type === "symbol" || type === "bigint") {
            return errorOutcome(new NativeTypeError(`${what} returned a ${type}, which is not JSON`));
        }
        let text;
        try {
            text = stringify(value);
        } catch (error) {
            return errorOutcome(error);
        }
        return "[1," + (text === undefined ? "null" : text) + "]";
    }

    function eventOutcome(value) {
        if (!value) {
            return "[1,null]";
        }
        const outcome = valueOutcome(value, "processEvent");
        if (holdsLoneSurrogate(outcome)) {  // refused for this event, as the server refuses it from any plugin
            return errorOutcome(new NativeTypeError("processEvent returned an event that cannot be stored: a lone surrogate in its text"));
        }
        return outcome;
    }

    function done(callId, result) {
        post("[\"$done\"," + callId + "," + result + "]");
    }

    // ------------------------------------------------------------------ text and bytes

    function invalidCharacter(message) {
        const error = new NativeError(message);
        error.name = "InvalidCharacterError";
        return error;
    }

    function utf8Encode(input) {
        const text = NativeString(input);
        const length = text.length;
        const bytes = new NativeUint8Array(length * 3);
        let at = 0;
        for (let i = 0; i < length; i++) {
            let code = text.charCodeAt(i);
            if (code < 0x80) {
                bytes[at++] = code;
                continue;
            }
            if (code < 0x800) {
                bytes[at++] = 0xc0 | (code >> 6);
                bytes[at++] = 0x80 | (code & 63);
                continue;
            }
            if (code >= 0xd800 && code <= 0xdfff) {
                const low = i + 1 < length ? text.charCodeAt(i + 1) : 0;
                if (code <= 0xdbff && low >= 0xdc00 && low <= 0xdfff) {
                    code = 0x10000 + ((code - 0xd800) << 10) + (low - 0xdc00);
                    i++;
                    bytes[at++] = 0xf0 | (code >> 18);
                    bytes[at++] = 0x80 | ((code >> 12) & 63);
                    bytes[at++] = 0x80 | ((code >> 6) & 63);
                    bytes[at++] = 0x80 | (code & 63);
                    continue;
                }
                code = 0xfffd;
            }
            bytes[at++] = 0xe0 | (code >> 12);
            bytes[at++] = 0x80 | ((code >> 6) & 63);
            bytes[at++] = 0x80 | (code & 63);
        }
        return bytes.slice(0, at);
    }

    // The length of a multi-byte sequence started by `lead`, and the range of its second byte.
    function sequenceOf(lead) {
        if (lead >= 0xc2 && lead <= 0xdf) return [2, 0x80, 0xbf];
        if (lead === 0xe0) return [3, 0xa0, 0xbf];
        if (lead === 0xed) return [3, 0x80, 0x9f];
        if (lead >= 0xe1 && lead <= 0xef) return [3, 0x80, 0xbf];
        if (lead === 0xf0) return [4, 0x90, 0xbf];
        if (lead >= 0xf1 && lead <= 0xf3) return [4, 0x80, 0xbf];
        if (lead === 0xf4) return [4, 0x80, 0x8f];
        return undefined;
    }

    // Decodes UTF-8 like the WHATWG decoder: each maximal invalid subpart becomes U+FFFD.
    function utf8Decode(bytes, fatal) {
        const units = [];
        let text = "";
        const length = bytes.length;
        let i = 0;
        while (i < length) {
            const lead = bytes[i];
            let code = -1;
            let used = 1;
            if (lead < 0x80) {
                code = lead;
            } else {
                const sequence = sequenceOf(lead);
                if (sequence !== undefined) {
                    let value = lead & (0xff >> (sequence[0] + 1));
                    let ok = true;
                    for (let k = 1; k < sequence[0]; k++) {
                        const next = i + k < length ? bytes[i + k] : -1;
                        const low = k === 1 ? sequence[1] : 0x80;
                        const high = k === 1 ? sequence[2] : 0xbf;
                        if (next < low || next > high) {
                            ok = false;
                            used = k;
                            break;
                        }
                        value = (value << 6) | (next & 63);
                    }
                    if (ok) {
                        code = value;
                        used = sequence[0];
                    }
                }
            }
            if (code < 0) {
                if (fatal) {
                    throw new NativeTypeError("The encoded data was not valid for encoding utf-8");
                }
                code = 0xfffd;
            }
            if (code > 0xffff) {
                code -= 0x10000;
                units[units.length] = 0xd800 + (code >> 10);
                units[units.length] = 0xdc00 + (code & 0x3ff);
            } else {
                units[units.length] = code;
            }
            i += used;
            if (units.length >= 8192) {
                text += apply(fromCharCode, undefined, units);
                units.length = 0;
            }
        }
        return text + apply(fromCharCode, undefined, units);
    }

    // How many bytes at the end of `bytes` start a sequence that is not complete yet.
    function incompleteTail(bytes) {
        for (let back = 1; back <= 3 && back <= bytes.length; back++) {
            const byte = bytes[bytes.length - back];
            if (byte >= 0x80 && byte <= 0xbf) {
                continue;
            }
            const sequence = sequenceOf(byte);
            return sequence !== undefined && sequence[0] > back ? back : 0;
        }
        return 0;
    }

    const BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const BASE64_URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const BASE64_VALUES = new Int16Array(128).fill(-1);
    for (let i = 0; i < 64; i++) {
        BASE64_VALUES[BASE64.charCodeAt(i)] = i;
        BASE64_VALUES[BASE64_URL.charCodeAt(i)] = i;
    }

    function base64Encode(bytes, alphabet, pad) {
        let text = "";
        const length = bytes.length;
        let i = 0;
        for (; i + 2 < length; i += 3) {
            const n = (bytes[i] << 16) | (bytes[i + 1] << 8) | bytes[i + 2];
            text += alphabet[n >> 18] + alphabet[(n >> 12) & 63] + alphabet[(n >> 6) & 63] + alphabet[n & 63];
        }
        if (i < length) {
            const n = (bytes[i] << 16) | (i + 1 < length ? bytes[i + 1] << 8 : 0);
            text += alphabet[n >> 18] + alphabet[(n >> 12) & 63];
            text += i + 1 < length ? alphabet[(n >> 6) & 63] : (pad ? "=" : "");
            text += pad ? "=" : "";
        }
        return text;
    }

    // Lenient, like node's Buffer: characters outside the alphabet are skipped, decoding stops at "=".
    function base64Decode(input) {
        const text = NativeString(input);
        const bytes = new NativeUint8Array((text.length * 3) >> 2);
        let at = 0;
        let bits = 0;
        let count = 0;
        for (let i = 0; i < text.length; i++) {
            const code = text.charCodeAt(i);
            if (code === 61) {
                break;
            }
            const value = code < 128 ? BASE64_VALUES[code] : -1;
            if (value < 0) {
                continue;
            }
            bits = (bits << 6) | value;
            count += 6;
            if (count >= 8) {
                count -= 8;
                bytes[at++] = (bits >> count) & 0xff;
            }
        }
        return bytes.slice(0, at);
    }

    function atob(input) {
        if (arguments.length === 0) {
            throw new NativeTypeError("1 argument required, but only 0 present.");
        }
        let text = NativeString(input).replace(/[\t\n\f\r ]/g, "");
        if (text.length % 4 === 0) {
            text = text.replace(/==?$/, "");
        }
        if (text.length % 4 === 1 || /[^A-Za-z0-9+/]/.test(text)) {
            throw invalidCharacter("The string to be decoded is not correctly encoded.");
        }
        const bytes = base64Decode(text);
        let binary = "";
        for (let i = 0; i < bytes.length; i += 8192) {
            binary += apply(fromCharCode, undefined, bytes.subarray(i, i + 8192));
        }
        return binary;
    }

    function btoa(input) {
        if (arguments.length === 0) {
            throw new NativeTypeError("1 argument required, but only 0 present.");
        }
        const text = NativeString(input);
        const bytes = new NativeUint8Array(text.length);
        for (let i = 0; i < text.length; i++) {
            const code = text.charCodeAt(i);
            if (code > 0xff) {
                throw invalidCharacter("The string to be encoded contains characters outside of the Latin1 range.");
            }
            bytes[i] = code;
        }
        return base64Encode(bytes, BASE64, true);
    }

    function hexEncode(bytes) {
        let text = "";
        for (let i = 0; i < bytes.length; i++) {
            text += (bytes[i] < 16 ? "0" : "") + bytes[i].toString(16);
        }
        return text;
    }

    function hexDecode(text) {
        const bytes = new NativeUint8Array(text.length >> 1);
        let at = 0;
        for (; at < bytes.length; at++) {
            const byte = parseInt(text.substr(at * 2, 2), 16);
            if (byte !== byte) {  // NaN: node stops at the first invalid pair
                break;
            }
            bytes[at] = byte;
        }
        return bytes.slice(0, at);
    }

    function latin1Encode(text) {
        const bytes = new NativeUint8Array(text.length);
        for (let i = 0; i < text.length; i++) {
            bytes[i] = text.charCodeAt(i) & 0xff;
        }
        return bytes;
    }

    function latin1Decode(bytes, mask) {
        let text = "";
        for (let i = 0; i < bytes.length; i += 8192) {
            const chunk = bytes.subarray(i, i + 8192);
            text += apply(fromCharCode, undefined, mask === 0xff ? chunk : chunk.map((byte) => byte & mask));
        }
        return text;
    }

    function encodingOf(encoding) {
        const name = encoding === undefined || encoding === null ? "utf8" : NativeString(encoding).toLowerCase();
        switch (name) {
            case "utf8": case "utf-8": return "utf8";
            case "base64": case "base64url": case "hex": case "ascii": return name;
            case "latin1": case "binary": return "latin1";
            default: throw new NativeTypeError(`Unknown encoding: ${encoding}`);
        }
    }

    function encodeText(text, encoding) {
        switch (encodingOf(encoding)) {
            case "utf8": return utf8Encode(text);
            case "base64": case "base64url": return base64Decode(text);
            case "hex": return hexDecode(NativeString(text));
            default: return latin1Encode(NativeString(text));
        }
    }

    function decodeBytes(bytes, encoding) {
        switch (encodingOf(encoding)) {
            case "utf8": return utf8Decode(bytes, false);
            case "base64": return base64Encode(bytes, BASE64, true);
            case "base64url": return base64Encode(bytes, BASE64_URL, false);
            case "hex": return hexEncode(bytes);
            case "ascii": return latin1Decode(bytes, 0x7f);
            default: return latin1Decode(bytes, 0xff);
        }
    }

    function bytesOf(value) {
        if (value instanceof ArrayBuffer || (typeof SharedArrayBuffer === "function" && value instanceof SharedArrayBuffer)) {
            return new NativeUint8Array(value);
        }
        if (isView(value)) {
            return new NativeUint8Array(value.buffer, value.byteOffset, value.byteLength);
        }
        return undefined;
    }

    // node's Buffer, the parts plugins use: a Uint8Array that converts to and from text.
    class Buffer extends NativeUint8Array {
        static from(value, encodingOrOffset, length) {
            if (typeof value === "string") {
                return wrapBytes(encodeText(value, encodingOrOffset));
            }
            if (value instanceof ArrayBuffer) {
                const offset = encodingOrOffset === undefined ? 0 : +encodingOrOffset;
                return new Buffer(value, offset, length === undefined ? value.byteLength - offset : +length);
            }
            const bytes = bytesOf(value);
            if (bytes !== undefined) {
                return wrapBytes(bytes.slice());
            }
            if (value !== null && typeof value === "object") {
                if (value.type === "Buffer" && isArray(value.data)) {
                    return wrapBytes(NativeUint8Array.from(value.data));
                }
                if (typeof value.length === "number") {
                    return wrapBytes(NativeUint8Array.from(value));
                }
            }
            throw new NativeTypeError("The first argument must be of type string, Buffer, ArrayBuffer, Array, or Array-like Object.");
        }

        static alloc(size, fill, encoding) {
            const buffer = new Buffer(size);
            if (fill !== undefined && fill !== 0) {
                buffer.fill(fill, 0, buffer.length, encoding);
            }
            return buffer;
        }

        static allocUnsafe(size) {
            return new Buffer(size);
        }

        static isBuffer(value) {
            return value instanceof Buffer;
        }

        static isEncoding(encoding) {
            try {
                encodingOf(encoding);
                return typeof encoding === "string";
            } catch (error) {
                return false;
            }
        }

        static byteLength(value, encoding) {
            if (typeof value === "string") {
                return encodeText(value, encoding).length;
            }
            const bytes = bytesOf(value);
            if (bytes === undefined) {
                throw new NativeTypeError("The \"string\" argument must be of type string, Buffer, or ArrayBuffer.");
            }
            return bytes.length;
        }

        static concat(list, totalLength) {
            const total = totalLength === undefined
                ? list.reduce((sum, item) => sum + item.length, 0) : +totalLength;
            const result = new Buffer(total);
            let at = 0;
            for (const item of list) {
                if (at >= total) {
                    break;
                }
                const bytes = bytesOf(item) || NativeUint8Array.from(item);
                result.set(bytes.subarray(0, total - at), at);
                at += bytes.length;
            }
            return result;
        }

        fill(value, start, end, encoding) {
            if (typeof value === "string" && value.length > 0) {
                const pattern = encodeText(value, encoding);
                const from = start === undefined ? 0 : start;
                const to = end === undefined ? this.length : end;
                for (let i = from; i < to; i++) {
                    this[i] = pattern[(i - from) % pattern.length];
                }
                return this;
            }
            return super.fill(typeof value === "string" ? 0 : value, start, end);
        }

        toString(encoding, start, end) {
            const from = start === undefined ? 0 : start;
            const to = end === undefined ? this.length : end;
            return decodeBytes(this.subarray(from, to), encoding);
        }

        toJSON() {
            return { type: "Buffer", data: Array.from(this) };
        }

        equals(other) {
            const bytes = bytesOf(other);
            if (bytes === undefined) {
                throw new NativeTypeError("The \"otherBuffer\" argument must be an instance of Buffer or Uint8Array.");
            }
            if (bytes.length !== this.length) {
                return false;
            }
            for (let i = 0; i < bytes.length; i++) {
                if (bytes[i] !== this[i]) {
                    return false;
                }
            }
            return true;
        }

        // node's slice is a view on the same memory, unlike Uint8Array's copy.
        slice(start, end) {
            return this.subarray(start, end);
        }
    }

    function wrapBytes(bytes) {
        return new Buffer(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    }

    class TextEncoder {
        get encoding() {
            return "utf-8";
        }

        encode(input) {
            return utf8Encode(input === undefined ? "" : input);
        }

        encodeInto(input, destination) {
            const text = NativeString(input);
            let read = 0;
            let written = 0;
            for (const character of text) {
                const bytes = utf8Encode(character);
                if (written + bytes.length > destination.length) {
                    break;
                }
                destination.set(bytes, written);
                written += bytes.length;
                read += character.length;
            }
            return { read, written };
        }
    }

    class TextDecoder {
        #fatal;
        #ignoreBOM;
        #pending = new NativeUint8Array(0);

        constructor(label, options) {
            const name = label === undefined ? "utf-8" : NativeString(label).trim().toLowerCase();
            if (name !== "utf-8" && name !== "utf8" && name !== "unicode-1-1-utf-8") {
                throw new NativeRangeError(`The "${label}" encoding is not supported`);
            }
            this.#fatal = !!(options && options.fatal);
            this.#ignoreBOM = !!(options && options.ignoreBOM);
        }

        get encoding() {
            return "utf-8";
        }

        get fatal() {
            return this.#fatal;
        }

        get ignoreBOM() {
            return this.#ignoreBOM;
        }

        decode(input, options) {
            let bytes = input === undefined ? new NativeUint8Array(0) : bytesOf(input);
            if (bytes === undefined) {
                throw new NativeTypeError("The \"input\" argument must be an instance of ArrayBuffer or ArrayBufferView.");
            }
            if (this.#pending.length > 0) {
                const joined = new NativeUint8Array(this.#pending.length + bytes.length);
                joined.set(this.#pending);
                joined.set(bytes, this.#pending.length);
                bytes = joined;
            }
            const streaming = !!(options && options.stream);
            const tail = streaming ? incompleteTail(bytes) : 0;
            this.#pending = bytes.slice(bytes.length - tail);
            const text = utf8Decode(bytes.subarray(0, bytes.length - tail), this.#fatal);
            return !this.#ignoreBOM && text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
        }
    }

    // ------------------------------------------------------------------ console, fetch, posthog

    function formatArgument(value) {
        if (typeof value === "string") {
            return value;
        }
        if (value instanceof NativeError) {
            return value.message ? `${value.name}: ${value.message}` : NativeString(value.name);
        }
        if (value !== null && typeof value === "object") {
            try {
                const text = stringify(value);
                if (text !== undefined) {
                    return text;
                }
            } catch (error) {
                // circular: fall back to String()
            }
        }
        if (typeof value === "bigint") {
            return `${value}n`;
        }
        try {
            return NativeString(value);
        } catch (error) {
            return Object.prototype.toString.call(value);
        }
    }

    function consoleMethod(level) {
        return (...args) => notify("console", [level, args.map(formatArgument).join(" ")]);
    }

    const consoleMethods = {};
    for (const level of api.logLevels) {
        consoleMethods[level] = consoleMethod(level);
    }
    for (const alias of keys(api.logAliases)) {
        consoleMethods[alias] = consoleMethod(api.logAliases[alias]);
    }
    const console = freeze(consoleMethods);

    // node-fetch's error for a request that got no response (plugins test `instanceof FetchError`).
    class FetchError extends NativeError {
        constructor(message, type, systemError) {
            super(message);
            this.name = "FetchError";
            this.type = type;
            if (systemError && systemError.code) {
                this.code = this.errno = systemError.code;
            }
        }
    }

    class Headers {
        #map = new Map();

        constructor(init) {
            if (init === undefined || init === null) {
                return;
            }
            if (init instanceof Headers) {
                init.forEach((value, name) => this.append(name, value));
            } else if (isArray(init) || typeof init[Symbol.iterator] === "function") {
                for (const pair of init) {
                    this.append(pair[0], pair[1]);
                }
            } else {
                for (const name of keys(init)) {
                    this.append(name, init[name]);
                }
            }
        }

        append(name, value) {
            const key = NativeString(name).toLowerCase();
            const values = this.#map.get(key);
            if (values === undefined) {
                this.#map.set(key, [NativeString(value)]);
            } else {
                values.push(NativeString(value));
            }
        }

        set(name, value) {
            this.#map.set(NativeString(name).toLowerCase(), [NativeString(value)]);
        }

        get(name) {
            const values = this.#map.get(NativeString(name).toLowerCase());
            return values === undefined ? null : values.join(", ");
        }

        has(name) {
            return this.#map.has(NativeString(name).toLowerCase());
        }

        delete(name) {
            this.#map.delete(NativeString(name).toLowerCase());
        }

        forEach(callback, thisArg) {
            for (const [name, value] of this.entries()) {
                apply(callback, thisArg, [value, name, this]);
            }
        }

        *entries() {
            for (const name of [...this.#map.keys()].sort()) {
                yield [name, this.#map.get(name).join(", ")];
            }
        }

        *keys() {
            for (const [name] of this.entries()) yield name;
        }

        *values() {
            for (const [, value] of this.entries()) yield value;
        }

        [Symbol.iterator]() {
            return this.entries();
        }

        // node-fetch: every header with its list of values
        raw() {
            const raw = {};
            for (const [name, values] of this.#map) {
                raw[name] = values.slice();
            }
            return raw;
        }

        pairs() {
            const pairs = [];
            for (const [name, values] of this.#map) {
                for (const value of values) {
                    pairs.push([name, value]);
                }
            }
            return pairs;
        }
    }

    class Response {
        #body;

        constructor(body, init) {
            const options = init || {};
            this.#body = body === undefined || body === null ? new NativeUint8Array(0)
                : bytesOf(body) || utf8Encode(NativeString(body));
            this.status = options.status === undefined ? 200 : options.status;
            this.statusText = options.statusText === undefined ? "" : NativeString(options.statusText);
            this.headers = new Headers(options.headers);
            this.url = options.url === undefined ? "" : NativeString(options.url);
            this.redirected = !!options.redirected;
        }

        get ok() {
            return this.status >= 200 && this.status < 300;
        }

        async text() {
            return utf8Decode(this.#body, false);
        }

        async json() {
            return parse(utf8Decode(this.#body, false));
        }

        async arrayBuffer() {
            return this.#body.slice().buffer;
        }

        async buffer() {
            return wrapBytes(this.#body.slice());
        }
    }

    function responseFrom(raw) {
        return new Response(base64Decode(raw.body), raw);
    }

    function requestBody(body) {
        if (body === undefined || body === null) {
            return null;
        }
        const bytes = bytesOf(body);
        if (bytes !== undefined) {
            return { base64: base64Encode(bytes, BASE64, true) };
        }
        return { text: NativeString(body) };
    }

    function fetch(resource, init) {
        const options = init || {};
        const url = typeof resource === "string" ? resource
            : resource !== null && typeof resource === "object" && typeof resource.url === "string"
                ? resource.url : NativeString(resource);
        let description;
        try {
            description = {
                method: NativeString(options.method || "GET").toUpperCase(),
                headers: new Headers(options.headers).pairs(),
                body: requestBody(options.body),
                redirect: options.redirect === undefined ? "follow" : NativeString(options.redirect),
                timeout: typeof options.timeout === "number" && options.timeout > 0 ? options.timeout : null,
            };
        } catch (error) {
            return NativePromise.reject(error);
        }
        return then(request("fetch", [url, description]), responseFrom);
    }
    fetch.default = fetch;
    fetch.Headers = Headers;
    fetch.Response = Response;
    fetch.FetchError = FetchError;

    function apiMethod(method) {
        return (path, options) => then(request("posthog.api", [method, path, options === undefined ? null : options]), responseFrom);
    }

    // ------------------------------------------------------------------ the declared operations

    function shaped(shape, value) {
        return shape === "jsonSerialize" ? !(value && value.jsonSerialize === false) : value;
    }

    // A declared operation's function: its arguments shaped as declared (undefined becomes null in
    // JSON), an optional one left out with those after it, posted as the host request `name`.
    function hostFunction(name, shapes) {
        return (...given) => {
            const args = [];
            for (let index = 0; index < shapes.length; index++) {
                if (shapes[index] === "optional" && given[index] === undefined) {
                    break;
                }
                args[index] = shaped(shapes[index], given[index]);
            }
            return request(name, args);
        };
    }

    // {cache: {get, set, ...}, utils: {cursor: {init, increment}}, posthog: {capture}, ...}, frozen.
    function declaredNamespaces(operations) {
        const root = {};
        for (const { name, shapes } of operations) {
            const path = name.split(".");
            let node = root;
            for (const part of path.slice(0, -1)) {
                node = hasOwn(node, part) ? node[part] : (node[part] = {});
            }
            node[path[path.length - 1]] = hostFunction(name, shapes);
        }
        const freezeAll = (node) => {
            for (const key of keys(node)) {
                if (typeof node[key] === "object") freezeAll(node[key]);
            }
            return freeze(node);
        };
        return freezeAll(root);
    }

    const declared = declaredNamespaces(api.operations);

    const posthog = freeze({
        ...declared.posthog,
        api: freeze({ get: apiMethod("get"), post: apiMethod("post"), put: apiMethod("put"), delete: apiMethod("delete") }),
    });

    class RetryError extends NativeError {
        constructor(message) {
            super(message);
            this.name = "RetryError";
        }
    }

    // ------------------------------------------------------------------ require

    // url.js's code is compiled and run on first use (URL, URLSearchParams, require('url')): most
    // plugins never use it, and every isolate would hold what it makes.
    let url;

    function urlModule() {
        if (url === undefined) {
            url = createUrl()(utf8Encode, utf8Decode);
        }
        return url;
    }
    const crypto = createCrypto({ encodeText, decodeBytes, bytesOf, wrapBytes, seed: options.randomSeed });

    // contrib, zlib and the libraries are given only to the isolates of plugins that require them by
    // name (provided.py); the others get null or fewer libraries.
    const MODULES = {
        "@posthog/plugin-scaffold": freeze({ RetryError }),
        "node-fetch": fetch,
        crypto,
    };
    defineProperty(MODULES, "url", { get: urlModule, enumerable: true });
    if (createContrib !== null) {
        MODULES["@posthog/plugin-contrib"] = createContrib({
            setTimeout: (fn, ms) => pluginTimer(fn, ms, [], false),
            clearTimeout: clearPluginTimer,
            reportError: reportUncaught,
        });
    }
    if (createZlib !== null) {
        MODULES.zlib = createZlib({ encodeText, bytesOf, wrapBytes });
    }

    // What the libraries get: host requests, the plugin's timers, bytes and text, error reports.
    const kit = freeze({
        request,
        later: (fn) => then(undefined, () => {
            try {
                fn();
            } catch (error) {
                reportUncaught(error);
            }
        }),
        setTimeout: (fn, ms, ...args) => pluginTimer(fn, ms, args, false),
        clearTimeout: clearPluginTimer,
        reportError: reportUncaught,
        Buffer, encodeText, decodeBytes, bytesOf, wrapBytes, base64Encode: (bytes) => base64Encode(bytes, BASE64, true),
        base64Decode, utf8Encode, utf8Decode, crypto,
    });
    for (const library of libraries) {
        const provided = library(kit, MODULES);
        for (const name of keys(provided)) {
            MODULES[name] = provided[name];
        }
    }

    // node's builtins may be named with the `node:` scheme.
    const BUILTINS = ["crypto", "stream", "url", "zlib"];

    function providedModule(name) {
        const bare = name.startsWith("node:") && BUILTINS.includes(name.slice(5)) ? name.slice(5) : name;
        return hasOwn(MODULES, bare) ? MODULES[bare] : undefined;
    }

    function notProvidedMessage(name) {
        return `Cannot import '${name}'! This package is not provided by PostHog in plugins.`;
    }

    // Modules that are provided, but set up only for plugins whose code names them (provided.py).
    const NOT_SET_UP = options.notSetUp || [];

    function notSetUp(name) {
        const bare = name.startsWith("node:") ? name.slice(5) : name;
        return NOT_SET_UP.some((own) => bare === own || (own.endsWith("/") && bare.startsWith(own)));
    }

    function requireProvided(name) {
        const found = providedModule(name);
        if (found === undefined) {
            const error = new NativeError(notSetUp(name)
                ? `Cannot import '${name}' by a name the code computes: write require('${name}') (or import it) in the plugin's code, so that the plugin server sets the module up for it.`
                : notProvidedMessage(name));
            error.code = "MODULE_NOT_FOUND";
            throw error;
        }
        return found;
    }

    // ------------------------------------------------------------------ meta

    function orNull(value) {
        return value === undefined ? null : value;
    }

    function millisecondsOf(date) {
        if (date instanceof Date) {
            return date.getTime();
        }
        return typeof date === "string" ? Date.parse(date) : date;
    }

    function jobRunner(name, payload) {
        const given = [name, orNull(payload)];
        return freeze({
            runNow: () => request("jobs.run", [...given, "now"]),
            runIn: (duration, unit) => request("jobs.run", [...given, "in", duration, unit]),
            runAt: (date) => request("jobs.run", [...given, "at", millisecondsOf(date)]),
        });
    }

    let declaredMetrics = {};
    const METRIC_OPERATIONS = api.metricMethods;

    function metric(name) {
        const kind = hasOwn(declaredMetrics, name) ? declaredMetrics[name] : undefined;
        if (kind === undefined) {
            const error = new NativeError("Invalid metric name");
            error.name = "IllegalOperationError";
            throw error;
        }
        return freeze({
            [METRIC_OPERATIONS[kind]]: (value) => {
                if (typeof value !== "number") {
                    throw new NativeTypeError("Only numbers are allowed for operations on metrics");
                }
                notify("metric", [name, kind, value]);
            },
        });
    }

    function attachmentsOf(given) {
        const attachments = {};
        for (const key of keys(given || {})) {
            const attachment = given[key];
            attachments[key] = {
                content_type: attachment.content_type,
                file_name: attachment.file_name,
                contents: wrapBytes(base64Decode(attachment.base64)),
            };
        }
        return attachments;
    }

    const meta = {
        config: options.config || {},
        attachments: attachmentsOf(options.attachments),
        global: {},
        jobs: new Proxy({}, {
            get: (target, name) => typeof name === "string" ? (payload) => jobRunner(name, payload) : undefined,
        }),
        metrics: new Proxy({}, {
            get: (target, name) => typeof name === "string" ? metric(name) : undefined,
        }),
        logger: console,
    };
    for (const name of keys(declared)) {
        if (!api.globals.includes(name)) {
            meta[name] = declared[name];
        }
    }

    // ------------------------------------------------------------------ the plugin's exports

    const METHOD_NAMES = ["setupPlugin", "teardownPlugin", "processEvent", "processEventBatch", "onEvent", "exportEvents"];
    const TASK_NAMES = ["runEveryMinute", "runEveryHour", "runEveryDay"];

    // name -> {fn, owner}; jobName -> {fn, owner}
    const exported = Object.create(null);
    const jobs = Object.create(null);

    function isObjectLike(value) {
        return value !== null && (typeof value === "object" || typeof value === "function");
    }

    // Where the original looked: exports, exports.default, module.exports (and its default); the
    // module's top-level names only when nothing at all was exported.
    function findExports(exportsObject, module, topLevel) {
        const places = [exportsObject, exportsObject.default, module.exports,
            isObjectLike(module.exports) ? module.exports.default : undefined].filter(isObjectLike);
        const anything = places.some((place) => keys(place).length > 0);
        const lookup = (name) => {
            for (const place of anything ? places : [topLevel]) {
                if (isObjectLike(place) && place[name] !== undefined) {
                    return { value: place[name], owner: place };
                }
            }
            return undefined;
        };
        for (const name of [...METHOD_NAMES, ...TASK_NAMES]) {
            const found = lookup(name);
            if (found !== undefined && typeof found.value === "function") {
                exported[name] = { fn: found.value, owner: found.owner };
            }
        }
        const jobsFound = lookup("jobs");
        if (jobsFound !== undefined && isObjectLike(jobsFound.value)) {
            for (const name of keys(jobsFound.value)) {
                if (typeof jobsFound.value[name] === "function") {
                    jobs[name] = { fn: jobsFound.value[name], owner: jobsFound.value };
                }
            }
        }
        const metricsFound = lookup("metrics");
        return metricsFound === undefined ? null : metricsFound.value;
    }

    function exportsDescription(metrics) {
        let metricsJson = "null";
        if (metrics !== null && metrics !== undefined) {
            try {
                metricsJson = stringify(metrics) || "\"invalid\"";
            } catch (error) {
                metricsJson = "\"invalid\"";
            }
        }
        const names = keys(exported);
        return "[1,{\"methods\":" + stringify(names.filter((name) => METHOD_NAMES.includes(name)))
            + ",\"tasks\":" + stringify(names.filter((name) => TASK_NAMES.includes(name)))
            + ",\"jobs\":" + stringify(keys(jobs)) + ",\"metrics\":" + metricsJson + "}]";
    }

    // ------------------------------------------------------------------ the plugin's own modules

    // path -> {requires, links, moduleFunction, jsonText}, from define(); path -> {module, topLevel}
    // once required (before it has run, so that a cycle gets the partial exports, as in node).
    const definitions = new Map();
    const records = new Map();

    function define(path, requires, links, moduleFunction, jsonText, lineMap) {
        definitions.set(path, { requires, links, moduleFunction, jsonText });
        if (lineMap) {
            lineMaps.set(path, lineMap);
        }
        return takeOutbox();
    }

    function isRelative(name) {
        return name.startsWith("./") || name.startsWith("../") || name.startsWith("/") || name === "." || name === "..";
    }

    function moduleNotFound(name, from) {
        const error = new NativeError(`Cannot find module '${name}' from '${from}'`);
        error.code = "MODULE_NOT_FOUND";
        return error;
    }

    function requireModule(path) {
        const existing = records.get(path);
        if (existing !== undefined) {
            return existing;
        }
        const definition = definitions.get(path);
        const module = { exports: {}, id: path, filename: path, loaded: false };
        const record = { module, topLevel: undefined };
        records.set(path, record);
        try {
            if (definition.moduleFunction === null) {
                try {
                    module.exports = parse(definition.jsonText);
                } catch (error) {
                    throw new NativeSyntaxError(`${path}: ${error.message}`);
                }
            } else {
                const exportsObject = module.exports;
                record.topLevel = apply(definition.moduleFunction, exportsObject,
                    [exportsObject, requireFrom(path, definition.links), module, guards]);
            }
        } catch (error) {
            records.delete(path);
            throw error;
        }
        module.loaded = true;
        return record;
    }

    function requireFrom(path, links) {
        return function require(name) {
            const text = NativeString(name);
            if (hasOwn(links, text)) {
                const target = links[text];
                if (target === null) {
                    throw moduleNotFound(text, path);
                }
                return requireModule(target).module.exports;
            }
            if (isRelative(text)) {
                throw moduleNotFound(text, path);
            }
            return requireProvided(text);
        };
    }

    // Every module the plugin's files require that is not there, named in one error (the original
    // refused an unknown import when it transformed the code, before running any).
    function checkRequires() {
        const packages = [];
        const files = [];
        for (const [path, definition] of definitions) {
            for (const name of definition.requires) {
                if (isRelative(name)) {
                    if (!hasOwn(definition.links, name) || definition.links[name] === null) {
                        files.push(`'${name}' from '${path}'`);
                    }
                } else if (providedModule(name) === undefined && !packages.includes(name)) {
                    packages.push(name);
                }
            }
        }
        const problems = [];
        if (packages.length === 1) {
            problems.push(notProvidedMessage(packages[0]));
        } else if (packages.length > 1) {
            problems.push(`Cannot import ${packages.map((name) => `'${name}'`).join(", ")}! These packages are not provided by PostHog in plugins.`);
        }
        if (files.length > 0) {
            problems.push(`Cannot find module ${files.join(", ")}.`);
        }
        if (problems.length > 0) {
            const error = new NativeError(problems.join(" "));
            error.code = "MODULE_NOT_FOUND";
            error.stack = undefined;  // the runtime's own frames, of no use to the plugin's author
            throw error;
        }
    }

    function load(callId, mainPath) {
        bump();
        let record;
        try {
            checkRequires();
            record = requireModule(mainPath);
        } catch (error) {
            done(callId, errorOutcome(error));
            return takeOutbox();
        }
        const module = record.module;
        done(callId, exportsDescription(findExports(module.exports, module, record.topLevel)));
        return takeOutbox();
    }

    // ------------------------------------------------------------------ calls

    function settleLater(promise, onOutcome, describe) {
        let settled = false;
        const finish = (outcome) => {
            if (!settled) {
                settled = true;
                deadline.onExpire = undefined;
                dropEndedDeadlines();
                onOutcome(outcome);
            }
        };
        const deadline = addDeadline(() => finish(errorOutcome(timedOut())));
        then(promise, (value) => finish(describe(value)), (error) => finish(errorOutcome(error)));
    }

    function invoke(callId, target, args, describe) {
        bump();
        let result;
        try {
            result = apply(target.fn, target.owner, args);
        } catch (error) {
            done(callId, errorOutcome(error));
            return takeOutbox();
        }
        if (isThenable(result)) {
            settleLater(result, (outcome) => done(callId, outcome), describe);
        } else {
            done(callId, describe(result));
        }
        return takeOutbox();
    }

    function ignoreValue() {
        return "[1,null]";
    }

    function call(callId, name, args) {
        const target = exported[name];
        if (target === undefined) {
            done(callId, "[1,null]");
            return takeOutbox();
        }
        args[args.length] = meta;
        return invoke(callId, target, args, ignoreValue);
    }

    function job(callId, name, payload) {
        const target = jobs[name];
        if (target === undefined) {
            done(callId, errorOutcome(new NativeError(`this plugin has no job '${name}'`)));
            return takeOutbox();
        }
        return invoke(callId, target, [payload, meta], ignoreValue);
    }

    // ------------------------------------------------------------------ batches

    const batches = new Map();

    function firstEvent(events) {
        if (!events) {
            return null;
        }
        if (!isArray(events)) {
            throw new NativeTypeError("processEventBatch returned something that is not an array");
        }
        return events[0];
    }

    function processOne(event) {
        const single = exported.processEvent;
        if (single !== undefined) {
            return apply(single.fn, single.owner, [event, meta]);
        }
        const many = exported.processEventBatch;
        const result = apply(many.fn, many.owner, [[event], meta]);
        return isThenable(result) ? then(result, firstEvent) : firstEvent(result);
    }

    function personOf(event) {
        return event !== null && typeof event === "object" ? NativeString(event.distinct_id) : "";
    }

    // Events run one after the other; an event whose processEvent awaits lets the next ones start,
    // except those of the same person, which wait for it (a person's events stay in order).
    function batch(callId, events) {
        const state = {
            callId, events, outcomes: new Array(events.length), remaining: events.length,
            next: 0, current: -1, busy: new Map(), finished: false,
        };
        batches.set(callId, state);
        advance(state);
        return takeOutbox();
    }

    function advance(state) {
        while (state.next < state.events.length) {
            const index = state.next++;
            const person = personOf(state.events[index]);
            const queue = state.busy.get(person);
            if (queue !== undefined) {
                queue.push(index);
            } else {
                startEvent(state, index, person);
            }
        }
        finishBatch(state);
    }

    // Runs the event's synchronous part; true when it went on asynchronously.
    function startEvent(state, index, person) {
        state.current = index;
        bump();
        let result;
        try {
            result = processOne(state.events[index]);
        } catch (error) {
            settleEvent(state, index, errorOutcome(error));
            return false;
        }
        if (!isThenable(result)) {
            settleEvent(state, index, eventOutcome(result));
            return false;
        }
        if (!state.busy.has(person)) {
            state.busy.set(person, []);
        }
        settleLater(result, (outcome) => endAsyncEvent(state, index, person, outcome), eventOutcome);
        return true;
    }

    function settleEvent(state, index, outcome) {
        if (state.outcomes[index] === undefined) {
            state.outcomes[index] = outcome;
            state.remaining--;
        }
    }

    function endAsyncEvent(state, index, person, outcome) {
        settleEvent(state, index, outcome);
        const queue = state.busy.get(person);
        while (queue.length > 0) {
            if (startEvent(state, queue.shift(), person)) {
                return;
            }
        }
        state.busy.delete(person);
        finishBatch(state);
    }

    function finishBatch(state) {
        if (state.finished || state.remaining > 0 || state.next < state.events.length) {
            return;
        }
        state.finished = true;
        batches.delete(state.callId);
        const outcomes = state.outcomes;
        const values = new Array(outcomes.length);
        let errors = "";
        for (let i = 0; i < outcomes.length; i++) {
            const outcome = outcomes[i];  // "[1,value]" or "[0,error]" (eventOutcome, errorOutcome)
            const inner = apply(stringSlice, outcome, [3, -1]);
            if (outcome[1] === "1") {
                values[i] = inner;
            } else {
                values[i] = "null";
                errors += (errors === "" ? "[" : ",[") + i + "," + inner + "]";
            }
        }
        done(state.callId, "[[" + apply(arrayJoin, values, [","]) + "],[" + errors + "]]");
    }

    function resume(callId) {
        const state = batches.get(callId);
        if (state !== undefined) {
            settleEvent(state, state.current, errorOutcome(timedOut()));
            const person = personOf(state.events[state.current]);
            const queue = state.busy.get(person);
            if (queue !== undefined && queue.length === 0) {
                state.busy.delete(person);
            }
            advance(state);
        }
        return takeOutbox();
    }

    // ------------------------------------------------------------------ deliveries

    let inbox = [];
    let inboxAt = 0;

    function settleRequest(id, status, value) {
        const waiter = waiting.get(id);
        if (waiter === undefined) {
            return;
        }
        waiting.delete(id);
        if (status === 1) {
            waiter.resolve(value);
        } else {
            waiter.reject(hostError(value, waiter.op));
        }
    }

    function drain() {
        while (inboxAt < inbox.length) {
            const item = inbox[inboxAt++];
            if (item[1] === 2) {
                fire(item[0]);
            } else {
                settleRequest(item[0], item[1], item[2]);
            }
        }
        inbox = [];
        inboxAt = 0;
        return takeOutbox();
    }

    function deliver(items) {
        inbox = items;
        inboxAt = 0;
        return drain();
    }

    // ------------------------------------------------------------------ globals and entry points

    const globals = {
        console, fetch, posthog, RetryError, Buffer, TextEncoder, TextDecoder, Headers, Response, atob, btoa,
        setTimeout: (fn, ms, ...args) => pluginTimer(fn, ms, args, false),
        setInterval: (fn, ms, ...args) => pluginTimer(fn, ms, args, true),
        setImmediate: (fn, ...args) => pluginTimer(fn, 0, args, false),
        clearTimeout: clearPluginTimer,
        clearInterval: clearPluginTimer,
        clearImmediate: clearPluginTimer,
        queueMicrotask: (fn) => {
            if (typeof fn !== "function") {
                throw new NativeTypeError("The \"callback\" argument must be of type function");
            }
            then(undefined, () => fn());
        },
    };
    for (const name of keys(globals)) {
        const existing = Object.getOwnPropertyDescriptor(global, name);
        if (existing !== undefined && !existing.configurable) {
            global[name] = globals[name];  // mini-racer's `var setTimeout`
        } else {
            defineProperty(global, name, { value: globals[name], writable: true, configurable: true, enumerable: false });
        }
    }
    // URL and URLSearchParams become plain globals, like the others, when first read or assigned.
    for (const name of ["URL", "URLSearchParams"]) {
        const settle = (value) => {
            defineProperty(global, name, { value, writable: true, configurable: true, enumerable: false });
            return value;
        };
        defineProperty(global, name, {
            get: () => settle(urlModule()[name]),
            set: settle,
            configurable: true,
            enumerable: false,
        });
    }
    // mini-racer's own timer, replaced above: its callbacks would run outside the runtime's control.
    global.__timer_manager = undefined;

    const REQUESTS = {
        batch, call, job, resume, deliver, clearTimers,
        recover: drain,
        declareMetrics: (types) => {
            declaredMetrics = types;
            return takeOutbox();
        },
    };

    // Called with the request as `this` (a string: this file is strict code).
    function run() {
        control[3] = control[2];
        const request = parse(this);
        return apply(REQUESTS[request[0]], undefined, request.slice(1));
    }

    defineProperty(global, entryName, { value: freeze({ run, define, load, poll: takeOutbox, collectGarbage: memory.collect, memoryStillOver: memory.stillOver }) });
    return control.buffer;
})
