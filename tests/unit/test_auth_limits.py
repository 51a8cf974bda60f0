"""The failed-authentication limiter (broker.identity.limits) on a fake clock: a window per source address."""

from __future__ import annotations

from broker.identity.limits import FailureLimiter
from tests.clocks import ManualClock


def test_a_source_is_held_back_after_too_many_failures_until_its_window_moves_on() -> None:
    clock = ManualClock(1000.0)
    limiter = FailureLimiter(3, 60.0, clock=clock)
    for _ in range(3):
        assert limiter.retry_after_s("10.0.0.1") is None
        limiter.failed("10.0.0.1")
        clock.now += 1
    assert limiter.retry_after_s("10.0.0.1") == 57  # the first failure leaves the window at 1060
    assert limiter.retry_after_s("10.0.0.2") is None  # another address is not affected
    clock.now = 1060.5
    assert limiter.retry_after_s("10.0.0.1") is None


def test_unknown_sources_are_never_limited_and_quiet_sources_are_forgotten() -> None:
    clock = ManualClock(1000.0)
    limiter = FailureLimiter(1, 10.0, clock=clock, max_sources=2)
    limiter.failed(None)
    assert limiter.retry_after_s(None) is None
    limiter.failed("a")
    limiter.failed("b")
    clock.now += 11
    limiter.failed("c")  # full: the quiet "a" and "b" are dropped first
    assert limiter.retry_after_s("a") is None
    assert limiter.retry_after_s("c") == 10
