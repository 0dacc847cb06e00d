"""Backoff with full jitter, bounded by a deadline."""

import time

from child_agent.backoff import Backoff


def test_delays_grow_with_full_jitter_up_to_the_cap() -> None:
    backoff = Backoff(deadline=time.monotonic() + 3600, base=0.5, cap=30)
    bounds = [0.5, 1, 2, 4, 8, 16, 30, 30]
    delays = [backoff.next_delay() for _ in bounds]
    assert all(d is not None and 0 <= d <= bound for d, bound in zip(delays, bounds, strict=True))


def test_the_last_delay_lands_on_the_deadline_then_it_stops() -> None:
    backoff = Backoff(deadline=time.monotonic() + 0.2, base=10, cap=30)
    first = backoff.next_delay(at_least=5)
    assert first is not None and first <= 0.2
    time.sleep(first)
    assert backoff.next_delay() is None


def test_retry_after_is_honoured_within_the_cap() -> None:
    backoff = Backoff(deadline=time.monotonic() + 3600, base=0.5, cap=30)
    assert backoff.next_delay(at_least=7) == 7
    assert backoff.next_delay(at_least=600) == 30
