"""Transpile plugin code (JS or TS, CommonJS or ES modules) to guarded CommonJS, inside V8.

The TypeScript compiler that the `dukpy` package ships (jsmodules/typescriptServices.js) is loaded
once per process into a mini-racer isolate of our own; no plugin code ever runs there, it is only
parsed. `ts.transpileModule` turns the source into CommonJS (target ES2022, so async/await, `?.`,
class fields and `#private` stay native) with `esModuleInterop`, and a custom transformer
(`_COMPILER_JS` below) adds the guards:

- every `while`, `do…while`, `for`, `for…of` and `for…in` loop gets a state created just before it and
  a check as the first statement of its body (a body that is not a block is wrapped in one):

      const __lp_1 = G_ls();  while (c) { G_lc(__lp_1, 3, 4); ... }

  `G_lc` throws `Error("Script execution timed out after looping for N seconds on line 3:4")` (line
  1-based, column 0-based, of the loop keyword in the plugin's source) once the loop has run longer
  than TASK_TIMEOUT. This is what stops a loop that runs in a microtask (after an `await`), which V8's
  own termination cannot reach. `for…of`/`for…in` are guarded too, unlike the original: iterating a
  growing array or an endless iterator spins just the same, and the check costs little.
- every `await x` becomes `await G_ag(x, "<callee text>")`, and every `x.then(...)` call becomes
  `G_ag(x, "<x text>").then(...)`: the wait ends with `TimeoutError("Script execution timed out after
  promise waited for N seconds")` after TASK_TIMEOUT (the promise itself is not cancelled). The caller
  name is the source text of the awaited call's callee (`meta.storage.get`), not the function object
  the original passed, so the callee expression is never evaluated twice.
- `import`/`export` become `require(...)`/`exports.x = ...` (TypeScript's CommonJS emit); `require`
  calls are left as they are for the runtime's allow-listed `require`.
- top-level `await` is refused (the module body is a plain function), as a PluginTranspileError.

The contract with the runtime (runtime.py):

1. The output of `transpile()` is the body of a function. Evaluate `wrap_module(code, guards_name)`
   (or `Transpiler.wrap(code)`), which is the expression (the code starts on its first line, so that
   line numbers in stack traces are the code's own)

       (function (exports, require, module, <guards_name>) {<code>
       })

   and call it with `this` = `module.exports` (as node does; TypeScript's inline helpers read
   `this && this.__importDefault`, any value works) and the four arguments:
   - `exports`: the same object as `module.exports` at the start;
   - `require(name)`: the allow-listed module loader (ES imports end up here);
   - `module`: `{ exports }`; a plugin may replace `module.exports`;
   - the guards object: `createPluginGuards({ timeoutMs: TASK_TIMEOUT * 1000 })`, where
     `createPluginGuards` is the value of `guards_js()` (guards.js) evaluated in the plugin's isolate
     before any plugin code (so a plugin cannot replace the Date.now/setTimeout/Promise it uses).
   The body starts with `"use strict"` (all plugin code is strict, as under the original's Babel),
   TypeScript's CommonJS header (`exports.__esModule`, hoisted `exports.f = f`), then
   `const <G>_ls = <G>.loopStart, <G>_lc = <G>.loopCheck, <G>_ag = <G>.asyncGuard;` before any plugin
   statement. The guards name carries a random suffix per Transpiler (`__pluginGuards_<16 hex>`; one
   per process for `get_transpiler()`), so plugin source cannot name the guards, and the functions sit
   in `const` bindings that even a direct `eval` cannot reassign; the guards object is frozen. So
   transpiled code only runs with the `guards_name` of the Transpiler that produced it. The guards
   are a safety net against runaway plugins, not a security boundary: killing the worker process
   stays the backstop.
2. Free names the code expects: `exports`, `require`, `module`, `<guards_name>` (all four parameters
   above), plus whatever globals the plugin itself uses (`console`, `fetch`, `URL`, `setTimeout`...).
   Nothing else is introduced by the transpiler; TypeScript's helpers (`__importDefault`,
   `__importStar`, ...) are emitted inline.
3. Exports: `export function f` → `exports.f`; `export default x` → `exports.default`, with
   `exports.__esModule = true`; `module.exports = {...}` stays. Look for a plugin method in
   `exports`, then `exports.default`, then `module.exports`, as the original did. A plain script with
   no exports declares its functions inside the module function, where the original found them on
   the VM's global object: `wrap_module(code, name, expose=("processEvent", ...))` makes the module
   function return `{processEvent: <the top-level binding, or undefined>, ...}` for that fallback.
4. Imports under `esModuleInterop`: `import x from "m"` reads `require("m").default` when the module
   has `__esModule` set, else the whole module (what the original gave); `import * as x from "m"` is
   the module itself when it has `__esModule`, else a copy of its own properties plus `default`;
   `import { a } from "m"` reads `require("m").a` at each use. Imports used only as types are dropped.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import json
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from py_mini_racer import JSEvalException, JSFunction, JSOOMException, JSTimeoutException, MiniRacer

from plugin_server.plugins.js.engine import js_source, new_racer

__all__ = [
    "MODULE_PARAMETERS",
    "PluginTranspileError",
    "TranspileDiagnostic",
    "Transpiled",
    "Transpiler",
    "get_transpiler",
    "guards_js",
    "line_map",
    "typescript_path",
    "wrap_module",
]

# The parameters of the module function, before the guards object.
MODULE_PARAMETERS = ("exports", "require", "module")

# Files compiled strictly as TypeScript. Any other name is compiled as JavaScript first and, if that
# fails to parse, as TypeScript: the original compiled everything as `index.ts`, so JS plugins with
# type annotations worked, while a genuine syntax error in a .js file is best reported by the JS parser.
_TS_SUFFIXES = (".ts", ".mts", ".cts", ".tsx")

# A compile that takes longer is a compiler bug; the isolate is then replaced.
COMPILE_TIMEOUT_SECONDS = 60.0
# Heap limit of the compiler isolate: about 20 MiB once loaded, 110 MiB while compiling 500 KB of TS.
# Past it the compile fails cleanly instead of V8 aborting the process.
COMPILER_MEMORY_LIMIT = 1 << 30

_IDENTIFIER = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")

# Isolates left behind (busy after a timeout, or inherited through a fork): closing them could hang,
# and letting the garbage collector close them could too, so they are kept until the process ends.
_abandoned: list[object] = []

# The compiler driver, evaluated once in the compiler isolate after typescriptServices.js. It defines
# `__compilePlugin(source, kind, guardsName)`, which returns JSON: {code, mappings (the source map's),
# requires: [module name of each literal `require` in the output], errors: [{line, column, message}]}
# with a 1-based line and column.
_COMPILER_JS = r"""
(function () {
    "use strict";
    const ts = globalThis.ts;
    const f = ts.factory;
    const MAX_CALLER = 80;

    const COMPILER_OPTIONS = {
        module: ts.ModuleKind.CommonJS,
        target: ts.ScriptTarget.ES2022,
        esModuleInterop: true,
        alwaysStrict: true,
        newLine: ts.NewLineKind.LineFeed,
        sourceMap: true,
    };
    const SOURCE_MAP_COMMENT = /\n\/\/# sourceMappingURL=[^\n]*\s*$/;

    function callerName(sourceFile, expression) {
        let node = expression;
        while (ts.isParenthesizedExpression(node)) node = node.expression;
        if (ts.isCallExpression(node) || ts.isNewExpression(node)) node = node.expression;
        let text = node.getText(sourceFile).replace(/\s+/g, " ");
        if (text.length > MAX_CALLER) text = text.slice(0, MAX_CALLER - 1) + "\u2026";
        return text;
    }

    function isFunctionBoundary(node) {
        return ts.isFunctionDeclaration(node) || ts.isFunctionExpression(node) || ts.isArrowFunction(node)
            || ts.isMethodDeclaration(node) || ts.isConstructorDeclaration(node) || ts.isAccessor(node)
            || ts.isClassStaticBlockDeclaration(node) || ts.isPropertyDeclaration(node);
    }

    function guardTransformer(guardsName, errors) {
        return (context) => (sourceFile) => {
            const ls = guardsName + "_ls", lc = guardsName + "_lc", ag = guardsName + "_ag";
            let functionDepth = 0;

            function position(node) {
                return sourceFile.getLineAndCharacterOfPosition(node.getStart(sourceFile));
            }

            function refuseTopLevel(node, what) {
                const { line, character } = position(node);
                errors.push({ line: line + 1, column: character + 1, message:
                    `Top-level ${what} is not supported: plugin code runs as a CommonJS module `
                    + "(move it into an async function such as setupPlugin)" });
            }

            function guard(expression, name) {
                return f.createCallExpression(f.createIdentifier(ag), undefined,
                    [expression, f.createStringLiteral(name)]);
            }

            function guardLoop(loop) {
                const { line, character } = position(loop);
                if (functionDepth === 0 && ts.isForOfStatement(loop) && loop.awaitModifier) {
                    refuseTopLevel(loop, "'for await'");
                }
                const state = f.createUniqueName("__lp");
                const visited = ts.visitEachChild(loop, visit, context);
                const check = f.createExpressionStatement(f.createCallExpression(f.createIdentifier(lc), undefined,
                    [state, f.createNumericLiteral(line + 1), f.createNumericLiteral(character)]));
                const body = visited.statement;
                const newBody = ts.isBlock(body)
                    ? f.updateBlock(body, [check, ...body.statements])
                    : f.createBlock([check, body], true);
                let guarded;
                switch (visited.kind) {
                    case ts.SyntaxKind.ForStatement:
                        guarded = f.updateForStatement(visited, visited.initializer, visited.condition,
                            visited.incrementor, newBody);
                        break;
                    case ts.SyntaxKind.ForInStatement:
                        guarded = f.updateForInStatement(visited, visited.initializer, visited.expression, newBody);
                        break;
                    case ts.SyntaxKind.ForOfStatement:
                        guarded = f.updateForOfStatement(visited, visited.awaitModifier, visited.initializer,
                            visited.expression, newBody);
                        break;
                    case ts.SyntaxKind.WhileStatement:
                        guarded = f.updateWhileStatement(visited, visited.expression, newBody);
                        break;
                    case ts.SyntaxKind.DoStatement:
                        guarded = f.updateDoStatement(visited, newBody, visited.expression);
                        break;
                    default:
                        throw new Error("unexpected loop kind " + visited.kind);
                }
                const start = f.createVariableStatement(undefined, f.createVariableDeclarationList(
                    [f.createVariableDeclaration(state, undefined, undefined,
                        f.createCallExpression(f.createIdentifier(ls), undefined, []))],
                    ts.NodeFlags.Const));
                return [start, guarded];
            }

            // `a: b: while (...)`: the loop state goes before the labels, or `continue a` would break.
            function guardLabeledLoop(node) {
                if (ts.isLabeledStatement(node)) {
                    const inner = guardLabeledLoop(node.statement);
                    return [inner[0], f.updateLabeledStatement(node, node.label, inner[1])];
                }
                return guardLoop(node);
            }

            function innermostLabeled(node) {
                while (ts.isLabeledStatement(node)) node = node.statement;
                return node;
            }

            function isThenCall(node) {
                const callee = node.expression;
                return ts.isPropertyAccessExpression(callee) && ts.isIdentifier(callee.name)
                    && callee.name.text === "then" && callee.expression.kind !== ts.SyntaxKind.SuperKeyword
                    // `a?.b.then()` continues an optional chain: wrapping `a?.b` would end the chain.
                    && !((callee.flags & ts.NodeFlags.OptionalChain) && !callee.questionDotToken);
            }

            function visit(node) {
                // Types are erased anyway (`extends Base<T>` is an expression, so it is visited).
                if ((ts.isTypeNode(node) && !ts.isExpressionWithTypeArguments(node))
                    || ts.isInterfaceDeclaration(node) || ts.isTypeAliasDeclaration(node)) {
                    return node;
                }
                if (ts.isIterationStatement(node, false)) {
                    return guardLoop(node);
                }
                if (ts.isLabeledStatement(node) && ts.isIterationStatement(innermostLabeled(node), false)) {
                    return guardLabeledLoop(node);
                }
                if (ts.isAwaitExpression(node)) {
                    if (functionDepth === 0) refuseTopLevel(node, "'await'");
                    const name = callerName(sourceFile, node.expression);
                    return f.updateAwaitExpression(node, guard(ts.visitNode(node.expression, visit), name));
                }
                if (ts.isCallExpression(node) && isThenCall(node)) {
                    const callee = node.expression;
                    const name = callerName(sourceFile, callee.expression);
                    const target = guard(ts.visitNode(callee.expression, visit), name);
                    const args = ts.visitNodes(node.arguments, visit);
                    if (ts.isPropertyAccessChain(callee)) {
                        const newCallee = f.updatePropertyAccessChain(callee, target, callee.questionDotToken, callee.name);
                        return f.updateCallChain(node, newCallee, node.questionDotToken, node.typeArguments, args);
                    }
                    const newCallee = f.updatePropertyAccessExpression(callee, target, callee.name);
                    return ts.isCallChain(node)
                        ? f.updateCallChain(node, newCallee, node.questionDotToken, node.typeArguments, args)
                        : f.updateCallExpression(node, newCallee, node.typeArguments, args);
                }
                if (isFunctionBoundary(node)) {
                    functionDepth++;
                    try {
                        return ts.visitEachChild(node, visit, context);
                    } finally {
                        functionDepth--;
                    }
                }
                return ts.visitEachChild(node, visit, context);
            }

            const visited = ts.visitEachChild(sourceFile, visit, context);
            const statements = visited.statements;
            let prologueEnd = 0;
            while (prologueEnd < statements.length && ts.isPrologueDirective(statements[prologueEnd])) prologueEnd++;
            const member = (name) => f.createPropertyAccessExpression(f.createIdentifier(guardsName), name);
            const bindings = f.createVariableStatement(undefined, f.createVariableDeclarationList([
                f.createVariableDeclaration(ls, undefined, undefined, member("loopStart")),
                f.createVariableDeclaration(lc, undefined, undefined, member("loopCheck")),
                f.createVariableDeclaration(ag, undefined, undefined, member("asyncGuard")),
            ], ts.NodeFlags.Const));
            return f.updateSourceFile(visited, [
                ...statements.slice(0, prologueEnd), bindings, ...statements.slice(prologueEnd),
            ]);
        };
    }

    // Runs after TypeScript's CommonJS transform: collects the module names of `require("...")`
    // calls with a literal argument (imports included), in order of first appearance.
    function requireCollector(requires) {
        return () => (sourceFile) => {
            const seen = new Set();
            const visit = (node) => {
                if (ts.isCallExpression(node) && ts.isIdentifier(node.expression)
                    && ts.idText(node.expression) === "require" && node.arguments.length >= 1) {
                    const first = node.arguments[0];
                    if ((ts.isStringLiteral(first) || ts.isNoSubstitutionTemplateLiteral(first)) && !seen.has(first.text)) {
                        seen.add(first.text);
                        requires.push(first.text);
                    }
                }
                ts.forEachChild(node, visit);
            };
            ts.forEachChild(sourceFile, visit);
            return sourceFile;
        };
    }

    function transpileAs(source, fileName, guardsName) {
        const errors = [];
        const requires = [];
        const result = ts.transpileModule(source, {
            fileName,
            reportDiagnostics: true,
            compilerOptions: COMPILER_OPTIONS,
            transformers: { before: [guardTransformer(guardsName, errors)], after: [requireCollector(requires)] },
        });
        const diagnostics = [];
        for (const d of result.diagnostics || []) {
            if (d.category !== ts.DiagnosticCategory.Error) continue;
            let line = 0, column = 0;
            if (d.file && d.start !== undefined) {
                const lc = d.file.getLineAndCharacterOfPosition(d.start);
                line = lc.line + 1;
                column = lc.character + 1;
            }
            diagnostics.push({ line, column, code: d.code,
                message: ts.flattenDiagnosticMessageText(d.messageText, "\n") });
        }
        // Syntax errors first: a transform of a broken tree may report noise.
        const mappings = result.sourceMapText ? JSON.parse(result.sourceMapText).mappings : "";
        return { code: result.outputText.replace(SOURCE_MAP_COMMENT, "\n"), mappings, requires,
            errors: diagnostics.length ? diagnostics : errors };
    }

    globalThis.__compilePlugin = function (source, kind, guardsName) {
        let result = transpileAs(source, kind === "ts" ? "plugin.ts" : "plugin.js", guardsName);
        if (kind !== "ts" && result.errors.length) {
            const asTypeScript = transpileAs(source, "plugin.ts", guardsName);
            // Broken either way: report the JS parser's own errors, not its "X can only be used in
            // TypeScript files" (codes 8xxx), unless those are all it found.
            const jsErrors = result.errors.filter((e) => !(e.code >= 8000 && e.code < 9000));
            if (!asTypeScript.errors.length) result = asTypeScript;
            else result = { code: "", mappings: "", requires: [], errors: jsErrors.length ? jsErrors : asTypeScript.errors };
        }
        return JSON.stringify(result);
    };
})();
"""


@dataclass(frozen=True)
class Transpiled:
    """A transpiled source: the module body, the names it `require`s with a literal (imports
    included, type-only imports not) in order of first appearance, and the source map's `mappings`
    from the body back to the source (see line_map)."""

    code: str
    requires: tuple[str, ...]
    mappings: str = ""


@dataclass(frozen=True)
class TranspileDiagnostic:
    """One error in plugin source: 1-based line and column (0 when the compiler gave no position)."""

    line: int
    column: int
    message: str


class PluginTranspileError(Exception):
    """Plugin source that cannot be transpiled, e.g. a syntax error; `str()` names file, line and column."""

    def __init__(self, file_name: str, diagnostics: list[TranspileDiagnostic]) -> None:
        self.file_name = file_name
        self.diagnostics = diagnostics
        first = diagnostics[0]
        self.line = first.line
        self.column = first.column
        self.message = first.message
        more = f" (and {len(diagnostics) - 1} more errors)" if len(diagnostics) > 1 else ""
        where = f"{file_name}:{first.line}:{first.column}" if first.line else file_name
        super().__init__(f"{where}: {first.message}{more}")


def typescript_path() -> Path:
    """typescriptServices.js inside the installed dukpy package (TypeScript 5.x)."""
    import dukpy  # imported here: only its files are needed, not its Duktape interpreter

    path = Path(dukpy.__file__).parent / "jsmodules" / "typescriptServices.js"
    if not path.is_file():
        raise FileNotFoundError(f"the TypeScript compiler is missing from the dukpy package: {path}")
    return path


_BASE64 = {
    char: value
    for value, char in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
}


def _vlq(segment: str) -> list[int]:
    """The numbers of one source map segment (base64 VLQ)."""
    numbers, value, shift = [], 0, 0
    for char in segment:
        digit = _BASE64[char]
        value += (digit & 31) << shift
        if digit & 32:
            shift += 5
            continue
        numbers.append(-(value >> 1) if value & 1 else value >> 1)
        value, shift = 0, 0
    return numbers


def line_map(mappings: str) -> list[list[list[int]]]:
    """A source map's `mappings` as, for each generated line (0-based), its segments
    [generated column, source line, source column] (0-based, as source maps count)."""
    lines: list[list[list[int]]] = []
    source_line = source_column = 0
    for line in mappings.split(";"):
        column = 0
        segments = []
        for segment in filter(None, line.split(",")):
            numbers = _vlq(segment)
            column += numbers[0]
            if len(numbers) >= 4:
                source_line += numbers[2]
                source_column += numbers[3]
                segments.append([column, source_line, source_column])
        lines.append(segments)
    return lines


def guards_js() -> str:
    """Source of guards.js: a JS expression whose value is `createPluginGuards({timeoutMs})`."""
    return js_source("guards")


def wrap_module(code: str, guards_name: str, expose: Sequence[str] = ()) -> str:
    """The module function expression around transpiled code (see the module docstring).

    With `expose`, the function returns an object with those top-level bindings of the plugin
    (undefined where there is none): the original's "global" export destination.
    """
    for name in (guards_name, *expose):
        if not _IDENTIFIER.match(name):
            raise ValueError(f"not a JS identifier: {name!r}")
    params = ", ".join((*MODULE_PARAMETERS, guards_name))
    trailer = ""
    if expose:
        fields = ", ".join(f'{name}: typeof {name} === "undefined" ? undefined : {name}' for name in expose)
        trailer = f"\n;return {{ {fields} }};"
    return f"(function ({params}) {{{code}{trailer}\n}})"


class Transpiler:
    """Transpiles plugin sources in one lazily started compiler isolate, caching results by content.

    Thread-safe; compiles run one at a time. `transpile()` blocks (about 200 ms the first time in a
    process to load the compiler, then a few ms per uncached source); in a coroutine, prefer
    `transpile_async()`.
    """

    def __init__(self, *, guards_name: str | None = None, cache_size: int = 256) -> None:
        name = guards_name or f"__pluginGuards_{secrets.token_hex(8)}"
        if not _IDENTIFIER.match(name):
            raise ValueError(f"guards_name must be a JS identifier, not {name!r}")
        self.guards_name = name
        self.cache_size = cache_size
        self.load_seconds: float | None = None
        self._cache: OrderedDict[bytes, Transpiled] = OrderedDict()
        self._lock = threading.Lock()
        self._racer: MiniRacer | None = None
        self._compile: JSFunction | None = None
        self._pid = 0
        self._atexit_registered = False

    def wrap(self, code: str, expose: Sequence[str] = ()) -> str:
        """`wrap_module(code, self.guards_name, expose)`."""
        return wrap_module(code, self.guards_name, expose)

    def cached(self, source: str, file_name: str) -> Transpiled | None:
        """The cached result for this source, if any, without compiling."""
        key = self._key(source, file_name)
        with self._lock:
            return self._cached_locked(key)

    def transpile(self, source: str, file_name: str) -> str:
        """Guarded CommonJS for `source`; raises PluginTranspileError on a syntax error."""
        return self.transpile_module(source, file_name).code

    def transpile_module(self, source: str, file_name: str) -> Transpiled:
        """Guarded CommonJS for `source` and what it requires; raises PluginTranspileError on a syntax error."""
        key = self._key(source, file_name)
        with self._lock:
            transpiled = self._cached_locked(key)
            if transpiled is not None:
                return transpiled
            transpiled = self._compile_locked(source, file_name)
            self._cache[key] = transpiled
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return transpiled

    async def transpile_async(self, source: str, file_name: str) -> str:
        """Like transpile(), but a cache miss compiles in a thread, off the event loop."""
        return (await self.transpile_module_async(source, file_name)).code

    async def transpile_module_async(self, source: str, file_name: str) -> Transpiled:
        """Like transpile_module(), but a cache miss compiles in a thread, off the event loop."""
        transpiled = self.cached(source, file_name)
        if transpiled is not None:
            return transpiled
        return await asyncio.to_thread(self.transpile_module, source, file_name)

    def close(self) -> None:
        """Stop the compiler isolate (a later transpile() starts a new one). The cache is kept."""
        with self._lock:
            self._drop_locked(close=True)

    def _cached_locked(self, key: bytes) -> Transpiled | None:
        transpiled = self._cache.get(key)
        if transpiled is not None:
            self._cache.move_to_end(key)
        return transpiled

    def _key(self, source: str, file_name: str) -> bytes:
        digest = hashlib.sha256(file_name.encode())
        digest.update(b"\0")
        digest.update(source.encode("utf-8", "surrogatepass"))
        return digest.digest()

    def _compile_locked(self, source: str, file_name: str) -> Transpiled:
        compile_fn = self._compiler_locked()
        racer = self._racer
        kind = "ts" if file_name.lower().endswith(_TS_SUFFIXES) else "js"
        try:
            raw = compile_fn(source, kind, self.guards_name, timeout_sec=COMPILE_TIMEOUT_SECONDS)
        except JSTimeoutException as error:
            # A compiler stuck this long is a compiler bug. Its isolate may still be busy, and closing
            # a busy isolate hangs, so it is left behind; the next call starts a new one.
            self._drop_locked(close=False)
            raise PluginTranspileError(file_name, [_compiler_failure("timed out", error)]) from error
        except JSEvalException as error:
            if isinstance(error, JSOOMException) or (
                racer is not None and racer.was_hard_memory_limit_reached()
            ):
                self._drop_locked(close=True)  # an isolate that reached its memory limit is dead
                limit = f"TypeScript compiler ran out of memory ({COMPILER_MEMORY_LIMIT >> 20} MiB)"
                raise PluginTranspileError(file_name, [TranspileDiagnostic(0, 0, limit)]) from error
            raise PluginTranspileError(file_name, [_compiler_failure("failed", error)]) from error
        if not isinstance(raw, str):
            raise TypeError(f"compiler returned {type(raw).__name__}, not a JSON string")
        result: dict[str, Any] = json.loads(raw)
        errors = [TranspileDiagnostic(e["line"], e["column"], e["message"]) for e in result["errors"]]
        if errors:
            raise PluginTranspileError(file_name, errors)
        return Transpiled(
            code=result["code"], requires=tuple(result["requires"]), mappings=result["mappings"]
        )

    def _compiler_locked(self) -> JSFunction:
        if self._compile is not None and self._pid == os.getpid():
            return self._compile
        if self._racer is not None:  # created before a fork: unusable here
            self._drop_locked(close=False)
        started = time.perf_counter()
        # A MiniRacer binds to the asyncio loop running where it is created, and breaks once that loop
        # closes. Created in a fresh thread it runs its own loop thread, usable from anywhere.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ts-compiler") as pool:
            racer = pool.submit(new_racer).result()
        racer.set_hard_memory_limit(COMPILER_MEMORY_LIMIT)
        racer.eval(typescript_path().read_text(encoding="utf-8"))
        racer.eval(_COMPILER_JS)
        compile_fn = racer.eval("__compilePlugin")
        if not isinstance(compile_fn, JSFunction):
            raise TypeError("the compiler driver did not define __compilePlugin")
        self._racer, self._compile, self._pid = racer, compile_fn, os.getpid()
        self.load_seconds = time.perf_counter() - started
        if not self._atexit_registered:
            # Left to the garbage collector at interpreter exit, closing an isolate can hang.
            atexit.register(self.close)
            self._atexit_registered = True
        return compile_fn

    def _drop_locked(self, *, close: bool) -> None:
        """Forget the compiler isolate; close it only if it is idle and was created by this process."""
        racer, compile_fn = self._racer, self._compile
        self._racer = None
        self._compile = None
        if racer is None:
            return
        if close and self._pid == os.getpid():
            racer.close()
        else:
            _abandoned.append((racer, compile_fn))


def _compiler_failure(what: str, error: Exception) -> TranspileDiagnostic:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return TranspileDiagnostic(0, 0, f"TypeScript compiler {what}: {first_line}")


_shared: Transpiler | None = None
_shared_lock = threading.Lock()


def get_transpiler() -> Transpiler:
    """The process-wide transpiler (one compiler isolate and one cache per process)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Transpiler()
        return _shared
