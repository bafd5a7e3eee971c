// A budget for the memory behind ArrayBuffers, evaluated before the prelude and any plugin code.
//
// V8's heap limit (JS_HEAP_LIMIT_MB) does not count ArrayBuffer backing stores, which live outside
// the heap: without this, a plugin could keep gigabytes in typed arrays and get its worker killed by
// the kernel. Every way plugin code can make a backing store goes through a constructor or method
// wrapped here, which counts the bytes when they are allocated; a FinalizationRegistry gives them
// back once the buffer is collected (after the script that made it garbage, so garbage of the
// running script still counts). The bytes held, in KiB, are kept in `control[heldSlot]`, which the
// runtime reads to run `collect()` (V8's `gc`, which this takes off the global object) once they pass
// half the budget. An allocation past the budget throws a RangeError and sets `control[refusedSlot]`:
// the runtime then collects garbage, asks `stillOver()` in its next script, and discards the isolate when what the plugin holds plus what it asked for is still
// past the budget.
//
//     (memory)(limitBytes) -> {report(control, refusedSlot, heldSlot), collect(compact), stillOver(),
//                              uncountedSharedBuffer(bytes)}
//
// The original constructors stay in this closure only: each wrapper takes the original's place as
// the global, as its prototype's `constructor` and as the `Symbol.species` that built-in methods
// (slice, map, subarray...) construct their results with. WebAssembly (whose Memory is another way
// to allocate outside the heap) is removed: plugins cannot load .wasm files here anyway.
(function (limitBytes) {
    "use strict";

    const global = globalThis;
    const construct = Reflect.construct;
    const apply = Reflect.apply;
    const defineProperty = Object.defineProperty;
    const getOwnPropertyNames = Object.getOwnPropertyNames;
    const getOwnPropertyDescriptor = Object.getOwnPropertyDescriptor;
    const getPrototypeOf = Object.getPrototypeOf;
    const setPrototypeOf = Object.setPrototypeOf;
    const NativeRangeError = RangeError;
    const NativeTypeError = TypeError;
    const registerIn = FinalizationRegistry.prototype.register;
    const byteLengthOf = getOwnPropertyDescriptor(ArrayBuffer.prototype, "byteLength").get;
    const sharedByteLengthOf = getOwnPropertyDescriptor(SharedArrayBuffer.prototype, "byteLength").get;
    const viewBufferOf = getOwnPropertyDescriptor(getPrototypeOf(Uint8Array.prototype), "buffer").get;
    const OriginalArrayBuffer = ArrayBuffer;
    const OriginalSharedArrayBuffer = SharedArrayBuffer;
    const collectGarbage = typeof global.gc === "function" ? global.gc : () => {};
    global.gc = undefined; // V8 defines it writable but not configurable

    let heldBytes = 0;
    let refusedBytes = 0;
    let control = [];
    let refusedSlot = 0;
    let heldSlot = 0;

    function setHeld(bytes) {
        heldBytes = bytes;
        control[heldSlot] = Math.ceil(bytes / 1024);  // never less than held: the runtime acts past half the budget
    }
    const released = new FinalizationRegistry((bytes) => {
        setHeld(heldBytes - bytes);
    });

    function toBytes(value) {
        const number = +value;
        return number > 0 ? number : 0;
    }

    /** Count `bytes` about to be allocated; refuse them past the budget. */
    function charge(bytes) {
        if (heldBytes + bytes > limitBytes) {
            refusedBytes = bytes;
            control[refusedSlot] = 1;
            throw new NativeRangeError(
                `Array buffer allocation failed: the plugin would hold more than ${limitBytes / 1048576} MB `
                + "in ArrayBuffers (JS_ARRAY_BUFFER_LIMIT_MB)",
            );
        }
        setHeld(heldBytes + bytes);
    }

    /** Count a backing store that was just allocated (size known only afterwards). */
    function track(buffer, bytes) {
        if (bytes > 0) {
            apply(registerIn, released, [buffer, bytes]);
        }
    }

    /** Count a buffer allocated already; past the budget it is dropped (garbage) and refused. */
    function chargeAfter(buffer, bytes) {
        charge(bytes);
        track(buffer, bytes);
    }

    // The bytes behind a buffer made by one of the built-in methods below.
    function storeBytes(buffer) {
        try {
            return apply(byteLengthOf, buffer, []);
        } catch {
            return apply(sharedByteLengthOf, buffer, []);
        }
    }

    function replace(name, Original, Wrapper) {
        defineProperty(Wrapper, "prototype", { value: Original.prototype });
        defineProperty(Original.prototype, "constructor", {
            value: Wrapper, writable: true, enumerable: false, configurable: true,
        });
        defineProperty(Wrapper, "name", { value: name });
        defineProperty(Wrapper, "length", { value: Original.length });
        for (const key of getOwnPropertyNames(Original)) {
            if (key !== "prototype" && key !== "name" && key !== "length") {
                defineProperty(Wrapper, key, getOwnPropertyDescriptor(Original, key));
            }
        }
        defineProperty(global, name, {
            value: Wrapper, writable: true, enumerable: false, configurable: true,
        });
    }

    // ------------------------------------------------------------------ ArrayBuffer, SharedArrayBuffer

    function wrapBuffer(name, Original) {
        const Wrapper = function (length, options) {
            if (new.target === undefined) {
                throw new NativeTypeError(`Constructor ${name} requires 'new'`);
            }
            // A resizable buffer counts at its maximum size: it may grow there without a constructor.
            const maximum = options !== null && typeof options === "object" ? options.maxByteLength : undefined;
            const bytes = toBytes(maximum === undefined ? length : maximum);
            charge(bytes);
            let buffer;
            try {
                buffer = construct(Original, arguments, new.target);
            } catch (error) {
                setHeld(heldBytes - bytes);
                throw error;
            }
            track(buffer, bytes);
            return buffer;
        };
        replace(name, Original, Wrapper);
        defineProperty(Wrapper, Symbol.species, { get() { return this; }, configurable: true });
        return Wrapper;
    }

    wrapBuffer("ArrayBuffer", OriginalArrayBuffer);
    wrapBuffer("SharedArrayBuffer", OriginalSharedArrayBuffer);

    // transfer() moves the contents into a new backing store of any size, without a constructor.
    for (const method of ["transfer", "transferToFixedLength"]) {
        const original = OriginalArrayBuffer.prototype[method];
        if (typeof original !== "function") continue;
        defineProperty(OriginalArrayBuffer.prototype, method, {
            value: {
                [method](newLength) {
                    const bytes = newLength === undefined ? apply(byteLengthOf, this, []) : toBytes(newLength);
                    charge(bytes);
                    let moved;
                    try {
                        moved = apply(original, this, arguments);
                    } catch (error) {
                        setHeld(heldBytes - bytes);
                        throw error;
                    }
                    track(moved, bytes);
                    return moved;
                },
            }[method],
            writable: true, enumerable: false, configurable: true,
        });
    }

    // ------------------------------------------------------------------ typed arrays

    /** Replace `owner[method]` (the original taken from `source`) by one that counts the typed array it
     * makes; called on `self`, or on `this` when `self` is undefined. */
    function countMade(owner, methods, source, self) {
        for (const method of methods) {
            const original = source[method];
            if (typeof original !== "function") continue;
            defineProperty(owner, method, {
                value: {
                    [method]() {
                        const made = apply(original, self === undefined ? this : self, arguments);
                        const buffer = apply(viewBufferOf, made, []);
                        chargeAfter(buffer, storeBytes(buffer));
                        return made;
                    },
                }[method],
                writable: true, enumerable: false, configurable: true,
            });
        }
    }

    const TypedArray = getPrototypeOf(Uint8Array);
    const TYPED_ARRAYS = [
        "Int8Array", "Uint8Array", "Uint8ClampedArray", "Int16Array", "Uint16Array", "Int32Array",
        "Uint32Array", "Float16Array", "Float32Array", "Float64Array", "BigInt64Array", "BigUint64Array",
    ];

    for (const name of TYPED_ARRAYS) {
        const Original = global[name];
        if (typeof Original !== "function") continue;
        const elementBytes = Original.BYTES_PER_ELEMENT;
        const Wrapper = function (source) {
            if (new.target === undefined) {
                throw new NativeTypeError(`Constructor ${name} requires 'new'`);
            }
            // A view of an existing buffer allocates nothing. A length, or the length of an array,
            // typed array or array-like to copy, is counted before allocating; a copy of an iterable
            // without a length (whose values V8 first gathers on its heap) is counted once made.
            let bytes = 0;
            let counted = true;
            if (source === undefined || source === null || typeof source !== "object") {
                bytes = toBytes(source) * elementBytes;
            } else if (!(source instanceof OriginalArrayBuffer || source instanceof OriginalSharedArrayBuffer)) {
                const length = source.length;
                if (typeof length === "number") {
                    bytes = toBytes(length) * elementBytes;
                } else {
                    counted = false;
                }
            }
            if (bytes > 0) charge(bytes);
            let view;
            try {
                view = construct(Original, arguments, new.target);
            } catch (error) {
                setHeld(heldBytes - bytes);
                throw error;
            }
            const buffer = apply(viewBufferOf, view, []);
            if (!counted) {
                chargeAfter(buffer, storeBytes(buffer));
            } else if (bytes > 0) {
                track(buffer, bytes);
            }
            return view;
        };
        replace(name, Original, Wrapper);
        setPrototypeOf(Wrapper, TypedArray);

        // Built-ins that make a typed array of the same type without asking `Symbol.species`.
        countMade(Wrapper, ["fromBase64", "fromHex"], Original, Original);
    }
    countMade(TypedArray.prototype, ["toReversed", "toSorted", "with"], TypedArray.prototype, undefined);

    delete global.WebAssembly;

    return {
        report(sharedControl, refused, held) {
            control = sharedControl;
            refusedSlot = refused;
            heldSlot = held;
        },
        /** The runtime's own buffers (shared with Python), outside the plugin's budget. */
        uncountedSharedBuffer(bytes) {
            return new OriginalSharedArrayBuffer(bytes);
        },
        /** A full collection; `compact` also gives the isolate's free pages back (as at memory pressure). */
        collect(compact) {
            if (compact) {
                collectGarbage({ type: "major", flavor: "last-resort" });
            } else {
                collectGarbage();
            }
        },
        /** After a collection (and the script after it, when the released buffers are counted): whether the last refused allocation would still not fit. */
        stillOver() {
            const over = heldBytes + refusedBytes > limitBytes;
            refusedBytes = 0;
            return over;
        },
    };
})
