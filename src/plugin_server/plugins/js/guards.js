// Run-time half of the loop and await guards that transpile.py injects into plugin code.
//
// This file is one JavaScript expression. Evaluating it yields `createPluginGuards(options)`, which
// returns a frozen object { loopStart, loopCheck, asyncGuard, TimeoutError } for one plugin isolate.
// The runtime passes that object to the transpiled module as the parameter named by
// `Transpiler.guards_name` (see transpile.py for the whole contract).
//
// options:
//   timeoutMs     TASK_TIMEOUT in milliseconds (required): how long a loop may run and how long an
//                 awaited promise may stay pending.
//   setTimeout    optional `(callback, delayMs) => any` timer; by default the isolate's own
//                 setTimeout as it was when this expression was evaluated. At most one timer is
//                 pending per guards object; it is never cleared, only let run, and its delay is at
//                 least 1 ms (mini-racer's own setTimeout throws a TypeError for a delay <= 0, and
//                 it looks up the global `__timer_manager` on every call, which plugin code can
//                 replace: a runtime that has a host timer should pass it here).
//
// Everything the guards rely on (Date.now, Promise, Promise.prototype.then, the timer functions) is
// captured when this expression is evaluated, so evaluate it before any plugin code runs: a plugin
// that later replaces Date.now or setTimeout does not weaken its guards.
(function () {
    "use strict";

    const dateNow = Date.now;
    const NativePromise = Promise;
    const promiseThen = Promise.prototype.then;
    const nativeResolve = Promise.resolve;
    const apply = Reflect.apply;
    const promiseResolve = (value) => apply(nativeResolve, NativePromise, [value]);
    const freeze = Object.freeze;
    const NativeError = Error;
    const max = Math.max;
    const globalSetTimeout = typeof setTimeout === "function" ? setTimeout : undefined;

    // A loop reads the clock once per CHECK_EVERY iterations, and on the first iteration after any
    // guarded await (a loop that awaits is slow per iteration, so counting alone would be late).
    const CHECK_EVERY = 1024;

    function secondsText(timeoutMs) {
        const seconds = timeoutMs / 1000;
        return `${seconds} second${seconds === 1 ? "" : "s"}`;
    }

    return function createPluginGuards(options) {
        const timeoutMs = options && options.timeoutMs;
        if (typeof timeoutMs !== "number" || !(timeoutMs > 0)) {
            throw new TypeError("createPluginGuards: options.timeoutMs must be a positive number");
        }
        const startTimer = options.setTimeout || globalSetTimeout;
        if (typeof startTimer !== "function") {
            throw new TypeError("createPluginGuards: no setTimeout available");
        }
        const loopMessagePrefix = `Script execution timed out after looping for ${secondsText(timeoutMs)} on line `;
        const promiseMessage = `Script execution timed out after promise waited for ${secondsText(timeoutMs)}`;

        class TimeoutError extends NativeError {
            constructor(message, caller) {
                super(message);
                this.name = "TimeoutError";
                this.caller = caller;
            }
        }

        // Bumped by every guarded await; a loop that sees it change reads the clock.
        let awaits = 0;

        function loopStart() {
            return { start: dateNow(), n: 0, awaits };
        }

        function loopCheck(state, line, column) {
            if (++state.n < CHECK_EVERY && state.awaits === awaits) {
                return;
            }
            state.n = 0;
            state.awaits = awaits;
            if (dateNow() - state.start > timeoutMs) {
                throw new NativeError(`${loopMessagePrefix}${line}:${column}`);
            }
        }

        // Pending guarded promises, oldest first. Every entry waits the same timeoutMs, so deadlines
        // never decrease along the queue and one timer (for the oldest live entry) serves them all.
        let queue = [];
        let head = 0;
        let armed = false;

        function dropSettled() {
            while (head < queue.length && queue[head].reject === undefined) {
                queue[head++] = undefined;
            }
            if (head === queue.length) {
                queue = [];
                head = 0;
            } else if (head > 1024 && head * 2 > queue.length) {
                queue = queue.slice(head);
                head = 0;
            }
        }

        function arm() {
            // At least 1 ms: mini-racer's setTimeout throws a TypeError for a delay <= 0.
            armed = true;
            startTimer(onTimer, max(1, queue[head].deadline - dateNow()));
        }

        function onTimer() {
            armed = false;
            const now = dateNow();
            dropSettled();
            while (head < queue.length && queue[head].deadline <= now) {
                const entry = queue[head];
                queue[head++] = undefined;
                const reject = entry.reject;
                if (reject !== undefined) {
                    entry.reject = undefined;
                    reject(new TimeoutError(promiseMessage, entry.caller));
                }
                dropSettled();
            }
            if (head < queue.length) {
                arm();
            }
        }

        // `await x` becomes `await asyncGuard(x, "<source text of x's callee>")`. The promise of x is
        // not cancelled; only the wait for it ends. Values that are not thenables pass through.
        function asyncGuard(value, caller) {
            if (value === null || (typeof value !== "object" && typeof value !== "function")) {
                return value;
            }
            if (typeof value.then !== "function") {
                return value;
            }
            awaits++;
            return new NativePromise((resolve, reject) => {
                const entry = { deadline: dateNow() + timeoutMs, reject, caller };
                dropSettled();
                queue.push(entry);
                if (!armed) {
                    arm();
                }
                apply(promiseThen, promiseResolve(value), [
                    (result) => {
                        entry.reject = undefined;
                        resolve(result);
                    },
                    (error) => {
                        entry.reject = undefined;
                        reject(error);
                    },
                ]);
            });
        }

        return freeze({ loopStart, loopCheck, asyncGuard, TimeoutError });
    };
})()
