"""A JavaScript plugin's own modules: the main file and every file it reaches by relative `require`/`import`.

Starting from the main file, each file is transpiled once (transpile.py) and the module names it
requires with a literal are read from the output. A relative name (`./lib`, `../util/index`) is
resolved inside the plugin's files as node and TypeScript do: the exact path, then the path with
each of EXTENSIONS, then `<path>/index` with each of them; a name that leaves the plugin's folder or
names no file stays unresolved. Any other name is a module the runtime provides, or not: that is
checked in the isolate (prelude.js), which knows its modules, before any plugin code runs, so that
one error names every missing module and file.

`.json` files are modules whose exports are the parsed JSON; any other file is code.
"""

from __future__ import annotations

import posixpath
from collections import deque
from dataclasses import dataclass, field

from plugin_server.plugins.js.transpile import Transpiler

# What a relative name may omit, in the order tried: TypeScript's sources before JavaScript (a
# TypeScript plugin's `./lib` is lib.ts even when a compiled lib.js sits beside it), JSON last.
EXTENSIONS = (".ts", ".tsx", ".js", ".mjs", ".cjs", ".json")
# Declaration files hold types only: never modules (their imports are dropped by the transpiler).
_DECLARATION = ".d.ts"


@dataclass(frozen=True)
class JSModule:
    """One file of the plugin as the runtime loads it.

    `code` is the transpiled module body (None for JSON, whose text is `json`), `mappings` its source
    map. `requires` lists the literal module names it requires; `links` maps each relative one to the
    path of the file it resolved to, or None when it names no file of the plugin."""

    path: str
    code: str | None = None
    json: str | None = None
    requires: tuple[str, ...] = ()
    links: dict[str, str | None] = field(default_factory=dict)
    mappings: str = ""  # the source map of `code` (transpile.line_map), for stack traces


@dataclass(frozen=True)
class PluginModules:
    """The modules of one plugin, by path; `main` is the one the plugin's exports come from."""

    main: str
    modules: dict[str, JSModule]

    @classmethod
    def single(cls, code: str, path: str = "index.js", requires: tuple[str, ...] = ()) -> PluginModules:
        """A plugin of one transpiled file (its relative requires resolve to nothing)."""
        links: dict[str, str | None] = {name: None for name in requires if is_relative(name)}
        return cls(path, {path: JSModule(path, code=code, requires=requires, links=links)})


def is_relative(name: str) -> bool:
    """Whether a module name is a path (node's rule: it starts with `./`, `../` or `/`, or is `.`/`..`)."""
    return name.startswith(("./", "../", "/")) or name in (".", "..")


def resolve(files: dict[str, bytes], importer: str, name: str) -> str | None:
    """The plugin file a relative `name` required from `importer` names, or None."""
    if name.startswith("/"):
        return None  # an absolute path is outside the plugin
    base = posixpath.normpath(posixpath.join(posixpath.dirname(importer), name))
    if base == ".." or base.startswith("../"):
        return None
    stem = "index" if base == "." else f"{base}/index"
    candidates = [] if name.endswith("/") or base == "." else [base, *(base + ext for ext in EXTENSIONS)]
    candidates.extend(stem + ext for ext in EXTENSIONS)
    return next(
        (path for path in candidates if path in files and not path.endswith(_DECLARATION)),
        None,
    )


async def load_modules(files: dict[str, bytes], main: str, transpiler: Transpiler) -> PluginModules:
    """Transpile the main file and every file it reaches (once each); PluginTranspileError names the
    first file that does not compile."""
    modules: dict[str, JSModule] = {}
    pending = deque([main])
    queued = {main}
    while pending:
        path = pending.popleft()
        text = files[path].decode("utf-8", errors="replace")
        if path.lower().endswith(".json"):
            modules[path] = JSModule(path, json=text)
            continue
        transpiled = await transpiler.transpile_module_async(text, path)
        links: dict[str, str | None] = {}
        for name in transpiled.requires:
            if not is_relative(name):
                continue
            target = links[name] = resolve(files, path, name)
            if target is not None and target not in queued:
                queued.add(target)
                pending.append(target)
        modules[path] = JSModule(
            path,
            code=transpiled.code,
            requires=transpiled.requires,
            links=links,
            mappings=transpiled.mappings,
        )
    return PluginModules(main, modules)
