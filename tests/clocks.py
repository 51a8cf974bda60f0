"""A clock that moves only when a test moves it: limits, caches and key refetches without sleeping."""

from __future__ import annotations


class ManualClock:
    """Seconds on a monotonic scale (what ``time.monotonic`` gives), from ``start``."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
