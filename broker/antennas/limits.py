"""Per-Antenna request rates: a token bucket per Antenna, refilled at its registered requests per minute.

Kept in memory per broker process, like :mod:`broker.identity.limits`: with N replicas behind a balancer an
Antenna may reach N times its rate, which an operator sizes for. A check is a dictionary lookup and some
arithmetic, so it costs nothing next to the assertion's signature check.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class RequestRate:
    """At most ``per_minute`` requests per minute per Antenna, with bursts up to ``per_minute``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, antenna_id: str, per_minute: int) -> float | None:
        """Spend one request of ``antenna_id``; None if allowed, else the seconds until one is available."""
        now = self._clock()
        bucket = self._buckets.setdefault(antenna_id, _Bucket(tokens=float(per_minute), at=now))
        rate = per_minute / 60.0
        bucket.tokens = min(float(per_minute), bucket.tokens + (now - bucket.at) * rate)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / rate if rate > 0 else 60.0


__all__ = ["RequestRate"]
