"""What one process's side of the agent link counted, per agent Factory, for ``/metrics``.

Counted where it happens (the order mailbox, the listings), in memory, with no database write: orders written
by kind, orders delivered (first hand-out only), reports applied and ignored, listings pushed (full or delta,
applied or not) and the jobs they carried, reads (listing, health, cluster info) served from a push or sent as
an order, and two
latencies as histograms: from an order's creation to its first delivery, and from its delivery to the report
that answered it. Labels are the
Factory id and the order kind only (both bounded by the Factory file), so the series stay few. The counts are
this process's, like the other counters of ``/metrics``: a scraper sums them over replicas.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

# Seconds: a long poll delivers in milliseconds, a submit may take a Slurm call's deadline (up to minutes).
LATENCY_BUCKETS_S: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(slots=True)
class Histogram:
    """Observations in cumulative-to-be buckets (``counts[i]``: observations <= ``LATENCY_BUCKETS_S[i]``
    and above the bucket before; the last slot is above every bound), their sum and count."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        self.counts[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self.total += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it), ending with +Inf = the count."""
        running, result = 0, []
        for bound, n in zip((*LATENCY_BUCKETS_S, float("inf")), self.counts, strict=True):
            running += n
            result.append((bound, running))
        return result


Key = tuple[str, str]  # (Factory id, order kind) or (Factory id, report outcome)


class AgentMetrics:
    """The link's counters; every method is a few dictionary updates (no I/O, no lock: one event loop)."""

    def __init__(self) -> None:
        self.orders_written: Counter[Key] = Counter()
        self.orders_delivered: Counter[Key] = Counter()
        self.reports: Counter[Key] = Counter()  # (Factory, "applied" | "ignored")
        self.listings: Counter[tuple[str, str, str]] = Counter()  # (Factory, "full" | "delta", "applied" | ...)
        self.listed_jobs: Counter[str] = Counter()  # jobs carried by applied listings, per Factory
        self.served_reads: Counter[tuple[str, str, str]] = Counter()  # (Factory, what, "push" | "order")
        self.delivery_latency: dict[Key, Histogram] = {}
        self.answer_latency: dict[Key, Histogram] = {}

    def written(self, factory_id: str, kind: str) -> None:
        self.orders_written[(factory_id, kind)] += 1

    def delivered(self, factory_id: str, kind: str, created_at: datetime, now: datetime) -> None:
        self.orders_delivered[(factory_id, kind)] += 1
        self.delivery_latency.setdefault((factory_id, kind), Histogram()).observe((now - created_at).total_seconds())

    def answered(self, factory_id: str, kind: str, delivered_at: datetime, now: datetime) -> None:
        self.answer_latency.setdefault((factory_id, kind), Histogram()).observe((now - delivered_at).total_seconds())

    def reported(self, factory_id: str, *, applied: int, ignored: int) -> None:
        self.reports[(factory_id, "applied")] += applied
        self.reports[(factory_id, "ignored")] += ignored

    def listed(self, factory_id: str, *, full: bool, applied: bool, jobs: int) -> None:
        self.listings[(factory_id, "full" if full else "delta", "applied" if applied else "refused")] += 1
        if applied:
            self.listed_jobs[factory_id] += jobs

    def served(self, factory_id: str, what: str, *, from_push: bool) -> None:
        """A read (``what``: listing, health, cluster_info) served from a push, or sent as an order."""
        self.served_reads[(factory_id, what, "push" if from_push else "order")] += 1


__all__ = ["LATENCY_BUCKETS_S", "AgentMetrics", "Histogram"]
