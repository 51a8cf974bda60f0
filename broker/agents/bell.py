"""Waking the waiters of the agent link (long polls, adapter calls) when something they wait for changed.

Within a process, a write rings the bell itself (:meth:`Bell.ring_orders`, :meth:`Bell.ring_answers`) after
its commit. Writes of other processes (broker replicas on one PostgreSQL) are seen by ONE check per process
every ``interval_s``, shared by all its waiters: the newest open order id of each Factory someone polls, and
which awaited orders have been answered. No waiter, no query; twenty idle long polls cost one small query per
interval. A Factory's order ids are committed in id order (writers serialize per Factory, see
:mod:`broker.agents.orders`), so a new order always changes its Factory's newest open id; an applied push
(a listing, the site's state) always raises its row's ``version`` (:mod:`broker.agents.pushed`).

A waiter registers before it reads the database (:meth:`Bell.listen`), so a ring between its read and its
wait is never lost; a ring may be spurious (the waiter reads again and finds nothing). Leaving the ``async
with`` block, cancelled or not, unregisters it.

An answer applied in this process is handed to its waiters with the ring (:meth:`Bell.hand_answers`): the report
the compare-and-set applied, which is the order's stored report from then on, so they need not read it back.
A waiter handed nothing (the answer came from another process, or before it registered) is rung by the check
and reads the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import TypeVar

from sqlalchemy import String, func, literal, select, union_all
from sqlalchemy.sql import CompoundSelect, Select

from broker.db.engine import Database
from broker.db.models import AgentListing, AgentOrder, AgentSiteState
from slurm_adapters.agent_protocol import Report

log = logging.getLogger(__name__)
_K = TypeVar("_K")


class Signal:
    """One waiter's doorbell: rung by the bell, awaited by its owner; ``answers`` holds the reports handed to it
    (order id -> the report applied in this process)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.answers: dict[int, Report] = {}

    def ring(self) -> None:
        self._event.set()

    async def wait(self, timeout_s: float) -> bool:
        """Whether it rang within ``timeout_s``; a ring is consumed by the wait that sees it. A cancel is never
        lost, even one that comes as it rings (``asyncio.wait_for`` of Python 3.11 returns then instead)."""
        if timeout_s > 0 and not self._event.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._event.wait()
        rang = self._event.is_set()
        self._event.clear()
        return rang


class Bell:
    """The process's bell for the agent link; ``checks`` counts the database checks made so far."""

    def __init__(self, database: Database, interval_s: float) -> None:
        self._db = database
        self._interval_s = interval_s
        self._by_factory: dict[str, set[Signal]] = {}
        self._by_order: dict[int, set[Signal]] = {}
        self._by_pushed: dict[str, set[Signal]] = {}
        self._newest: dict[str, int | None] = {}  # last seen newest open order id per Factory
        self._pushed_versions: dict[tuple[str, str], int | None] = {}  # last seen (kind, Factory) -> version
        self._task: asyncio.Task[None] | None = None
        self.checks = 0

    @contextlib.asynccontextmanager
    async def listen(
        self, *, factory_id: str | None = None, order_ids: Iterable[int] = (), pushed_of: str | None = None
    ) -> AsyncIterator[Signal]:
        """A signal rung when ``factory_id`` gets a new order (or one of its open orders changes), when one
        of ``order_ids`` is answered, or when a push of ``pushed_of``'s agent (listing, site state) is applied."""
        signal = Signal()
        orders = list(order_ids)
        if factory_id is not None:
            self._by_factory.setdefault(factory_id, set()).add(signal)
        for order_id in orders:
            self._by_order.setdefault(order_id, set()).add(signal)
        if pushed_of is not None:
            self._by_pushed.setdefault(pushed_of, set()).add(signal)
        self._ensure_checking()
        try:
            yield signal
        finally:
            if factory_id is not None:
                _discard(self._by_factory, factory_id, signal)
            for order_id in orders:
                _discard(self._by_order, order_id, signal)
            if pushed_of is not None:
                _discard(self._by_pushed, pushed_of, signal)

    def ring_orders(self, factory_id: str) -> None:
        """``factory_id`` has a new order (or one of its orders changed): wake its pollers."""
        for signal in list(self._by_factory.get(factory_id, ())):
            signal.ring()

    def ring_polls(self) -> None:
        """Wake every Factory's pollers."""
        for factory_id in list(self._by_factory):
            self.ring_orders(factory_id)

    def ring_answers(self, order_ids: Iterable[int]) -> None:
        """These orders were answered: wake whoever waits for them."""
        for order_id in order_ids:
            for signal in list(self._by_order.get(order_id, ())):
                signal.ring()

    def ring_pushed(self, factory_id: str) -> None:
        """A push of ``factory_id``'s agent was applied: wake whoever waits for a fresh one."""
        for signal in list(self._by_pushed.get(factory_id, ())):
            signal.ring()

    def hand_answers(self, answers: Mapping[int, Report]) -> None:
        """These orders were answered with these reports (committed by this process's compare-and-set): hand
        each report to whoever waits for its order, and wake them."""
        for order_id, report in answers.items():
            for signal in list(self._by_order.get(order_id, ())):
                signal.answers[order_id] = report
                signal.ring()

    @property
    def waiting(self) -> int:
        """Registered waiters (a waiter on several orders counts once per order)."""
        indexes = (self._by_factory, self._by_order, self._by_pushed)
        return sum(len(signals) for index in indexes for signals in index.values())

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _ensure_checking(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="agent-bell")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            if not self._by_factory and not self._by_order and not self._by_pushed:
                continue
            try:
                await self.check()
            except Exception as exc:  # the database is away: waiters still end at their own deadlines
                log.warning("the agent link's bell could not check the database: %s", exc)

    async def check(self) -> None:
        """One look at the database for every waiter of this process; rings what changed."""
        factories, orders, pushed = sorted(self._by_factory), sorted(self._by_order), sorted(self._by_pushed)
        statement = _check_statement(factories, orders, pushed)
        if statement is None:
            return
        async with self._db.read() as session:
            rows = (await session.execute(statement)).all()
        self.checks += 1
        newest: dict[str, int | None] = dict.fromkeys(factories)
        versions: dict[tuple[str, str], int | None] = {(kind, f): None for f in pushed for kind in _PUSH_KINDS}
        answered: list[int] = []
        for kind, factory_id, number in rows:
            if kind == "o":
                newest[factory_id] = number
            elif kind in _PUSH_KINDS:
                versions[(kind, factory_id)] = number
            else:
                answered.append(number)
        for factory_id, newest_id in newest.items():
            # A Factory seen for the first time rings too: an order may have come before this first look.
            if factory_id not in self._newest or self._newest[factory_id] != newest_id:
                self._newest[factory_id] = newest_id
                self.ring_orders(factory_id)
        self.ring_answers(answered)
        for key, version in versions.items():
            if key not in self._pushed_versions or self._pushed_versions[key] != version:
                self._pushed_versions[key] = version
                self.ring_pushed(key[1])


_PUSH_KINDS = ("l", "s")  # a listing, a site state
_Check = Select[str, str, int] | CompoundSelect[str, str, int]


def _check_statement(factories: list[str], orders: list[int], pushed: list[str]) -> _Check | None:
    parts: list[Select[str, str, int]] = []
    if factories:
        parts.append(
            select(literal("o", String).label("kind"), AgentOrder.factory_id, func.max(AgentOrder.id))
            .where(AgentOrder.factory_id.in_(factories), AgentOrder.state == "open")
            .group_by(AgentOrder.factory_id)
        )
    if orders:
        parts.append(
            select(literal("a", String).label("kind"), literal("", String), AgentOrder.id).where(
                AgentOrder.id.in_(orders), AgentOrder.state == "answered"
            )
        )
    if pushed:
        for kind, table in (("l", AgentListing), ("s", AgentSiteState)):
            parts.append(
                select(literal(kind, String).label("kind"), table.factory_id, table.version).where(
                    table.factory_id.in_(pushed)
                )
            )
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    return union_all(*parts)


def _discard(index: dict[_K, set[Signal]], key: _K, signal: Signal) -> None:
    waiters = index.get(key)
    if waiters is not None:
        waiters.discard(signal)
        if not waiters:
            del index[key]


__all__ = ["Bell", "Signal"]
