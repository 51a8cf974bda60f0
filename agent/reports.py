"""Reports waiting to reach the broker: kept in order until a request carrying them succeeds.

Reports are facts the broker applies idempotently (by order id), so sending one twice is harmless and losing
one is not: a batch leaves the queue only when the broker answered it. Nothing is kept across restarts (the
broker settles what it never heard of by looking the attempt up at the site).
"""

from __future__ import annotations

import asyncio
from collections import deque

from slurm_adapters.agent_protocol import Report


class ReportQueue:
    def __init__(self) -> None:
        self._items: deque[Report] = deque()
        self._ready = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()

    def put(self, report: Report) -> None:
        self._items.append(report)
        self._ready.set()
        self._empty.clear()

    def __len__(self) -> int:
        return len(self._items)

    def peek(self, limit: int) -> list[Report]:
        """The oldest ``limit`` reports, still queued."""
        return [self._items[index] for index in range(min(limit, len(self._items)))]

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
