"""Test fixture: a Python plugin that adds a greeting property to every event."""


def process_event(event, meta):
    event["properties"]["greeting"] = meta.config.get("greeting", "hello")
    return event
