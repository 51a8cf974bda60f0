"""The agent's view of the broker's clock: the offset measured at every answer that carries the broker's time.

Orders are bound to ``not_after`` in broker time. The agent converts with the last measured offset and takes
no orders while it is unknown or larger than the Factory's ``clock_skew_s``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from slurm_adapters.agent_protocol import offset_s


def utc_now() -> datetime:
    return datetime.now(UTC)


class BrokerClock:
    """Own clock plus the broker's measured offset; ``skew_s`` is the largest offset orders are taken at."""

    def __init__(self, now: Callable[[], datetime] = utc_now) -> None:
        self.now = now
        self.offset_s: float | None = None
        self.skew_s = 0.0

    def observe(self, broker_time: datetime, sent: datetime, received: datetime) -> float:
        """Record one round trip's offset and return it."""
        self.offset_s = offset_s(broker_time, sent, received)
        return self.offset_s

    def broker_now(self) -> datetime:
        """The broker's clock now, as far as this agent can tell (own clock while no offset is known)."""
        return self.now() + timedelta(seconds=self.offset_s or 0.0)

    @property
    def in_sync(self) -> bool:
        """Whether orders may be taken: an offset is known and within the allowed skew."""
        return self.offset_s is not None and abs(self.offset_s) <= self.skew_s
