"""A failing Python plugin as its author and the operator see it: a line in the server's log naming the
plugin, the function and what happens next; a traceback of the author's own file; and no plugin files
left behind in the temporary folder."""

from __future__ import annotations

from plugin_server.plugins.runtime_py import PLUGIN_FILES

from .plugin_stack import Stack

FAILING = """
    def process_event(event, meta):
        if event["event"] == "bad":
            check(event)
        return event


    def check(event):
        raise ValueError("no good: " + event["distinct_id"])
"""


def test_a_failing_plugin_is_reported_with_its_own_file(stack: Stack) -> None:
    config_id = stack.install("fussy", FAILING)
    with stack.server() as server:
        [worker] = server.worker_pids()
        stack.send("bad", distinct_id="ann")
        stack.send("good", distinct_id="bob")
        assert stack.wait_for_events(2) == 2
        server.wait_for_log(
            f"plugin fussy ({config_id}) failed in processEvent: ValueError: no good: ann; "
            "1 event(s) of the batch go on without its change (not retried)"
        )
        files = PLUGIN_FILES / str(worker)
        assert (
            files / next(p.name for p in files.iterdir() if p.name.startswith("fussy-")) / "index.py"
        ).exists()
        assert server.stop() == 0
    assert not files.exists()  # removed when the worker exited

    error = stack.config_error(config_id)
    assert error is not None
    lines = error["stack"].splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[1] == '  File "fussy/index.py", line 4, in process_event'
    assert '  File "fussy/index.py", line 9, in check' in lines
    assert lines[-1] == "ValueError: no good: ann"
    assert "runtime_py" not in error["stack"] and str(PLUGIN_FILES) not in error["stack"]
