"""Durable plugin jobs (runNow/runIn/runAt) and scheduled tasks (runEveryMinute/Hour/Day)."""
