"""The HTTP front door: capture API, health, metrics and the operator API."""
