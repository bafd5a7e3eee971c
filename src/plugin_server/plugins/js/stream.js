// `require('stream')` for plugins, written for this server: node's EventEmitter and the stream
// classes the plugins use (Readable, Writable, Duplex, Transform, PassThrough, pipeline, finished),
// in memory: chunks are delivered asynchronously in order, `pipe` has no backpressure (the data a
// plugin streams is what it already holds), object mode is always on for non-byte chunks.
//
// This file is one JavaScript expression, a function that prelude.js calls once per isolate:
//
//     (stream.js)(kit, modules)  ->  {stream: the module}   (other modules use its EventEmitter)
//
//   kit.later(fn)      runs fn after the current code (a microtask)
//   kit.Buffer         the runtime's Buffer
(function (kit) {
    "use strict";

    const { later, Buffer } = kit;

    class EventEmitter {
        #listeners = new Map();

        on(name, listener) {
            return this.addListener(name, listener);
        }

        addListener(name, listener) {
            if (typeof listener !== "function") {
                throw new TypeError("The \"listener\" argument must be of type function");
            }
            const list = this.#listeners.get(name) || [];
            list.push(listener);
            this.#listeners.set(name, list);
            return this;
        }

        prependListener(name, listener) {
            this.addListener(name, listener);
            const list = this.#listeners.get(name);
            list.unshift(list.pop());
            return this;
        }

        once(name, listener) {
            const wrapper = (...args) => {
                this.removeListener(name, wrapper);
                return listener.apply(this, args);
            };
            wrapper.listener = listener;
            return this.on(name, wrapper);
        }

        off(name, listener) {
            return this.removeListener(name, listener);
        }

        removeListener(name, listener) {
            const list = this.#listeners.get(name);
            if (list !== undefined) {
                const index = list.findIndex((item) => item === listener || item.listener === listener);
                if (index >= 0) {
                    list.splice(index, 1);
                }
                if (list.length === 0) {
                    this.#listeners.delete(name);
                }
            }
            return this;
        }

        removeAllListeners(name) {
            if (name === undefined) {
                this.#listeners.clear();
            } else {
                this.#listeners.delete(name);
            }
            return this;
        }

        listenerCount(name) {
            const list = this.#listeners.get(name);
            return list === undefined ? 0 : list.length;
        }

        listeners(name) {
            return (this.#listeners.get(name) || []).map((item) => item.listener || item);
        }

        eventNames() {
            return [...this.#listeners.keys()];
        }

        // Like node: an 'error' nobody listens to is thrown.
        emit(name, ...args) {
            const list = this.#listeners.get(name);
            if (list === undefined || list.length === 0) {
                if (name === "error") {
                    throw args[0] instanceof Error ? args[0] : new Error(`Unhandled error. (${String(args[0])})`);
                }
                return false;
            }
            for (const listener of [...list]) {
                listener.apply(this, args);
            }
            return true;
        }
    }

    function chunkOf(chunk, encoding) {
        return typeof chunk === "string" && encoding !== undefined && encoding !== "buffer"
            ? Buffer.from(chunk, encoding) : chunk;
    }

    class Readable extends EventEmitter {
        constructor(options = {}) {
            super();
            this._readableState = { buffer: [], ended: false, endEmitted: false, flowing: null, scheduled: false, encoding: null };
            this.destroyed = false;
            if (typeof options.read === "function") {
                this._read = options.read;
            }
            if (typeof options.destroy === "function") {
                this._destroy = options.destroy;
            }
        }

        static from(iterable) {
            const readable = new Readable();
            (async () => {
                try {
                    for await (const chunk of iterable) {
                        readable.push(chunk);
                    }
                    readable.push(null);
                } catch (error) {
                    readable.destroy(error);
                }
            })();
            return readable;
        }

        _read() {}

        get readable() {
            return !this.destroyed && !this._readableState.endEmitted;
        }

        get readableEnded() {
            return this._readableState.endEmitted;
        }

        push(chunk, encoding) {
            const state = this._readableState;
            if (chunk === null) {
                state.ended = true;
            } else if (!state.ended) {
                state.buffer.push(chunkOf(chunk, encoding));
            }
            this._schedule();
            return !state.ended;
        }

        unshift(chunk) {
            this._readableState.buffer.unshift(chunk);
        }

        setEncoding(encoding) {
            this._readableState.encoding = encoding;
            return this;
        }

        on(name, listener) {
            super.on(name, listener);
            if (name === "data" && this._readableState.flowing !== false) {
                this.resume();
            }
            return this;
        }

        resume() {
            this._readableState.flowing = true;
            this._schedule();
            return this;
        }

        pause() {
            this._readableState.flowing = false;
            return this;
        }

        isPaused() {
            return this._readableState.flowing === false;
        }

        read() {
            const state = this._readableState;
            const chunk = state.buffer.length > 0 ? this._decoded(state.buffer.shift()) : null;
            this._schedule();
            return chunk;
        }

        _decoded(chunk) {
            const encoding = this._readableState.encoding;
            return encoding !== null && typeof chunk !== "string" && chunk instanceof Uint8Array
                ? Buffer.from(chunk).toString(encoding) : chunk;
        }

        _schedule() {
            const state = this._readableState;
            if (state.scheduled || this.destroyed) {
                return;
            }
            state.scheduled = true;
            later(() => {
                state.scheduled = false;
                this._flow();
            });
        }

        _flow() {
            const state = this._readableState;
            while (state.flowing && state.buffer.length > 0 && !this.destroyed) {
                this.emit("data", this._decoded(state.buffer.shift()));
            }
            if (!this.destroyed && state.ended && state.buffer.length === 0 && !state.endEmitted
                && (state.flowing || this.listenerCount("readable") > 0)) {
                state.endEmitted = true;
                this.emit("end");
                this._autoClose();
            } else if (!state.ended && state.buffer.length === 0) {
                this._read();
            }
            if (!state.flowing && state.buffer.length > 0) {
                this.emit("readable");
            }
        }

        _autoClose() {
            later(() => this.emit("close"));
        }

        pipe(destination, options = {}) {
            this.on("data", (chunk) => destination.write(chunk));
            if (options.end !== false) {
                this.once("end", () => destination.end());
            }
            this.once("error", (error) => destination.destroy(error));
            destination.emit("pipe", this);
            return destination;
        }

        unpipe() {
            this.removeAllListeners("data");
            return this;
        }

        destroy(error) {
            if (this.destroyed) {
                return this;
            }
            this.destroyed = true;
            const finish = (failure) => later(() => {
                if (failure) {
                    this.emit("error", failure);
                }
                this.emit("close");
            });
            if (typeof this._destroy === "function") {
                this._destroy(error || null, finish);
            } else {
                finish(error);
            }
            return this;
        }

        async *[Symbol.asyncIterator]() {
            const chunks = [];
            let wake = null;
            let failure = null;
            let ended = false;
            const notify = () => {
                if (wake !== null) {
                    wake();
                    wake = null;
                }
            };
            this.on("data", (chunk) => { chunks.push(chunk); notify(); });
            this.once("end", () => { ended = true; notify(); });
            this.once("error", (error) => { failure = error; notify(); });
            for (;;) {
                if (chunks.length > 0) {
                    yield chunks.shift();
                } else if (failure !== null) {
                    throw failure;
                } else if (ended) {
                    return;
                } else {
                    await new Promise((resolve) => { wake = resolve; });
                }
            }
        }
    }

    // Writes reach _write one at a time, in order; 'finish' follows end() once they all did (and
    // _final, when there is one).
    const WRITABLE_METHODS = ["write", "writev", "final", "destroy"];

    function writableState() {
        return { queue: [], writing: false, ending: false, finished: false, endCallbacks: [] };
    }

    function installWritableOptions(stream, options) {
        for (const name of WRITABLE_METHODS) {
            if (typeof options[name] === "function") {
                stream[`_${name}`] = options[name];
            }
        }
    }

    const writableMethods = {
        write(chunk, encoding, callback) {
            if (typeof encoding === "function") {
                callback = encoding;
                encoding = undefined;
            }
            const state = this._writableState;
            if (state.ending) {
                const error = new Error("write after end");
                error.code = "ERR_STREAM_WRITE_AFTER_END";
                later(() => {
                    if (callback) callback(error);
                    this.emit("error", error);
                });
                return false;
            }
            state.queue.push({ chunk: chunkOf(chunk, encoding), encoding: encoding || "buffer", callback });
            this._drainQueue();
            return true;
        },

        end(chunk, encoding, callback) {
            if (typeof chunk === "function") {
                callback = chunk;
                chunk = undefined;
            } else if (typeof encoding === "function") {
                callback = encoding;
                encoding = undefined;
            }
            if (chunk !== undefined && chunk !== null) {
                this.write(chunk, encoding);
            }
            const state = this._writableState;
            if (callback) {
                state.endCallbacks.push(callback);
            }
            state.ending = true;
            this._drainQueue();
            return this;
        },

        get writable() {
            return !this.destroyed && !this._writableState.ending;
        },

        get writableFinished() {
            return this._writableState.finished;
        },

        _drainQueue() {
            const state = this._writableState;
            if (state.writing || this.destroyed) {
                return;
            }
            if (state.queue.length === 0) {
                if (state.ending && !state.finished) {
                    state.writing = true;
                    const finish = (error) => {
                        state.writing = false;
                        if (error) {
                            this._fail(error);
                            return;
                        }
                        state.finished = true;
                        for (const callback of state.endCallbacks) callback();
                        this.emit("finish");
                        this._afterFinish();
                    };
                    later(() => (typeof this._final === "function" ? this._final(finish) : finish()));
                }
                return;
            }
            const { chunk, encoding, callback } = state.queue.shift();
            state.writing = true;
            later(() => this._write(chunk, encoding, (error) => {
                state.writing = false;
                if (callback) callback(error || null);
                if (error) {
                    this._fail(error);
                    return;
                }
                this._drainQueue();
            }));
        },

        _fail(error) {
            this.destroyed = true;
            this.emit("error", error);
            later(() => this.emit("close"));
        },

        _afterFinish() {
            later(() => this.emit("close"));
        },
    };

    class Writable extends EventEmitter {
        constructor(options = {}) {
            super();
            this._writableState = writableState();
            this.destroyed = false;
            installWritableOptions(this, options);
        }

        _write(chunk, encoding, callback) {
            callback(new Error("The _write() method is not implemented"));
        }

        destroy(error) {
            if (!this.destroyed) {
                this.destroyed = true;
                later(() => {
                    if (error) this.emit("error", error);
                    this.emit("close");
                });
            }
            return this;
        }
    }
    // The writable side's methods, on a class that does not define them itself.
    function mixWritable(target) {
        const descriptors = Object.getOwnPropertyDescriptors(writableMethods);
        for (const name of Object.keys(descriptors)) {
            if (!Object.hasOwn(target.prototype, name)) {
                Object.defineProperty(target.prototype, name, { ...descriptors[name], enumerable: false });
            }
        }
    }
    mixWritable(Writable);

    class Duplex extends Readable {
        constructor(options = {}) {
            super(options);
            this._writableState = writableState();
            installWritableOptions(this, options);
        }

        _write(chunk, encoding, callback) {
            callback(new Error("The _write() method is not implemented"));
        }

        _autoClose() {
            if (this._writableState.finished) {
                later(() => this.emit("close"));
            }
        }

        _afterFinish() {
            if (this._readableState.endEmitted) {
                later(() => this.emit("close"));
            }
        }
    }
    mixWritable(Duplex);

    class Transform extends Duplex {
        constructor(options = {}) {
            super(options);
            if (typeof options.transform === "function") {
                this._transform = options.transform;
            }
            if (typeof options.flush === "function") {
                this._flush = options.flush;
            }
        }

        _transform(chunk, encoding, callback) {
            callback(new Error("The _transform() method is not implemented"));
        }

        _write(chunk, encoding, callback) {
            this._transform(chunk, encoding, (error, data) => {
                if (!error && data !== undefined && data !== null) {
                    this.push(data);
                }
                callback(error);
            });
        }

        _final(callback) {
            const end = (error, data) => {
                if (!error && data !== undefined && data !== null) {
                    this.push(data);
                }
                if (!error) {
                    this.push(null);
                }
                callback(error);
            };
            if (typeof this._flush === "function") {
                this._flush(end);
            } else {
                end();
            }
        }
    }

    class PassThrough extends Transform {
        _transform(chunk, encoding, callback) {
            callback(null, chunk);
        }
    }

    function finished(stream, callback) {
        let done = false;
        const once = (error) => {
            if (!done) {
                done = true;
                callback(error);
            }
        };
        stream.once("error", once);
        stream.once(stream instanceof Writable || stream instanceof Duplex ? "finish" : "end", () => once());
        if (stream instanceof Readable && !(stream instanceof Duplex)) {
            stream.once("end", () => once());
        }
        return () => {};
    }

    function pipeline(...streams) {
        const callback = typeof streams[streams.length - 1] === "function" ? streams.pop() : () => {};
        for (let i = 0; i + 1 < streams.length; i++) {
            streams[i].pipe(streams[i + 1]);
        }
        const last = streams[streams.length - 1];
        let done = false;
        const end = (error) => {
            if (!done) {
                done = true;
                callback(error);
            }
        };
        for (const stream of streams) {
            stream.once("error", end);
        }
        finished(last, end);
        return last;
    }

    const promises = {
        pipeline: (...streams) => new Promise((resolve, reject) => pipeline(...streams, (error) => (error ? reject(error) : resolve()))),
        finished: (stream) => new Promise((resolve, reject) => finished(stream, (error) => (error ? reject(error) : resolve()))),
    };

    const stream = Object.freeze({
        EventEmitter, Readable, Writable, Duplex, Transform, PassThrough, Stream: Readable, pipeline, finished, promises,
    });
    return { stream };
})
