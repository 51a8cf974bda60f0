"""Reports waiting to reach the broker: kept in order until a request carrying them succeeds.

Reports are facts the broker applies idempotently (by order id), so sending one twice is harmless and losing
one is not: a batch leaves the queue only when the broker answered it. A batch is bounded by count and by bytes
(at least one report), so large listings never make a request the broker refuses as too large; a single report
it still refuses so is replaced by a failure report (:meth:`ReportQueue.replace_oldest`). Nothing is kept across
restarts (the broker settles what it never heard of by looking the attempt up at the site).
"""

from __future__ import annotations

import asyncio
from collections import deque

from slurm_adapters.agent_protocol import Report


class ReportQueue:
    def __init__(self) -> None:
        self._items: deque[tuple[Report, int, int | None]] = deque()  # each report, its JSON size, its batch
        self._ready = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()

    def put(self, report: Report, batch: int | None = None) -> None:
        """Queue ``report``; ``batch`` is the agent's number of the orders it was carried out with (if any)."""
        self._items.append((report, len(report.model_dump_json()), batch))
        self._ready.set()
        self._empty.clear()

    def __len__(self) -> int:
        return len(self._items)

    def peek(self, limit: int, max_bytes: int | None = None) -> list[Report]:
        """The oldest reports, still queued: at most ``limit`` and, beyond the first, ``max_bytes`` of JSON."""
        batch: list[Report] = []
        size = 0
        for report, report_size, _ in self._items:
            if len(batch) >= limit or (batch and max_bytes is not None and size + report_size > max_bytes):
                break
            batch.append(report)
            size += report_size
        return batch

    def replace_oldest(self, report: Report) -> None:
        """Put ``report`` in place of the oldest queued one (the broker refused that one alone)."""
        self._items[0] = (report, len(report.model_dump_json()), self._items[0][2])

    def batches(self) -> set[int]:
        """The batches of the queued reports."""
        return {batch for _, _, batch in self._items if batch is not None}

    def done(self, count: int) -> None:
        """The oldest ``count`` reports reached the broker."""
        for _ in range(count):
            self._items.popleft()
        if not self._items:
            self._ready.clear()
            self._empty.set()

    async def wait(self) -> None:
        """Until at least one report is queued."""
        await self._ready.wait()

    async def empty(self) -> None:
        """Until every queued report has reached the broker."""
        await self._empty.wait()
