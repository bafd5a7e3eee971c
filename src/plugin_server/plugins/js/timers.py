"""Limits on a plugin's timers (setTimeout, setInterval, setImmediate), so that timers cannot pin a worker.

- At most `max_timers` plugin timers are pending in an isolate at once: one more throws a RangeError in
  the plugin (prelude.js) and the refusal is recorded as the plugin config's error.
- Firings are delivered in rounds, at most one round every `min_interval` seconds: all the timers due
  by then fire in the same round, so a zero-delay interval (or a chain of zero-delay timeouts, or a
  promise loop around them) fires at most 1 / min_interval times a second.
- The time the isolate spends running a round is charged to the plugin, in a budget that refills at
  `cpu_share` of the wall clock and holds TASK_TIMEOUT seconds: timers that keep the isolate busy more
  than that share of the time for long enough (or one callback that runs for TASK_TIMEOUT) overdraw
  it, and then the plugin's timers are all cleared and the error is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TimerLimits:
    max_timers: int = 100
    min_interval: float = 0.01
    cpu_share: float = 0.1


DEFAULT_TIMER_LIMITS = TimerLimits()


class TimerBudget:
    """The time a plugin's timer callbacks may still use: `capacity` seconds, refilled at `share`
    seconds per second."""

    def __init__(self, capacity: float, share: float, now: float) -> None:
        self._capacity = capacity
        self._share = share
        self._spent = 0.0
        self._at = now

    def charge(self, seconds: float, now: float) -> bool:
        """Spend `seconds`; False when that overdraws the budget (which then starts full again)."""
        self._spent = max(0.0, self._spent - (now - self._at) * self._share) + seconds
        self._at = now
        if self._spent > self._capacity:
            self._spent = 0.0
            return False
        return True
