"""Group commit: many concurrent writers, one write transaction.

Concurrent writes that each need a transaction of their own (accepted jobs, the dispatcher's attempt and
submission records) would queue one by one behind what they share: SQLite's single writer (and its fsync), and
on PostgreSQL the row lock of a project's allocation. Here a caller queues its item and waits; one drain task
at a time writes everything queued so far in one transaction and then answers each caller. While a batch
commits the next one gathers, so batches grow with the load and no timer delays a lone caller. A caller is
answered only after its batch's commit has returned, so an answer still means a durable write.

Two items with the same ``identity`` (a caller's Idempotency-Key) never share a batch: the later one waits
for the next, where it finds the first one's row.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

# What a batch writer returns per item: its result, or the exception that item's caller is to get.
WriteBatch = Callable[[Sequence[Item]], Awaitable[Sequence[Result | Exception]]]


def _no_identity(_item: object) -> Hashable | None:
    return None


class GroupCommit(Generic[Item, Result]):
    """Queues items from concurrent callers and writes them through ``write_batch``, up to ``max_batch`` at a
    time, one batch at a time (per process: replicas each have their own)."""

    def __init__(
        self,
        write_batch: WriteBatch[Item, Result],
        *,
        max_batch: int,
        identity: Callable[[Item], Hashable | None] = _no_identity,
    ) -> None:
        if max_batch < 1:
            raise ValueError("a batch holds at least one item")
        self._write_batch = write_batch
        self._max_batch = max_batch
        self._identity = identity
        self._pending: deque[tuple[Item, asyncio.Future[Result]]] = deque()
        self._drainer: asyncio.Task[None] | None = None
        self.batches = 0  # batches written since start (with ``items``, the mean batch size for /metrics)
        self.items = 0

    async def submit(self, item: Item) -> Result:
        """Queue ``item`` and wait for its own result (or exception) from the batch that wrote it."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain(), name="group-commit")
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._next_batch()
                if batch:
                    await self._write(batch)
        finally:
            self._drainer = None

    def _next_batch(self) -> list[tuple[Item, asyncio.Future[Result]]]:
        """The oldest queued items, at most one per identity; callers that gave up are dropped unwritten."""
        batch: list[tuple[Item, asyncio.Future[Result]]] = []
        seen: set[Hashable] = set()
        later: deque[tuple[Item, asyncio.Future[Result]]] = deque()
        while self._pending and len(batch) < self._max_batch:
            item, future = self._pending.popleft()
            if future.done():  # cancelled before its turn: nobody waits for it, so it is not written
                continue
            identity = self._identity(item)
            if identity is not None and identity in seen:
                later.append((item, future))
                continue
            if identity is not None:
                seen.add(identity)
            batch.append((item, future))
        self._pending.extendleft(reversed(later))
        return batch

    async def _write(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            results = await self._write_batch([item for item, _ in batch])
        except Exception as exc:  # the whole batch failed: every caller in it gets the error
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:  # cancelled (shutdown): the callers must not wait forever
            for _, future in batch:
                future.cancel()
            raise
        self.batches += 1
        self.items += len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
