"""Exponential backoff with full jitter, bounded by a deadline.

Full jitter (a uniform delay between 0 and the exponential bound) keeps a fleet of children that
booted together from hammering a recovering parent in lock-step.
"""

import secrets
import time
from dataclasses import dataclass, field

BASE_DELAY = 0.5
MAX_DELAY = 30.0
_random = secrets.SystemRandom()


@dataclass
class Backoff:
    """Delays between attempts; ``deadline`` is a ``time.monotonic()`` value."""

    deadline: float
    base: float = BASE_DELAY
    cap: float = MAX_DELAY
    failures: int = 0
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def for_seconds(cls, seconds: float) -> "Backoff":
        return cls(deadline=time.monotonic() + seconds)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def next_delay(self, at_least: float | None = None) -> float | None:
        """Seconds to wait before the next attempt, or None once the deadline has passed.

        The last delay is cut short so that one final attempt happens at the deadline itself.
        ``at_least`` honours a server's Retry-After, still bounded by the cap.
        """
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            return None
        bound = min(self.cap, self.base * 2**self.failures)
        self.failures += 1
        delay = _random.uniform(0, bound)
        if at_least is not None:
            delay = max(delay, min(at_least, self.cap))
        return min(delay, remaining)
