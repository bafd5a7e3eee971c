"""require('stream') and require('generic-pool') in plugins (stream.js, pool.js): the way the export
apps use them (a PassThrough piped into a writable that uploads on finish; a pool of one connection
acquired and released around each query), and the semantics they rely on."""

from __future__ import annotations

from typing import Any

from tests.js_support import body_outcome


async def outcome(body: str) -> Any:
    return await body_outcome(body)


async def test_a_pass_through_piped_into_an_uploading_writable() -> None:
    out = await outcome(
        """
        const { PassThrough, Writable } = require('stream')
        const uploaded = []
        const events = []
        const upload = new Writable({
            write(chunk, encoding, callback) { uploaded.push(Buffer.from(chunk).toString()); callback() },
            final(callback) { events.push('final'); callback() },
        })
        const data = new PassThrough()
        data.push('uuid,event\\n')
        data.push(Buffer.from('1,$pageview'))
        data.push(null)
        await new Promise((resolve, reject) => {
            data.pipe(upload).on('error', reject).on('finish', () => { events.push('finish'); resolve(true) })
        })
        out = { uploaded: uploaded.join(''), events }
        """
    )
    assert out == {"uploaded": "uuid,event\n1,$pageview", "events": ["final", "finish"]}


async def test_a_failing_write_is_an_error_event() -> None:
    out = await outcome(
        """
        const { PassThrough, Writable } = require('node:stream')
        const failing = new Writable({ write(chunk, encoding, callback) { callback(new Error('bucket gone')) } })
        const data = new PassThrough()
        data.end('row')
        out = await new Promise((resolve) => {
            data.pipe(failing).on('error', (error) => resolve(error.message)).on('finish', () => resolve('finished'))
        })
        """
    )
    assert out == "bucket gone"


async def test_readable_events_transforms_and_async_iteration() -> None:
    out = await outcome(
        """
        const { Readable, Transform, pipeline, EventEmitter } = require('stream')
        const upper = new Transform({
            transform(chunk, encoding, callback) { callback(null, String(chunk).toUpperCase()) },
            flush(callback) { callback(null, '!') },
        })
        const parts = []
        for await (const chunk of Readable.from(['a', 'b']).pipe(upper)) parts.push(String(chunk))
        const emitter = new EventEmitter()
        const heard = []
        emitter.once('x', (value) => heard.push(value))
        emitter.emit('x', 1)
        emitter.emit('x', 2)
        let unhandled
        try { emitter.emit('error', new Error('nobody listens')) } catch (error) { unhandled = error.message }
        const piped = await new Promise((resolve) => pipeline(Readable.from(['z']), new Transform({
            transform(chunk, encoding, callback) { callback(null, chunk) },
        }), (error) => resolve(error === undefined ? 'ok' : error.message)))
        out = { parts: parts.join(''), heard, unhandled, piped }
        """
    )
    assert out == {"parts": "AB!", "heard": [1], "unhandled": "nobody listens", "piped": "ok"}


async def test_a_pool_of_one_serves_acquirers_in_turn() -> None:
    out = await outcome(
        """
        const { createPool } = require('generic-pool')
        const log = []
        let made = 0
        const pool = createPool({
            create: async () => { log.push('create'); return { id: ++made } },
            destroy: async (connection) => { log.push(`destroy ${connection.id}`) },
        }, { min: 1, max: 1, autostart: true, fifo: true })
        await pool.ready()
        const query = async (name) => {
            const connection = await pool.acquire()
            log.push(`${name} on ${connection.id}`)
            await new Promise((resolve) => setTimeout(resolve, 5))
            await pool.release(connection)
        }
        await Promise.all([query('first'), query('second')])
        const sizes = [pool.size, pool.available, pool.borrowed, pool.pending]
        let refused
        try { await pool.release({ id: 99 }) } catch (error) { refused = error.message }
        await pool.drain()
        await pool.clear()
        let draining
        try { await pool.acquire() } catch (error) { draining = error.message }
        out = { log, sizes, refused, draining }
        """
    )
    assert out == {
        "log": ["create", "first on 1", "second on 1", "destroy 1"],
        "sizes": [1, 1, 0, 0],
        "refused": "Resource not currently part of this pool",
        "draining": "pool is draining and cannot accept work",
    }


async def test_a_pool_grows_to_max_times_out_and_reports_failed_creates() -> None:
    out = await outcome(
        """
        const genericPool = require('generic-pool')
        let made = 0
        const pool = genericPool.createPool({
            create: async () => ++made,
            destroy: async () => {},
        }, { max: 2, acquireTimeoutMillis: 20 })
        const [a, b] = await Promise.all([pool.acquire(), pool.acquire()])
        let timedOut
        try { await pool.acquire() } catch (error) { timedOut = `${error.name}: ${error.message}` }
        const used = await pool.use(async (resource) => resource * 10).catch((error) => error.name)
        await pool.release(a)
        const reused = await pool.use(async (resource) => resource * 10)
        const failing = genericPool.createPool({ create: async () => { throw new Error('no warehouse') }, destroy: async () => {} })
        const reported = []
        failing.on('factoryCreateError', (error) => reported.push(error.message))
        const failed = await failing.acquire().catch((error) => error.message)
        out = { made, timedOut, used, reused, b, failed, reported }
        """
    )
    assert out == {
        "made": 2,
        "timedOut": "TimeoutError: ResourceRequest timed out",
        "used": "TimeoutError",
        "reused": 10,
        "b": 2,
        "failed": "no warehouse",
        "reported": ["no warehouse"],
    }
