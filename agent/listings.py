"""Pushing Slurm's view of the Factory's active jobs to the broker, as the session's listing plan says.

A numbered full snapshot first, then deltas against it: only the jobs new or changed since the last listing the
broker applied. A full snapshot again after any gap (a push not known to be applied), when the broker asks for
one, after a restart (nothing is kept) and at least every ``full_every_s``. A delta never says that a job is
gone: the broker concludes absence only from a full snapshot. ``listed_at`` is taken, on the broker's clock as
this agent knows it, before Slurm is asked, so every job in the listing was already listed when it began.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.clock import BrokerClock
from slurm_adapters import codec
from slurm_adapters.agent_protocol import MAX_LISTED, Listing, ListingAnswer, PushPlan
from slurm_adapters.interface import SlurmAdapter

SNAPSHOT_BITS = 53  # an OrderId: exact in every JSON parser


class ListingTooLarge(Exception):
    """More active jobs than one listing may carry: nothing is pushed (the broker asks by read order)."""


@dataclass(frozen=True, slots=True)
class _Base:
    """The last listing the broker applied: what the next delta is taken against."""

    snapshot: int
    seq: int
    jobs: dict[int, dict[str, Any]]
    full_at: float  # monotonic time of its snapshot's full listing


class ListingPusher:
    """The listing side of one agent: :meth:`take` the next listing, :meth:`answered` with the broker's answer,
    :meth:`forget` after a gap (the next one is full)."""

    def __init__(
        self, adapter: SlurmAdapter, clock: BrokerClock, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.adapter = adapter
        self.clock = clock
        self.monotonic = monotonic
        self._base: _Base | None = None
        self.full_sent = 0
        self.deltas_sent = 0

    def forget(self) -> None:
        self._base = None

    async def take(self, plan: PushPlan) -> tuple[Listing, dict[int, dict[str, Any]]]:
        """The next listing (full or delta) and every job it stands for."""
        listed_at = self.clock.broker_now()
        records = await self.adapter.list_jobs(tag_prefix=plan.tag_prefix)
        if len(records) > MAX_LISTED:
            raise ListingTooLarge(f"{len(records)} active jobs, more than one listing carries ({MAX_LISTED})")
        jobs = {record.job_id: codec.record_to_json(record) for record in records}
        base = self._base
        if base is None or self.monotonic() - base.full_at >= plan.full_every_s:
            snapshot = secrets.randbits(SNAPSHOT_BITS)
            while base is not None and snapshot == base.snapshot:
                snapshot = secrets.randbits(SNAPSHOT_BITS)
            self.full_sent += 1
            return Listing(snapshot=snapshot, seq=0, listed_at=listed_at, jobs=list(jobs.values())), jobs
        changed = [data for job_id, data in jobs.items() if base.jobs.get(job_id) != data]
        self.deltas_sent += 1
        return Listing(snapshot=base.snapshot, seq=base.seq + 1, listed_at=listed_at, jobs=changed), jobs

    def answered(self, listing: Listing, jobs: dict[int, dict[str, Any]], answer: ListingAnswer) -> None:
        """Take the broker's answer: an applied listing is the next delta's base; ``want_full`` drops the base."""
        if answer.applied:
            base = self._base
            full_at = self.monotonic() if listing.full or base is None else base.full_at
            self._base = _Base(listing.snapshot, listing.seq, jobs, full_at)
        elif answer.want_full:
            self._base = None


__all__ = ["ListingPusher", "ListingTooLarge"]
