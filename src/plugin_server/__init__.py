"""plugin-server: a Python successor to the PostHog Plugin Server."""

__version__ = "0.1.0"
