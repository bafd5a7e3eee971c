"""The plugin runtimes, by the language `resolve_plugin_code` finds (the extension of plugin.json's
`main`, loader.LANGUAGES): adding a runtime is adding a row, with a loader of the one signature
`instance.Loader`."""

from __future__ import annotations

from plugin_server.plugins.instance import Loader
from plugin_server.plugins.js.runtime import load_js_plugin
from plugin_server.plugins.models import Language
from plugin_server.plugins.runtime_py import load_python_plugin

RUNTIMES: dict[Language, Loader] = {
    "python": load_python_plugin,
    "js": load_js_plugin,
}
