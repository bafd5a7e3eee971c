"""The plugin runtimes, by the language `resolve_plugin_code` finds (the extension of plugin.json's
`main`, loader.LANGUAGES): adding a runtime is adding a row, with a loader of the one signature
`instance.Loader` and what it prepares ahead (`instance.Preparer`)."""

from __future__ import annotations

from plugin_server.plugins.instance import Runtime, nothing_to_prepare
from plugin_server.plugins.js.runtime import load_js_plugin, prepare_js_code
from plugin_server.plugins.models import Language
from plugin_server.plugins.runtime_py import load_python_plugin

RUNTIMES: dict[Language, Runtime] = {
    "python": Runtime(load_python_plugin, nothing_to_prepare),
    "js": Runtime(load_js_plugin, prepare_js_code),
}
