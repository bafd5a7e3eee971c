// `require('generic-pool')` for plugins, written for this server: generic-pool 3's createPool.
//
// This file is one JavaScript expression, a function that prelude.js calls once per isolate:
//
//     (pool.js)(kit, modules)  ->  {"generic-pool": the module}
//
//   kit.setTimeout, kit.clearTimeout   the plugin's timers (acquireTimeoutMillis)
//   modules.stream.EventEmitter       pools emit factoryCreateError / factoryDestroyError
//
// createPool(factory, options): factory {create() -> Promise<resource>, destroy(resource) -> Promise,
// validate(resource) -> Promise<boolean>}; options max (1), min (0, at most max), autostart (true),
// fifo (true), priorityRange (1), acquireTimeoutMillis, maxWaitingClients, testOnBorrow. The pool:
// acquire(priority), release, destroy, isBorrowedResource, drain, clear, use(fn), start, ready, and
// size, available, borrowed, pending, max, min, spareResourceCapacity. Idle eviction is not done.
(function (kit, modules) {
    "use strict";

    const { setTimeout, clearTimeout } = kit;
    const { EventEmitter } = modules.stream;

    class TimeoutError extends Error {
        constructor(message) {
            super(message);
            this.name = "TimeoutError";
        }
    }

    function positive(value, fallback) {
        const number = parseInt(value, 10);
        return Number.isFinite(number) && number >= 0 ? number : fallback;
    }

    class Pool extends EventEmitter {
        #factory;
        #options;
        #available = [];  // idle resources
        #borrowed = new Set();
        #waiting = [];  // {resolve, reject, priority, timer}
        #creating = 0;
        #draining = false;
        #started = false;
        #ready;

        constructor(factory, options = {}) {
            super();
            if (typeof factory.create !== "function" || typeof factory.destroy !== "function") {
                throw new TypeError("factory.create and factory.destroy must be functions");
            }
            const max = positive(options.max, 1) || 1;
            this.#factory = factory;
            this.#options = {
                max,
                min: Math.min(positive(options.min, 0), max),
                fifo: options.fifo !== false,
                acquireTimeoutMillis: positive(options.acquireTimeoutMillis, 0),
                maxWaitingClients: options.maxWaitingClients === undefined ? Infinity : positive(options.maxWaitingClients, Infinity),
                testOnBorrow: !!options.testOnBorrow && typeof factory.validate === "function",
            };
            this.#ready = Promise.resolve();
            if (options.autostart !== false) {
                this.start();
            }
        }

        get size() { return this.#available.length + this.#borrowed.size + this.#creating; }
        get available() { return this.#available.length; }
        get borrowed() { return this.#borrowed.size; }
        get pending() { return this.#waiting.length; }
        get max() { return this.#options.max; }
        get min() { return this.#options.min; }
        get spareResourceCapacity() { return this.#options.max - this.size; }

        start() {
            if (!this.#started) {
                this.#started = true;
                const creations = [];
                for (let i = this.size; i < this.#options.min; i++) {
                    creations.push(this.#create());
                }
                this.#ready = Promise.all(creations).then(() => undefined);
            }
        }

        ready() {
            return this.#ready;
        }

        acquire(priority) {
            if (this.#draining) {
                return Promise.reject(new Error("pool is draining and cannot accept work"));
            }
            this.start();
            if (this.#waiting.length >= this.#options.maxWaitingClients) {
                return Promise.reject(new Error("max waitingClients count exceeded"));
            }
            return new Promise((resolve, reject) => {
                const request = { resolve, reject, priority: Number(priority) || 0, timer: null };
                if (this.#options.acquireTimeoutMillis > 0) {
                    request.timer = setTimeout(() => {
                        this.#waiting.splice(this.#waiting.indexOf(request), 1);
                        reject(new TimeoutError("ResourceRequest timed out"));
                    }, this.#options.acquireTimeoutMillis);
                }
                let at = this.#waiting.length;
                while (at > 0 && this.#waiting[at - 1].priority > request.priority) at--;
                this.#waiting.splice(at, 0, request);
                this.#dispense();
            });
        }

        async use(fn, priority) {
            const resource = await this.acquire(priority);
            try {
                return await fn(resource);
            } finally {
                await this.release(resource);
            }
        }

        isBorrowedResource(resource) {
            return this.#borrowed.has(resource);
        }

        release(resource) {
            if (!this.#borrowed.delete(resource)) {
                return Promise.reject(new Error("Resource not currently part of this pool"));
            }
            this.#available.push(resource);
            this.#dispense();
            return Promise.resolve();
        }

        destroy(resource) {
            if (!this.#borrowed.delete(resource)) {
                return Promise.reject(new Error("Resource not currently part of this pool"));
            }
            const destroyed = this.#destroy(resource);
            this.#dispense();
            return destroyed;
        }

        async drain() {
            this.#draining = true;
            while (this.#waiting.length > 0 || this.#borrowed.size > 0) {
                await new Promise((resolve) => setTimeout(resolve, 10));
            }
        }

        async clear() {
            await this.#ready;
            const idle = this.#available.splice(0);
            await Promise.all(idle.map((resource) => this.#destroy(resource)));
        }

        async #destroy(resource) {
            try {
                await this.#factory.destroy(resource);
            } catch (error) {
                this.emit("factoryDestroyError", error);
            }
        }

        async #create() {
            this.#creating++;
            try {
                const resource = await this.#factory.create();
                this.#available.push(resource);
            } catch (error) {
                if (this.listenerCount("factoryCreateError") > 0) {
                    this.emit("factoryCreateError", error);
                }
                // like generic-pool: a waiting acquire stays waiting; the next dispense tries again,
                // so a failing create rejects the oldest request instead of spinning.
                const request = this.#waiting.shift();
                if (request !== undefined) {
                    clearTimeout(request.timer);
                    request.reject(error);
                }
            } finally {
                this.#creating--;
            }
            this.#dispense();
        }

        async #lend(request, resource) {
            if (this.#options.testOnBorrow) {
                let valid = false;
                try {
                    valid = await this.#factory.validate(resource);
                } catch (error) {
                    valid = false;
                }
                if (!valid) {
                    this.#borrowed.delete(resource);
                    await this.#destroy(resource);
                    this.#waiting.unshift(request);
                    this.#dispense();
                    return;
                }
            }
            request.resolve(resource);
        }

        #dispense() {
            while (this.#waiting.length > 0 && this.#available.length > 0) {
                const request = this.#waiting.shift();
                clearTimeout(request.timer);
                const resource = this.#options.fifo ? this.#available.shift() : this.#available.pop();
                this.#borrowed.add(resource);
                this.#lend(request, resource);
            }
            const shortfall = Math.min(this.#waiting.length - this.#creating, this.spareResourceCapacity);
            for (let i = 0; i < shortfall; i++) {
                this.#create();
            }
        }
    }

    const module = Object.freeze({
        createPool: (factory, options) => new Pool(factory, options),
        Pool,
        TimeoutError,
    });
    return { "generic-pool": module };
})
