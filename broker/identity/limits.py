"""Request limits, answered 429 with Retry-After.

Slowing down credential guessing (:class:`FailureLimiter`): after too many failed authentications from one
address in a window, that address gets 429 with Retry-After until the window has moved on. Request rates
(:class:`RequestRate`): per Antenna, and per caller where the broker is configured with one.

Kept in memory, per broker process (a guessing client meets each replica's own limit); the check costs a
dictionary lookup, so successful requests stay cheap. Failures are counted by the client's address only,
never by the presented token, so a flood of random tokens is limited as one source.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


class FailureLimiter:
    """At most ``max_failures`` failed authentications per ``window_s`` from one source."""

    def __init__(
        self,
        max_failures: int,
        window_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_sources: int = 100_000,
    ) -> None:
        self._max = max_failures
        self._window = window_s
        self._clock = clock
        self._max_sources = max_sources
        self._failures: dict[str, deque[float]] = {}

    def retry_after_s(self, source: str | None) -> int | None:
        """Seconds until ``source`` may try again, or None when it may try now."""
        recent = self._recent(source)
        if recent is None or len(recent) < self._max:
            return None
        return max(1, math.ceil(recent[0] + self._window - self._clock()))

    def failed(self, source: str | None) -> None:
        if source is None:
            return
        if source not in self._failures and len(self._failures) >= self._max_sources:
            self._forget_quiet_sources()
        self._failures.setdefault(source, deque()).append(self._clock())
        self._recent(source)

    def _recent(self, source: str | None) -> deque[float] | None:
        if source is None or source not in self._failures:
            return None
        recent = self._failures[source]
        horizon = self._clock() - self._window
        while recent and recent[0] <= horizon:
            recent.popleft()
        while len(recent) > self._max:
            recent.popleft()
        return recent

    def _forget_quiet_sources(self) -> None:
        horizon = self._clock() - self._window
        for source in [s for s, times in self._failures.items() if not times or times[-1] <= horizon]:
            del self._failures[source]


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class RequestRate:
    """At most ``per_minute`` requests per minute per key (an Antenna, a caller), with bursts up to
    ``per_minute``: a token bucket per key, refilled continuously. In memory, per broker process, like
    :class:`FailureLimiter`: with N replicas a key may reach N times its rate, which an operator sizes for."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str, per_minute: int) -> float | None:
        """Spend one request of ``key``; None if allowed, else the seconds until one is available."""
        now = self._clock()
        bucket = self._buckets.setdefault(key, _Bucket(tokens=float(per_minute), at=now))
        rate = per_minute / 60.0
        bucket.tokens = min(float(per_minute), bucket.tokens + (now - bucket.at) * rate)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / rate if rate > 0 else 60.0


__all__ = ["FailureLimiter", "RequestRate"]
