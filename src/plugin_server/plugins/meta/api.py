"""The `meta` API, declared once for both runtimes.

Plugins reach the server's services through `meta` (and, in JavaScript, the `posthog` global). Each
of OPERATIONS is an async call that both runtimes give plugins. JavaScript finds it at its `name`
(under `meta`, or a global of JS_GLOBALS): prelude.js, given `js_declaration()` as JSON, makes the
functions, each posting the host request `name` with its arguments shaped as declared, and the JS
runtime (js/runtime.py) calls the Python method at HOST_OPERATIONS[name]. Python finds it at the
attribute path `python` of its `meta`: meta/build.py makes those namespaces from this declaration,
taking each declared method from the service object behind it. Requests whose two sides differ too
much to declare are HAND_SHAPED; the logger and metrics are calls without an answer (LOG_LEVELS,
METRIC_METHODS). tests/unit/test_meta_api.py and tests/integration/test_meta_build.py check both
runtimes against this declaration.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType, SimpleNamespace
from typing import Any, Literal

# What JavaScript makes of an argument before posting it:
#   value          as given (undefined becomes null)
#   optional       left out when undefined, with the arguments after it: Python's default applies
#   jsonSerialize  an options object: whether its `jsonSerialize` is not false
Shape = Literal["value", "optional", "jsonSerialize"]


@dataclass(frozen=True)
class Argument:
    js: str  # its name in JavaScript (as the original's docs call it)
    python: str  # the Python parameter it is passed as (positionally, in the declared order)
    shape: Shape = "value"


@dataclass(frozen=True)
class Operation:
    name: str  # where JavaScript finds it, and the name of its host request
    python: tuple[str, ...]  # its attribute path on Python's `meta`
    arguments: tuple[Argument, ...]


def _operation(name: str, python: str, *arguments: Argument | str) -> Operation:
    """An operation; an argument given as a name has that name in both runtimes."""
    return Operation(
        name,
        tuple(python.split(".")),
        tuple(Argument(given, given) if isinstance(given, str) else given for given in arguments),
    )


OPERATIONS = (
    _operation(
        "cache.set",
        "cache.set",
        "key",
        "value",
        Argument("ttlSeconds", "ttl_seconds"),
        Argument("options", "json_serialize", "jsonSerialize"),
    ),
    _operation(
        "cache.get",
        "cache.get",
        "key",
        Argument("defaultValue", "default"),
        Argument("options", "json_serialize", "jsonSerialize"),
    ),
    _operation("cache.incr", "cache.incr", "key"),
    _operation("cache.expire", "cache.expire", "key", Argument("ttlSeconds", "ttl_seconds")),
    _operation("cache.lpush", "cache.lpush", "key", Argument("elementOrArray", "value")),
    _operation(
        "cache.lrange", "cache.lrange", "key", Argument("startIndex", "start"), Argument("endIndex", "end")
    ),
    _operation("cache.llen", "cache.llen", "key"),
    _operation("cache.lrem", "cache.lrem", "key", "count", Argument("elementKey", "value")),
    _operation("cache.lpop", "cache.lpop", "key", Argument("count", "count", "optional")),
    _operation("storage.get", "storage.get", "key", Argument("defaultValue", "default")),
    _operation("storage.set", "storage.set", "key", "value"),
    _operation("storage.del", "storage.delete", "key"),
    _operation("utils.cursor.init", "utils.cursor.init", "key", Argument("initialValue", "initial")),
    _operation("utils.cursor.increment", "utils.cursor.increment", "key", Argument("incrementBy", "by")),
    _operation("geoip.locate", "geoip.locate", "ip"),
    _operation("posthog.capture", "posthog.capture", "event", "properties"),
)

# The JavaScript runtime's table: host request name -> the Python method's path on `meta`.
HOST_OPERATIONS: MappingProxyType[str, tuple[str, ...]] = MappingProxyType(
    {operation.name: operation.python for operation in OPERATIONS}
)

# Namespaces of operations that JavaScript has as globals rather than in `meta`.
JS_GLOBALS = ("posthog",)

# Host requests written by hand on both sides (prelude.js, js/runtime.py HostOperations), and the
# Python `meta` member each reaches: `meta.jobs.<name>(payload).runNow()/runIn(n, unit)/runAt(date)`
# is ["jobs.run", [name, payload, "now" | "in" | "at", ...]]; `posthog.api.<method>(path, options)`
# is ["posthog.api", [method, path, options]], answered as a fetch Response.
HAND_SHAPED: MappingProxyType[str, tuple[str, ...]] = MappingProxyType(
    {"jobs.run": ("jobs",), "posthog.api": ("posthog", "api")}
)

# `meta.logger` (JavaScript's `console` too): the levels, each a method of PluginLogger.
LOG_LEVELS = ("debug", "log", "info", "warn", "error")
# console methods JavaScript has beyond the levels, and the level each writes at.
LOG_ALIASES: MappingProxyType[str, str] = MappingProxyType({"trace": "debug", "dir": "log"})
# `meta.metrics.<name>`: a declared metric's type -> its one method.
METRIC_METHODS: MappingProxyType[str, str] = MappingProxyType(
    {"sum": "increment", "max": "max", "min": "min"}
)

# What `meta` holds in each runtime: the namespaces of OPERATIONS (but JS_GLOBALS in JavaScript) and these.
JS_MEMBERS = ("config", "attachments", "global", "jobs", "metrics", "logger")
PYTHON_MEMBERS = ("config", "attachments", "global_", "global", "jobs", "metrics", "logger")


def namespaces() -> tuple[str, ...]:
    """The top-level names of OPERATIONS, in order."""
    return tuple(dict.fromkeys(operation.name.split(".")[0] for operation in OPERATIONS))


def js_declaration() -> dict[str, Any]:
    """What prelude.js builds the JavaScript side of the API from."""
    return {
        "operations": [
            {"name": operation.name, "shapes": [argument.shape for argument in operation.arguments]}
            for operation in OPERATIONS
        ],
        "globals": list(JS_GLOBALS),
        "logLevels": list(LOG_LEVELS),
        "logAliases": dict(LOG_ALIASES),
        "metricMethods": dict(METRIC_METHODS),
    }


class Meta(SimpleNamespace):
    """The `meta` a Python plugin function gets (meta/build.py): config, attachments, global_ (also
    as `global`), cache, storage, jobs, geoip, metrics, utils.cursor, posthog.capture/api and logger."""
