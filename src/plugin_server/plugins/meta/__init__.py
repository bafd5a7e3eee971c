"""The `meta` API that plugins get, shared by the Python and JavaScript runtimes."""
