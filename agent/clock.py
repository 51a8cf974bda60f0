"""The agent's view of the broker's clock: the offset measured at every answer that carries the broker's time.

Orders are bound to ``not_after`` in broker time. The agent converts with the last measured offset and takes
no orders while it is unknown or larger than the Factory's ``clock_skew_s``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from slurm_adapters.agent_protocol import offset_s

COARSE_S = 2.0  # an HTTP Date is whole seconds, and the round trip adds its own


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

    def resync(self, broker_date: datetime, sent: datetime, received: datetime) -> bool:
        """Adopt a coarse offset from a refusal's HTTP ``Date`` (whole seconds) when the measured one is off by
        more than that: assertions are stamped on the broker's clock as this agent knows it, so a broker clock
        that jumped would otherwise refuse every request, the heartbeat that would measure it included."""
        coarse = offset_s(broker_date, sent, received)
        if self.offset_s is not None and abs(coarse - self.offset_s) <= COARSE_S:
            return False
        self.offset_s = coarse
        return True

    def broker_now(self) -> datetime:
        """The broker's clock now, as far as this agent can tell (own clock while no offset is known)."""
        return self.now() + timedelta(seconds=self.offset_s or 0.0)

    def local(self, broker_time: datetime) -> datetime:
        """A moment of the broker's clock on this host's clock."""
        return broker_time - timedelta(seconds=self.offset_s or 0.0)

    @property
    def in_sync(self) -> bool:
        """Whether orders may be taken: an offset is known and within the allowed skew."""
        return self.offset_s is not None and abs(self.offset_s) <= self.skew_s
