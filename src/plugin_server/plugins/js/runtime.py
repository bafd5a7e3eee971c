"""The JavaScript plugin runtime: each plugin config runs in its own V8 isolate (mini-racer).

Python and the isolate exchange JSON text only (the protocol is described in prelude.js). Python
calls the runtime's `<entry>.run` with a request (a batch of events, a call, answers to earlier
questions) as its `this`, in a cancelable task like `eval_cancelable`'s (entry.py); it returns the
messages the isolate posted meanwhile: meta operations to run (cache, storage, fetch...),
timers to set, results of calls. No Python function is ever handed to V8 (mini-racer's
`wrap_py_function` is not used), which has three benefits:

- a plugin reaches Python only by posting the name of an operation from a fixed list (the meta API
  declared in meta/api.py, fetch, and the hosted modules'), which acts on its own config's meta;
- every exchange is an awaitable that can time out, so the event loop never waits on V8 (a host
  function's answer is a blocking call into the isolate), even when an isolate is stuck in code that
  V8 cannot interrupt (a loop in a promise continuation that the transpiler's guards do not cover):
  such an isolate is closed, which stops it;
- host calls are batched: a batch of events that each await `meta.cache.get` costs a few exchanges,
  not one per event (mini-racer's host functions cost about 0.35 ms per call, one by one).

Time limits: a script that runs longer than TASK_TIMEOUT (plus a grace that lets the transpiler's
guards act first) without entering a new piece of plugin code (an event, a timer callback) is
terminated, and the event it was on fails with a timeout while the others go on. Asynchronous work
has a deadline of TASK_TIMEOUT per event and per call, kept inside the isolate. Memory: an isolate
that reaches its heap limit is closed; the call that hit the limit fails, and the next call builds
a new isolate and runs setupPlugin again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import secrets
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict, Unpack

import httpx
import orjson
from py_mini_racer import JSArray, JSEvalException, JSFunction, JSOOMException, MiniRacer

from plugin_server.ingestion.types import RawEvent
from plugin_server.plugin_api import RetryError
from plugin_server.plugins.events import checked_json_results, copy_event
from plugin_server.plugins.instance import (
    METHODS,
    EventOutcome,
    LoadRequest,
    PluginError,
    PluginTimeout,
    RuntimeServices,
)
from plugin_server.plugins.js.engine import js_source, new_racer
from plugin_server.plugins.js.entry import RunEntry
from plugin_server.plugins.js.hosted import BlockingCalls, HostedError, HostedModule, Operation
from plugin_server.plugins.js.hosted.aws import AwsClients
from plugin_server.plugins.js.hosted.google import GoogleClients
from plugin_server.plugins.js.hosted.pg import PgConnections
from plugin_server.plugins.js.hosted.snowflake import SnowflakeConnections
from plugin_server.plugins.js.modules import JSModule, PluginModules, is_relative, load_modules
from plugin_server.plugins.js.provided import CORE, LIBRARIES, names_not_set_up, needed_files
from plugin_server.plugins.js.timers import DEFAULT_TIMER_LIMITS, TimerBudget, TimerLimits
from plugin_server.plugins.js.transpile import get_transpiler, guards_js, line_map, wrap_module
from plugin_server.plugins.meta.api import HOST_OPERATIONS, LOG_LEVELS, METRIC_METHODS, js_declaration
from plugin_server.plugins.meta.errors import ThrownInJS
from plugin_server.plugins.meta.metrics import declared_metrics, validate_declared
from plugin_server.plugins.meta.network import ConnectGuard, FetchError, fetch_failed, resolve_addresses
from plugin_server.plugins.models import PluginCode

MIB = 1024 * 1024
# A script is terminated this long after TASK_TIMEOUT, so that the transpiler's guards, which stop
# runaway plugin code at TASK_TIMEOUT with a clear error, act first when they can.
WATCHDOG_GRACE_SECONDS = 1.0
# How often a running script's progress is checked.
WATCH_STEP_SECONDS = 0.1
# How many times in a row a script may find the isolate busy (running promise continuations longer
# than the timeout) before the isolate is given up.
MAX_BUSY_WAITS = 3
# Seconds to wait for a terminated isolate to answer again before it is considered stuck.
PROBE_SECONDS = 1.0
# An isolate that ran no script for this long is compacted (a garbage collection that gives its free
# pages back): what its last batch left would otherwise stay in the memory of every idle isolate.
IDLE_COMPACT_SECONDS = 5.0
# A call whose isolate shows no sign of life for TASK_TIMEOUT plus this long is given up.
BACKSTOP_SECONDS = 5.0
# The most JSON a processEvent request carries (unless one event alone is larger): the isolate holds the
# request's text, its events and their results at once, within JS_HEAP_LIMIT_MB, whatever the batch size.
MAX_REQUEST_BYTES = 4 * MIB
# The scheduled tasks a plugin may export (any other runEvery* function is ignored, as in the original).
SCHEDULED_TASKS = ("runEveryMinute", "runEveryHour", "runEveryDay")
# Names a plugin without exports may define at its top level (the original read them from its global).
TOP_LEVEL_NAMES = (
    "setupPlugin",
    "teardownPlugin",
    "processEvent",
    "processEventBatch",
    "onEvent",
    "exportEvents",
    *SCHEDULED_TASKS,
    "jobs",
    "metrics",
)
# What a script returned that the runtime (prelude.js) never returns: plugin code replaced its parts.
BROKEN = "the plugin broke its JavaScript runtime"

RecordError = Callable[[BaseException], Awaitable[None]]

# While a round of timer firings runs (in the isolate's pump task): the seconds its scripts took.
_TIMER_TIME: ContextVar[list[float] | None] = ContextVar("timer_time", default=None)


class JSError(ThrownInJS, PluginError):
    """An error thrown by plugin code: `str()` is its message; `name` and `stack` are JavaScript's."""


class JSRetryError(ThrownInJS, RetryError):
    """A RetryError thrown by plugin code (retried like any RetryError), with its JavaScript stack."""


class JSHeapLimitError(PluginError):
    """The plugin's isolate reached its heap limit and was discarded."""


class _Interrupted(Exception):
    """A script ran too long and was terminated; the isolate is still usable."""


@dataclass(frozen=True)
class MemoryLimits:
    """What one isolate may hold: V8's heap, and the ArrayBuffer memory outside it (memory.js)."""

    heap_mb: float
    array_buffers_mb: float

    @property
    def heap_bytes(self) -> int:
        return int(self.heap_mb * MIB)

    @property
    def array_buffer_bytes(self) -> int:
        return int(self.array_buffers_mb * MIB)


def setup_script(
    entry: str, options: dict[str, Any], array_buffer_bytes: int, required: Collection[str] | None = None
) -> str:
    """The script that installs the ArrayBuffer budget, then the prelude (see prelude.js), with the
    provided modules that a plugin requiring `required` by name needs (None: all; see provided.py)."""
    needed = needed_files(required)
    memory = f"({js_source('memory')})({array_buffer_bytes})"
    core = (js_source(item.file) if item.file in needed else "null" for item in CORE)
    libraries = "[" + ", ".join(js_source(item.file) for item in LIBRARIES if item.file in needed) + "]"
    given = {**options, "notSetUp": names_not_set_up(needed)}
    arguments = ", ".join(
        (
            js_string(entry),
            f"JSON.parse({js_string(_json(given))})",
            _API,
            memory,
            guards_js(),
            f"function () {{ return ({js_source('url')}); }}",  # not parenthesized: V8 compiles it on first use
            js_source("crypto"),
            *core,
            libraries,
        )
    )
    return f"({js_source('prelude')})({arguments})"


def js_string(text: str | bytes) -> str:
    """A JavaScript string literal holding `text` (JSON's string syntax is valid JavaScript)."""
    return orjson.dumps(text.decode() if isinstance(text, bytes) else text).decode()


def js_exception(error: Any) -> Exception:
    """The Python exception for an error thrown in JavaScript ({name, message, stack})."""
    details = error if isinstance(error, dict) else {}
    name = str(details.get("name") or "Error")
    message = str(details.get("message") or "")
    stack = details.get("stack") if isinstance(details.get("stack"), str) else None
    exception: Exception
    if name == "RetryError":
        exception = JSRetryError(name, message, stack)
    elif name == "TimeoutError":
        exception = PluginTimeout(message)
    else:
        exception = JSError(name, message, stack)
    if stack:
        exception.add_note(stack)
    return exception


def _outcome_value(outcome: Any) -> Any:
    """The value of a call's outcome ([1, value]); raises what the plugin threw ([0, error])."""
    if not isinstance(outcome, list) or len(outcome) != 2:
        raise PluginError(f"the JavaScript runtime returned a malformed result: {outcome!r:.200}")
    status, value = outcome
    if status != 1:
        raise js_exception(value)
    return value


def _response(response: httpx.Response) -> dict[str, Any]:
    """What JavaScript makes a fetch Response from."""
    return {
        "status": response.status_code,
        "statusText": response.reason_phrase,
        "url": str(response.url),
        "redirected": bool(response.history),
        "headers": response.headers.multi_items(),
        "body": base64.b64encode(response.content).decode(),
    }


def _request_content(body: Any) -> bytes | None:
    if not isinstance(body, dict):
        return None
    if "base64" in body:
        return base64.b64decode(str(body["base64"]))
    return str(body.get("text", "")).encode()


def _json(value: Any) -> bytes:
    """`value` as JSON; keys that are not text and values JSON has no form for are written as text.
    (orjson's plain path first: the tolerant one costs twice as much on every dict.)"""
    try:
        return orjson.dumps(value)
    except TypeError:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS, default=str)


# The meta API's declaration (meta/api.py), as the prelude's `api` argument.
_API = f"JSON.parse({js_string(_json(js_declaration()))})"


def _copy(error: PluginError) -> PluginError:
    return type(error)(*error.args)


class HostOperations:
    """What a plugin's isolate may ask Python to do: the meta operations of one plugin config, and
    the operations of the modules that do I/O through the host (hosted/), whose connections go
    through `guard` and are closed with the isolate."""

    def __init__(
        self,
        meta: Any,
        http: httpx.AsyncClient,
        *,
        guard: ConnectGuard,
        timeout: float,
        record_error: RecordError | None = None,
    ) -> None:
        self._meta = meta
        self._http = http
        self._record_error = record_error
        blocking = BlockingCalls()  # this isolate's share of the threads for clients that block
        self._modules: tuple[HostedModule, ...] = (
            PgConnections(guard, timeout),
            AwsClients(guard, timeout, blocking),
            GoogleClients(http, timeout),
            SnowflakeConnections(guard, timeout, blocking),
        )
        self._own: dict[str, Operation] = {  # meta/api.py's HAND_SHAPED requests, and fetch
            "posthog.api": self._posthog_api,
            "jobs.run": self._run_job,
            "fetch": self._fetch,
        }
        for module in self._modules:
            self._own.update(module.operations())

    async def close(self) -> None:
        """Close what the plugin's modules opened."""
        for module in self._modules:
            await module.close()

    def operation(self, op: str) -> Operation | None:
        """The coroutine function for an operation name, or None for a name that is not one."""
        own = self._own.get(op)
        if own is not None:
            return own
        path = HOST_OPERATIONS.get(op)
        if path is None:
            return None
        target = self._meta
        for name in path:
            target = getattr(target, name)
        return target  # type: ignore[no-any-return]

    def console(self, level: str, text: str) -> None:
        if level in LOG_LEVELS:
            getattr(self._meta.logger, level)(str(text))

    def metric(self, name: str, kind: str, value: float) -> None:
        """Checked in JavaScript already (declared name, number); the host owns the values."""
        metrics = self._meta.metrics
        if metrics is not None and kind in METRIC_METHODS:
            getattr(metrics[name], METRIC_METHODS[kind])(value)

    def uncaught(self, error: Any) -> None:
        exception = js_exception(error)
        self._meta.logger.plugin_error(f"Uncaught {type(exception).__name__} in a timer: {exception}")

    async def record(self, error: PluginError) -> None:
        """Record an error of the plugin config that no call raises (one of its timers')."""
        if self._record_error is not None:
            await self._record_error(error)
        else:
            self._meta.logger.plugin_error(str(error))

    async def _run_job(self, name: str, payload: Any, how: str, *args: Any) -> None:
        runner = self._meta.jobs[name](payload)
        if how == "now":
            await runner.run_now()
        elif how == "in":
            await runner.run_in(*args)
        elif how == "at":
            await runner.run_at(*args)
        else:
            raise ValueError(f"unknown way to run a job: {how!r}")

    async def _posthog_api(self, method: str, path: str, options: dict[str, Any] | None) -> dict[str, Any]:
        if method not in ("get", "post", "put", "delete"):
            raise ValueError(f"unknown posthog.api method {method!r}")
        response: httpx.Response = await getattr(self._meta.posthog.api, method)(path, options)
        return _response(response)

    async def _fetch(self, url: str, request: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
            raise TypeError(f"Only absolute http(s) URLs are supported, not {url!r}")
        redirect = request.get("redirect", "follow")
        timeout = request.get("timeout")
        try:
            response = await self._http.request(
                str(request.get("method") or "GET"),
                url,
                headers=[(str(name), str(value)) for name, value in request.get("headers") or []],
                content=_request_content(request.get("body")),
                follow_redirects=redirect == "follow",
                timeout=timeout / 1000 if timeout else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.HTTPError as error:
            raise fetch_failed(url, error) from None
        if redirect == "error" and response.is_redirect:
            raise FetchError(f"uri requested responds with a redirect, redirect mode is set to error: {url}")
        return _response(response)


class Isolate:
    """One V8 isolate running one plugin config's code, and the exchange of messages with it."""

    def __init__(
        self,
        racer: MiniRacer,
        host: HostOperations,
        timeout: float,
        memory: MemoryLimits,
        timers: TimerLimits = DEFAULT_TIMER_LIMITS,
    ) -> None:
        self._racer: MiniRacer | None = racer
        self._host = host
        self._timeout = timeout
        self._memory = memory
        self._timer_limits = timers
        self._collect_above = memory.array_buffer_bytes // 2
        self._entry = f"__pluginServer_{secrets.token_hex(8)}"
        self._loop = asyncio.get_running_loop()
        self._lock = asyncio.Lock()  # one script at a time
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._call_ids = itertools.count(1)
        self._request_numbers = itertools.count(1)
        self._inbox: list[bytes] = []  # answers and timer firings not delivered yet
        self._poll = False  # whether promise continuations may have posted messages since the last script
        self._wake = asyncio.Event()
        self._timers: dict[int, asyncio.TimerHandle] = {}
        # Timer firings wait in `_due` for the next round (timers.py), then in `_timer_inbox` for the pump.
        self._due: list[int] = []
        self._timer_inbox: list[int] = []
        self._round: asyncio.TimerHandle | None = None
        self._last_round = -timers.min_interval
        self._timer_budget = TimerBudget(timeout, timers.cpu_share, self._loop.time())
        self._operations: set[asyncio.Task[Any]] = set()
        self._running: asyncio.Task[Any] | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None  # compacts the isolate once it has been idle
        # Shared with the isolate (see prelude.js): the control counters.
        self._control: memoryview | None = None
        self._run: RunEntry | None = None  # `<entry>.run`, which requests are sent to (entry.py)
        self.lost: PluginError | None = None

    @classmethod
    async def start(
        cls,
        host: HostOperations,
        *,
        timeout: float,
        memory: MemoryLimits,
        options: dict[str, Any],
        required: Collection[str] | None = None,
        timers: TimerLimits = DEFAULT_TIMER_LIMITS,
    ) -> Isolate:
        """A new isolate (in the running event loop) with the prelude installed, and the provided
        modules of a plugin that requires `required` by name (None: all; see setup_script)."""
        racer = new_racer()
        racer.set_hard_memory_limit(memory.heap_bytes)
        # The hard limit is checked against the heap used after any collection, garbage included; past
        # the soft limit V8 is told memory is tight and collects old garbage sooner.
        racer.set_soft_memory_limit(memory.heap_bytes // 2)
        isolate = cls(racer, host, timeout, memory, timers)
        try:
            await isolate._install(options, required)
        except BaseException:
            await isolate.close()
            raise
        isolate._pump_task = isolate._loop.create_task(isolate._pump())
        return isolate

    async def _install(self, options: dict[str, Any], required: Collection[str] | None) -> None:
        racer = self._racer
        assert racer is not None
        control = await self._evaluate(
            racer, setup_script(self._entry, options, self._memory.array_buffer_bytes, required)
        )
        if not isinstance(control, memoryview):
            raise PluginError("the JavaScript prelude did not share its control buffer")
        self._control = control.cast("i")
        run, no_arguments = (
            await self._evaluate(racer, f"{self._entry}.run"),
            await self._evaluate(racer, "[]"),
        )
        if not isinstance(run, JSFunction) or not isinstance(no_arguments, JSArray):
            raise PluginError("the JavaScript prelude did not define its entry points")
        self._run = RunEntry(racer, run, no_arguments)

    # ---------------------------------------------------------------- calls

    async def load(
        self, definitions: Iterable[tuple[str, str]], main: str, source_prefix: str
    ) -> dict[str, Any]:
        """Define the plugin's modules (`(path, arguments of define)`, see prelude.js), each in a script
        of its own so that stack traces name its file, then run the main one; what it exports
        (methods, tasks, jobs, metrics)."""
        for path, arguments in definitions:
            self._dispatch(
                await self._eval(f"{self._entry}.define({arguments})\n//# sourceURL={source_prefix}{path}")
            )

        async def start(call_id: int) -> None:
            self._dispatch(await self._eval(f"{self._entry}.load({call_id}, {js_string(main)})"))
            self._poll_soon()

        exports = _outcome_value(await self._call(start))
        if not isinstance(exports, dict):
            raise PluginError("the JavaScript runtime did not describe the plugin's exports")
        return exports

    def _compact_when_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = self._loop.call_later(IDLE_COMPACT_SECONDS, self._spawn_compaction)

    def _spawn_compaction(self) -> None:
        self._idle = None
        if self._racer is not None:
            self._spawn(self._compact())

    async def _compact(self) -> None:
        with contextlib.suppress(PluginError, _Interrupted):  # lost or busy: the next call sees to it
            await self.collect_garbage()

    async def collect_garbage(self) -> None:
        """A full garbage collection in the isolate (in a script, under the watchdog)."""
        async with self._lock:
            racer = self._racer
            if racer is None:
                raise self._closed_error()
            await self._evaluate(racer, f"{self._entry}.collectGarbage(true)")

    async def declare_metrics(self, declared: dict[str, Any]) -> None:
        await self._request(b'["declareMetrics",%s]' % _json(declared))

    async def call(self, name: str, args: list[Any]) -> None:
        """Call an exported function with `args` and meta; raises what it threw."""
        await self._invoke(b"call", name, args)

    async def job(self, name: str, payload: Any) -> None:
        await self._invoke(b"job", name, payload)

    async def _invoke(self, kind: bytes, name: str, given: Any) -> None:
        request = b"%s,%s" % (_json(name), _json(given))
        _outcome_value(
            await self._call(lambda call_id: self._request(b'["%s",%d,%s]' % (kind, call_id, request)))
        )

    async def batch(self, events_json: bytes) -> tuple[list[Any], dict[int, Any]]:
        """processEvent over the events: what each returned (null where it threw), and what each that
        threw threw, by index. An event stopped for running too long gets a timeout; the batch goes on
        with the others."""
        result = await self._call(
            lambda call_id: self._request(
                b'["batch",%d,%s]' % (call_id, events_json), resume=b'["resume",%d]' % call_id
            )
        )
        try:
            values, errors = result
            thrown = {index: error for index, error in errors}
        except (TypeError, ValueError):
            thrown = None
        if not isinstance(values, list) or thrown is None:
            raise PluginError("the JavaScript runtime returned a malformed batch result")
        return values, thrown

    async def _call(self, start: Callable[[int], Awaitable[None]]) -> Any:
        """Start a call (`start(call_id)`) and wait for its result."""
        call_id = next(self._call_ids)
        result = self._loop.create_future()
        self._calls[call_id] = result
        try:
            try:
                await start(call_id)
            except _Interrupted:
                raise PluginTimeout(self._timeout_message()) from None
            if not await self._watch(result, self._timeout + BACKSTOP_SECONDS):
                raise await self._lose(
                    PluginTimeout(f"{self._timeout_message()}; the isolate stopped answering")
                )
            return result.result()
        finally:
            self._calls.pop(call_id, None)
            if result.done() and not result.cancelled():
                result.exception()  # retrieved: a loss may have set it while the call failed otherwise

    def _timeout_message(self) -> str:
        return f"Script execution timed out after running for {self._timeout:g} second(s)"

    # ---------------------------------------------------------------- scripts

    async def _request(self, request: bytes, *, resume: bytes | None = None) -> None:
        """Send a request (see prelude.js) and act on the messages it returns. When it is stopped for
        running too long, `resume` (if any) lets the isolate go on with its other work; a request that
        was stopped before it started (the isolate was busy with promise continuations) is sent again."""
        waits = 0
        while True:
            number = next(self._request_numbers)
            try:
                messages = await self._eval(request, number)
            except _Interrupted:
                if self._started() != number:
                    waits = await self._waited(waits)
                    continue
                if resume is None:
                    raise
                request = resume
                continue
            self._dispatch(messages)
            self._poll_soon()
            return

    async def _waited(self, waits: int) -> int:
        """Count one more time the isolate was found busy with promise continuations for longer than
        the timeout; an isolate that stays that busy is given up."""
        if waits + 1 >= MAX_BUSY_WAITS:
            raise await self._lose(PluginTimeout(f"{self._timeout_message()}; the isolate stayed busy"))
        return waits + 1

    def _poll_soon(self) -> None:
        """Promise continuations run after a script: collect what they post."""
        self._poll = True
        self._wake.set()

    async def _eval(self, script: str | bytes, number: int = 0) -> Any:
        """The parsed messages of a script, or of a request (bytes, JSON text) numbered `number` (see
        _evaluate). Raises _Interrupted when it was terminated for running too long, or the loss error
        when the isolate had to be closed."""
        async with self._lock:
            racer = self._racer
            if racer is None:
                raise self._closed_error()
            if isinstance(script, bytes):
                assert self._control is not None
                self._control[2] = number
            result = await self._evaluate(racer, script)
            self._compact_when_idle()
            await self._check_array_buffers(racer)
            if isinstance(result, str):
                with contextlib.suppress(orjson.JSONDecodeError):
                    return orjson.loads(result)
            raise await self._lose(PluginError(BROKEN))

    def _started(self) -> int:
        """The number of the last request the isolate started."""
        return int(self._control[3]) if self._control is not None else 0

    async def _evaluate(self, racer: MiniRacer, script: str | bytes) -> Any:
        """The value of a script, or of `<entry>.run` given a request (bytes: JSON text in UTF-8), run
        under the watchdog (see _watch)."""
        if isinstance(script, str):
            running = self._loop.create_task(racer.eval_cancelable(script))
        elif self._run is not None:
            running = self._loop.create_task(self._run.call(script))
        else:
            raise self._closed_error()
        self._running = running
        started = self._loop.time()
        try:
            if not await self._watch(running, self._timeout + WATCHDOG_GRACE_SECONDS):
                await self._terminate(running)
                if await self._responds(racer):
                    raise _Interrupted
                raise await self._lose(PluginTimeout(f"{self._timeout_message()}; the isolate was stuck"))
            if self._racer is None:  # closed meanwhile
                raise self._closed_error()
            try:
                result = running.result()
            except JSEvalException as error:
                if isinstance(error, JSOOMException) or racer.was_hard_memory_limit_reached():
                    raise await self._lose(self._heap_error()) from None
                raise await self._lose(PluginError(f"{BROKEN}: {error}")) from None
            if racer.was_hard_memory_limit_reached():
                raise await self._lose(self._heap_error())
            return result
        except asyncio.CancelledError:
            if not running.done():
                running.cancel()
                self._spawn(self._lose(PluginError("a call into the plugin's isolate was cancelled")))
            raise
        finally:
            self._running = None
            timer_time = _TIMER_TIME.get()
            if timer_time is not None:
                timer_time[0] += self._loop.time() - started

    def _closed_error(self) -> PluginError:
        return _copy(self.lost or PluginError("the plugin's isolate is closed"))

    def _heap_error(self) -> JSHeapLimitError:
        return JSHeapLimitError("The plugin ran out of JavaScript heap memory; its isolate was discarded")

    async def _check_array_buffers(self, racer: MiniRacer) -> None:
        """Past half its ArrayBuffer budget, the isolate collects its garbage (whose buffers memory.js
        then stops counting). After a refused allocation, an isolate whose plugin still could not have
        it holds too much and is discarded, like at the heap limit."""
        control = self._control
        if control is None:
            return
        refused, held = control[4], control[5] * 1024
        half = self._memory.array_buffer_bytes // 2
        if held <= half:
            self._collect_above = half
        if not refused and held <= self._collect_above:
            return
        await self._evaluate(racer, f"{self._entry}.collectGarbage()")
        # What is still held after this is alive: collect again only once the plugin holds more.
        self._collect_above = max(half, held + half // 2)
        if not refused:
            return
        control[4] = 0
        if await self._evaluate(racer, f"{self._entry}.memoryStillOver()"):
            raise await self._lose(
                JSHeapLimitError(
                    "The plugin ran out of ArrayBuffer memory (more than "
                    f"{self._memory.array_buffers_mb:g} MB); its isolate was discarded"
                )
            )

    async def _watch(self, waiting: asyncio.Future[Any], limit: float) -> bool:
        """Wait for `waiting` while the isolate keeps making progress (entering new plugin code); False
        once it spent `limit` seconds on the same piece."""
        step = min(limit / 10, WATCH_STEP_SECONDS)
        seen, since = self._progress(), self._loop.time()
        while True:
            remaining = since + limit - self._loop.time()
            done, _ = await asyncio.wait((waiting,), timeout=max(0.0, min(step, remaining)))
            if done:
                return True
            count, now = self._progress(), self._loop.time()
            if count != seen:
                seen, since = count, now
            elif now - since >= limit:
                return False

    def _progress(self) -> int:
        return int(self._control[0]) if self._control is not None else 0

    async def _terminate(self, running: asyncio.Task[Any]) -> None:
        running.cancel()  # mini-racer then terminates the script, if it has started
        await asyncio.wait((running,))

    async def _responds(self, racer: MiniRacer) -> bool:
        """Whether the isolate runs a script again: after a termination it does, unless it is stuck in
        code that termination cannot reach (V8 runs promise continuations outside any script)."""
        try:
            await asyncio.wait_for(racer.eval_cancelable("0"), PROBE_SECONDS)
        except TimeoutError:
            return False
        except JSEvalException:  # terminated itself, by a termination that came late: it answered
            return not racer.was_hard_memory_limit_reached()
        return True

    # ---------------------------------------------------------------- messages

    def _dispatch(self, messages: Any) -> None:
        for message in messages if isinstance(messages, list) else ():
            if not isinstance(message, list) or len(message) != 3:
                continue
            op, ident, args = message
            if op == "$done":
                result = self._calls.get(ident)
                if result is not None and not result.done():
                    result.set_result(args)
            elif op == "$timer":
                self._set_timer(ident, args)
            elif op == "$untimer":
                timer = self._timers.pop(ident, None)
                if timer is not None:
                    timer.cancel()
            elif op == "$timerLimit":
                limit = self._timer_limits.max_timers
                self._spawn(self._host.record(PluginError(f"the plugin asked for more than {limit} timers")))
            elif isinstance(args, list):
                self._host_message(op, ident, args)

    def _host_message(self, op: str, ident: int, args: list[Any]) -> None:
        try:
            if op == "console":
                self._host.console(*args)
            elif op == "metric":
                self._host.metric(*args)
            elif op == "$uncaught":
                self._host.uncaught(*args)
            else:
                self._spawn(self._operate(op, ident, args))
        except Exception as error:  # a malformed message: the plugin's own doing
            self._host.console("error", f"plugin server: bad {op!r} call: {error}")

    async def _operate(self, op: str, ident: int, args: list[Any]) -> None:
        """Run one meta operation; its answer is delivered to the isolate with the next batch of answers."""
        try:
            operation = self._host.operation(op)
            if operation is None:
                raise TypeError(f"{op} is not a function the plugin server provides")
            answer = b"[%d,1,%s]" % (ident, _json(await operation(*args)))
        except HostedError as error:
            answer = b"[%d,0,%s]" % (
                ident,
                _json({**error.fields, "name": error.name, "message": str(error)}),
            )
        except Exception as error:
            answer = b"[%d,0,%s]" % (ident, _json({"name": type(error).__name__, "message": str(error)}))
        self._deliver(answer)

    def _set_timer(self, ident: int, args: Any) -> None:
        delay = args[0] if isinstance(args, list) and args and isinstance(args[0], int | float) else 0
        old = self._timers.pop(ident, None)
        if old is not None:
            old.cancel()
        elif ident > 0 and sum(1 for key in self._timers if key > 0) >= self._timer_limits.max_timers:
            return  # prelude.js refuses it first; this only stands if the runtime was broken
        self._timers[ident] = self._loop.call_later(max(0.0, delay / 1000), self._fire_timer, ident)

    def _fire_timer(self, ident: int) -> None:
        self._timers.pop(ident, None)
        if self._racer is None:
            return
        self._due.append(ident)
        if self._round is None:
            at = max(self._loop.time(), self._last_round + self._timer_limits.min_interval)
            self._round = self._loop.call_at(at, self._start_round)

    def _start_round(self) -> None:
        self._round = None
        self._last_round = self._loop.time()
        self._timer_inbox.extend(self._due)
        self._due.clear()
        self._wake.set()

    async def _run_timers(self) -> None:
        """Fire the timers of a round; the time their callbacks take is charged to the plugin."""
        idents, self._timer_inbox = self._timer_inbox, []
        spent = [0.0]
        token = _TIMER_TIME.set(spent)  # this task's scripts only: other calls' run in other tasks
        items = b",".join(b"[%d,2,null]" % ident for ident in idents)
        try:
            await self._request(b'["deliver",[' + items + b"]]", resume=b'["recover"]')
        finally:
            _TIMER_TIME.reset(token)
        if not self._timer_budget.charge(spent[0], self._loop.time()):
            await self._clear_timers()

    async def _clear_timers(self) -> None:
        """Forget every plugin timer (the runtime's own stay): they used more time than allowed."""
        for ident in [ident for ident in self._timers if ident > 0]:
            self._timers.pop(ident).cancel()
        self._due = [ident for ident in self._due if ident < 0]
        self._timer_inbox = [ident for ident in self._timer_inbox if ident < 0]
        await self._request(b'["clearTimers"]')
        share = self._timer_limits.cpu_share
        await self._host.record(
            PluginTimeout(
                f"the plugin's timers kept it busy more than {share:.0%} of the time, for "
                f"{self._timeout:g} second(s) in all; its timers were cleared"
            )
        )

    def _deliver(self, item: bytes) -> None:
        if self._racer is not None:
            self._inbox.append(item)
            self._wake.set()

    async def _pump(self) -> None:
        """Deliver answers and timer firings, and collect what promise continuations posted."""
        waits = 0
        try:
            while self._racer is not None:
                await self._wake.wait()
                self._wake.clear()
                while self._racer is not None and (self._inbox or self._timer_inbox or self._poll):
                    if self._inbox:
                        items, self._inbox = self._inbox, []
                        await self._request(b'["deliver",[' + b",".join(items) + b"]]", resume=b'["recover"]')
                    elif self._timer_inbox:
                        await self._run_timers()
                    else:
                        self._poll = False
                        try:
                            self._dispatch(await self._eval(f"{self._entry}.poll()"))
                            waits = 0
                        except _Interrupted:  # the isolate was busy with continuations, which ended late
                            waits = await self._waited(waits)
                            self._poll = True
        except PluginError:
            if self.lost is None:
                await self._lose(PluginError("the plugin's isolate stopped answering"))

    # ---------------------------------------------------------------- the end

    async def _lose(self, error: PluginError) -> PluginError:
        """Close the isolate because of `error`; the error to raise (every pending call gets one too)."""
        if self.lost is None:
            self.lost = error
            await self.close()
        return _copy(self.lost)

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run `work` in a task that close() cancels."""
        task = self._loop.create_task(work)
        self._operations.add(task)
        task.add_done_callback(self._operations.discard)

    async def close(self) -> None:
        """Stop the isolate (even one stuck in JavaScript) and everything waiting on it."""
        racer, self._racer = self._racer, None
        if racer is None:
            return
        self._control = self._run = None  # their memory goes with the isolate
        if self.lost is None:
            self.lost = PluginError("the plugin's isolate was closed")
        for result in self._calls.values():
            if not result.done():
                result.set_exception(_copy(self.lost))
        current = asyncio.current_task()
        tasks = [
            task
            for task in (self._pump_task, self._running, *self._operations)
            if task is not None and task is not current and not task.done()
        ]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._round is not None:
            self._round.cancel()
        if self._idle is not None:
            self._idle.cancel()
        self._due.clear()
        self._timer_inbox.clear()
        self._inbox.clear()
        racer.close()
        await self._host.close()


class JSPluginOptions(TypedDict):
    """The keyword arguments of JSPlugin and JSPlugin.load."""

    plugin_config_id: int
    timeout: float
    memory: MemoryLimits
    http: httpx.AsyncClient
    guards_name: str  # the guards name of the Transpiler that produced the code
    timers: NotRequired[TimerLimits]  # DEFAULT_TIMER_LIMITS when not given
    record_error: NotRequired[RecordError]  # where errors of timers go; the plugin's log when not given
    guard: NotRequired[ConnectGuard]  # where the plugin's own connections may go (all by default)


class JSPlugin:
    """A loaded JavaScript plugin config (implements plugins.instance.PluginInstance).

    `modules` are the plugin's transpiled modules (modules.py, transpile.py), whose guards are named
    `guards_name`. The isolate is built by `load`; after it is lost (heap limit, stuck), the next call
    builds a new one and runs setupPlugin again."""

    def __init__(self, modules: PluginModules, meta: Any, **options: Unpack[JSPluginOptions]) -> None:
        self.meta = meta
        self.plugin_config_id = options["plugin_config_id"]
        guards_name = options["guards_name"]
        self._definitions = [
            (module.path, _define_arguments(module, guards_name, module.path == modules.main))
            for module in modules.modules.values()
        ]
        self._main = modules.main
        self._required = frozenset(
            name for module in modules.modules.values() for name in module.requires if not is_relative(name)
        )
        self._source_prefix = f"plugin-{self.plugin_config_id}/"
        self._timeout = options["timeout"]
        self._memory = options["memory"]
        self._http = options["http"]
        self._timers = options.get("timers", DEFAULT_TIMER_LIMITS)
        self._record_error = options.get("record_error")
        self._guard = options.get("guard", resolve_addresses)
        self._isolate: Isolate | None = None
        self._building = asyncio.Lock()
        self._set_up = False
        self._closed = False
        self.methods: frozenset[str] = frozenset()
        self.scheduled_tasks: tuple[str, ...] = ()
        self.jobs: tuple[str, ...] = ()
        self.metrics: dict[str, str] = {}

    @classmethod
    async def load(cls, modules: PluginModules, meta: Any, **options: Unpack[JSPluginOptions]) -> JSPlugin:
        """Build the plugin's isolate and run its main module (setupPlugin runs in `setup`)."""
        plugin = cls(modules, meta, **options)
        plugin._isolate = await plugin._build()
        return plugin

    async def _build(self) -> Isolate:
        isolate = await Isolate.start(
            HostOperations(
                self.meta,
                self._http,
                guard=self._guard,
                timeout=self._timeout,
                record_error=self._record_error,
            ),
            timeout=self._timeout,
            memory=self._memory,
            options=self._options(),
            required=self._required,
            timers=self._timers,
        )
        try:
            self._learn(await isolate.load(self._definitions, self._main, self._source_prefix))
            await isolate.declare_metrics(declared_metrics(self.metrics, self.methods))
        except BaseException:
            await isolate.close()
            raise
        return isolate

    def _options(self) -> dict[str, Any]:
        attachments = {
            key: {
                "content_type": attachment.content_type,
                "file_name": attachment.file_name,
                "base64": base64.b64encode(attachment.contents).decode(),
            }
            for key, attachment in (self.meta.attachments or {}).items()
        }
        return {
            "timeoutMs": self._timeout * 1000,
            "maxTimers": self._timers.max_timers,
            "config": self.meta.config,
            "attachments": attachments,
            "randomSeed": secrets.token_hex(32),  # for require('crypto'): V8 alone has no secure source
            "sourcePrefix": self._source_prefix,  # stack frames of the plugin's files start with it
        }

    def _learn(self, exports: dict[str, Any]) -> None:
        names = set(exports.get("methods") or ())
        if "processEventBatch" in names:
            names.add("processEvent")  # processEvent semantics, one event at a time
        self.methods = frozenset(name for name in METHODS if name in names)
        tasks = set(exports.get("tasks") or ())
        self.scheduled_tasks = tuple(name for name in SCHEDULED_TASKS if name in tasks)
        self.jobs = tuple(str(name) for name in exports.get("jobs") or ())
        metrics = exports.get("metrics")
        self.metrics = validate_declared(metrics) if metrics is not None else {}

    async def _ready(self) -> Isolate:
        """The live isolate, rebuilt (and set up again) if it was lost."""
        isolate = self._isolate
        if isolate is not None and isolate.lost is None:
            return isolate
        async with self._building:
            if self._closed:
                raise PluginError("this plugin was torn down")
            isolate = self._isolate
            if isolate is None or isolate.lost is not None:
                self._isolate = None
                isolate = await self._build()
                if self._set_up:
                    await self._setup_plugin(isolate)
                self._isolate = isolate
            return isolate

    async def _setup_plugin(self, isolate: Isolate) -> None:
        try:
            if "setupPlugin" in self.methods:
                await isolate.call("setupPlugin", [])
            # What setting up left behind (the runtime's and the plugin's parsing, setupPlugin's
            # garbage) would otherwise hold its pages in every idle isolate: a fifth of one's memory.
            await isolate.collect_garbage()
        except BaseException:
            await isolate.close()
            raise

    # ---------------------------------------------------------------- PluginInstance

    async def setup(self) -> None:
        isolate = await self._ready()
        await self._setup_plugin(isolate)
        self._set_up = True

    async def teardown(self) -> None:
        async with self._building:
            self._closed = True
            isolate, self._isolate = self._isolate, None
        if isolate is None:
            return
        try:
            if "teardownPlugin" in self.methods and isolate.lost is None and self._set_up:
                await isolate.call("teardownPlugin", [])
        finally:
            await isolate.close()

    async def process_events(self, events: list[RawEvent], hung: frozenset[str]) -> list[EventOutcome]:
        if not hung and "processEvent" in self.methods:  # the common case: every event goes to the plugin
            return await self._batch(events)
        outcomes: list[EventOutcome] = [None] * len(events)
        given: list[int] = []
        for index, event in enumerate(events):
            if str(event.get("uuid")) in hung:
                outcomes[index] = PluginTimeout(
                    "processEvent ran too long on this event before and its worker was replaced; "
                    "the event continued without this plugin's change"
                )
            elif "processEvent" in self.methods:
                given.append(index)
            else:
                outcomes[index] = copy_event(event)
        if given:
            for index, outcome in zip(given, await self._batch([events[i] for i in given]), strict=True):
                outcomes[index] = outcome
        return outcomes

    async def _batch(self, events: list[RawEvent]) -> list[EventOutcome]:
        try:
            requests = _requests(events)
        except TypeError as error:  # something Python cannot write as JSON (a lone surrogate)
            return [error] * len(events)
        outcomes: list[EventOutcome] = []
        for number, (part, request) in enumerate(requests):
            outcomes += await self._request_outcomes(part, request, collect_first=number > 0)
        return outcomes

    async def _request_outcomes(
        self, events: list[RawEvent], request: bytes, *, collect_first: bool
    ) -> list[EventOutcome]:
        try:
            isolate = await self._ready()
            if collect_first:  # what the request before left: V8 may not collect it before the heap limit
                await isolate.collect_garbage()
            values, thrown = await isolate.batch(request)
            if len(values) != len(events):
                raise PluginError("the JavaScript runtime returned a result per event of another batch")
        except Exception as error:
            return [error] * len(events)
        return _event_outcomes(events, values, thrown)

    async def on_event(self, event: RawEvent) -> None:
        if "onEvent" in self.methods:
            await (await self._ready()).call("onEvent", [event])

    async def export_events(self, events: list[RawEvent]) -> None:
        if "exportEvents" in self.methods:
            await (await self._ready()).call("exportEvents", [events])

    async def run_task(self, name: str) -> None:
        if name in self.scheduled_tasks:
            await (await self._ready()).call(name, [])

    async def run_job(self, name: str, payload: Any) -> None:
        if name not in self.jobs:
            raise PluginError(f"this plugin has no job {name!r}")
        await (await self._ready()).job(name, payload)


async def prepare_js_code(code: PluginCode) -> None:
    """The JavaScript runtime's preparer: the plugin's modules transpiled into the process's cache, so
    that loading it later finds them there (the first transpile in a process also starts TypeScript's
    compiler, a few hundred milliseconds)."""
    await load_modules(code.files, code.main, get_transpiler())


async def load_js_plugin(request: LoadRequest, services: RuntimeServices) -> JSPlugin:
    """The JavaScript runtime's loader (see plugins/runtimes.py): the plugin's modules transpiled,
    then its isolate built."""
    settings = services.settings
    transpiler = get_transpiler()
    return await JSPlugin.load(
        await load_modules(request.code.files, request.code.main, transpiler),
        request.meta,
        plugin_config_id=request.plugin_config_id,
        timeout=settings.TASK_TIMEOUT,
        memory=MemoryLimits(
            heap_mb=settings.JS_HEAP_LIMIT_MB, array_buffers_mb=settings.JS_ARRAY_BUFFER_LIMIT_MB
        ),
        http=services.http,
        guards_name=transpiler.guards_name,
        timers=TimerLimits(
            max_timers=settings.JS_MAX_TIMERS,
            min_interval=settings.JS_TIMER_MIN_INTERVAL_MS / 1000,
            cpu_share=settings.JS_TIMER_CPU_SHARE,
        ),
        record_error=request.record_error,
        guard=services.connect_guard,
    )


def _define_arguments(module: JSModule, guards_name: str, main: bool) -> str:
    """The arguments of prelude.js's `define` for one module: path, requires, links, the module
    function (null for JSON), the JSON text (null for code) and the line map of its source map
    (null without one). The main module's function also returns its top-level functions, for
    plugins that export nothing."""
    expose = TOP_LEVEL_NAMES if main else ()
    function = "null" if module.code is None else wrap_module(module.code, guards_name, expose)
    text = "null" if module.json is None else js_string(module.json)
    lines = _json(line_map(module.mappings)).decode() if module.mappings else "null"
    references = f"{_json(module.requires).decode()}, {_json(module.links).decode()}"
    return f"{js_string(module.path)}, {references}, {function}, {text}, {lines}"


def _requests(events: list[RawEvent]) -> list[tuple[list[RawEvent], bytes]]:
    """The events with their JSON array: in one request, as almost always, when it fits in
    MAX_REQUEST_BYTES; else in consecutive parts filled up to it (an event larger alone goes alone),
    each event written once more."""
    whole = _json(events)
    if len(whole) <= MAX_REQUEST_BYTES:
        return [(events, whole)]
    parts: list[tuple[list[RawEvent], bytes]] = []
    texts: list[bytes] = []
    start = size = 0
    for index, event in enumerate(events):
        text = _json(event)
        if texts and size + len(text) + 1 > MAX_REQUEST_BYTES:
            parts.append((events[start:index], b"[%s]" % b",".join(texts)))
            start, size = index, 0
            texts = []
        texts.append(text)
        size += len(text) + 1
    parts.append((events[start:], b"[%s]" % b",".join(texts)))
    return parts


def _event_outcomes(events: list[RawEvent], values: list[Any], thrown: dict[int, Any]) -> list[EventOutcome]:
    """Each event's outcome: what the plugin threw, or its result if the server can take it (parsed
    from JSON by orjson, the results are checked all at once: see checked_json_results)."""
    if not thrown:
        return checked_json_results(events, values)  # type: ignore[return-value]
    returned = [index for index in range(len(events)) if index not in thrown]
    outcomes: list[EventOutcome] = [
        js_exception(thrown[index]) if index in thrown else None for index in range(len(events))
    ]
    checked = checked_json_results(
        [events[index] for index in returned], [values[index] for index in returned]
    )
    for index, outcome in zip(returned, checked, strict=True):
        outcomes[index] = outcome
    return outcomes
