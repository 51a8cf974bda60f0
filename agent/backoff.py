"""Waiting after failures: exponential back-off with full jitter, cut short by the stop signal."""

from __future__ import annotations

import asyncio
import contextlib
import random


class Backoff:
    """Delays that double from ``base_s`` up to ``cap_s``, each a random fraction of its bound (full jitter),
    so many agents that lost the broker at once do not return at once."""

    def __init__(self, base_s: float = 0.5, cap_s: float = 30.0, rng: random.Random | None = None) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.failures = 0
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not secrecy

    def next_delay(self) -> float:
        bound = min(self.cap_s, self.base_s * 2**self.failures)
        self.failures = min(self.failures + 1, 32)
        return self.rng.uniform(bound / 2, bound)

    def reset(self) -> None:
        self.failures = 0


async def sleep_unless(stop: asyncio.Event, delay_s: float | None) -> bool:
    """Sleep ``delay_s`` (None: without end) unless ``stop`` is set first; True when stopped. A cancel is never
    lost, even one that comes as ``stop`` is set (``asyncio.wait_for`` of Python 3.11 returns then instead)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay_s):
            await stop.wait()
    return stop.is_set()
