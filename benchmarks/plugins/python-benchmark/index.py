"""The work of the original's benchmark plugin: one constant property and an upper-cased copy."""


def process_event(event, meta):
    event["properties"]["processed"] = "hell yes"
    event["properties"]["upperUuid"] = event["uuid"].upper()
    return event
