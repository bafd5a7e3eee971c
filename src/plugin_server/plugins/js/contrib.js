// `require('@posthog/plugin-contrib')` for plugins, written for this server: `createBuffer`.
//
// This file is one JavaScript expression, a function that prelude.js calls once per isolate:
//
//     (contrib.js)({setTimeout, clearTimeout, reportError})  ->  the module
//
//   setTimeout, clearTimeout  the plugin's timers
//   reportError(error)        logs an error nobody awaits (a flush started by a timer or by add)
//
// createBuffer({limit = 1000, timeoutSeconds = 10, onFlush}) returns a buffer of objects, each
// weighing some points (1 by default; export plugins pass the size of the event's JSON):
//   add(object, points)  if the buffer holds something and the new object would take it over
//                        `limit`, the buffer is flushed first; the object is added, and the buffer
//                        is flushed when its points reach `limit`, else a flush is scheduled
//                        `timeoutSeconds` after the first object added since the last flush.
//   flush()              hands what the buffer holds to `onFlush(batch, points)` and empties it;
//                        resolves when onFlush's promise does (at once when the buffer is empty).
// The buffer's state is readable as in the original: _buffer, _points, _limit, _timeoutSeconds,
// _timeout and _lastFlushTriggered.
(function (host) {
    "use strict";

    const { setTimeout, clearTimeout, reportError } = host;
    const NativePromise = Promise;

    function createBuffer(options = {}) {
        const buffer = {
            _buffer: [],
            _points: 0,
            _timeout: null,
            _lastFlushTriggered: new Date(),
            _limit: options.limit || 1000,
            _timeoutSeconds: options.timeoutSeconds || 10,
            _onFlush: options.onFlush,

            add(object, points = 1) {
                if (buffer._points > 0 && buffer._points + points > buffer._limit) {
                    flushInBackground();
                }
                buffer._buffer.push(object);
                buffer._points += points;
                if (buffer._points >= buffer._limit) {
                    flushInBackground();
                } else if (buffer._timeout === null) {
                    buffer._timeout = setTimeout(flushInBackground, buffer._timeoutSeconds * 1000);
                }
            },

            async flush() {
                if (buffer._timeout !== null) {
                    clearTimeout(buffer._timeout);
                    buffer._timeout = null;
                }
                if (buffer._buffer.length === 0 && buffer._points === 0) {
                    return;
                }
                const batch = buffer._buffer;
                const points = buffer._points;
                buffer._buffer = [];
                buffer._points = 0;
                buffer._lastFlushTriggered = new Date();
                if (typeof buffer._onFlush === "function") {
                    await buffer._onFlush(batch, points);
                }
            },
        };

        function flushInBackground() {
            NativePromise.resolve(buffer.flush()).catch(reportError);
        }

        return buffer;
    }

    return Object.freeze({ createBuffer });
})
