"""The order mailbox of a Factory's agent, on SQLite and PostgreSQL, with a hand-moved clock (``at``).

Submit and cancel orders are bound to the live lease holder (session, epoch) when written, or refused with
NoAgent and not written; they are redelivered only within their own session until acknowledged, never to
another session (a lapsed holder's orders stay undelivered), never after not_after. Reads are claimed once.
Reports are applied once, from any live session of the same Factory, never to another Factory's order.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import event, func, select

from broker.agents.bell import Bell
from broker.agents.errors import NoAgent, SessionExpired, UnknownSession
from broker.agents.orders import OrderRepository, PlacedOrder
from broker.agents.sessions import SessionRepository
from broker.agents.timings import AgentTimings
from broker.db.engine import Database
from broker.db.models import AgentOrder
from slurm_adapters.agent_protocol import Poll, ReadOrder, Report, Reports, Requester, SubmitOrder
from tests.db.agent_helpers import beat, hello
from tests.db.helpers import at

TIMINGS = AgentTimings(session_ttl_s=30, lease_s=15, heartbeat_s=5)
SPEC = {"version": 1, "name": "train", "script": "#!/bin/sh\ntrue\n", "working_directory": "/scratch", "tag": "j1"}


@pytest.fixture
def sessions(db: Database) -> SessionRepository:
    return SessionRepository(db, TIMINGS)


@pytest.fixture
def orders(db: Database) -> OrderRepository:
    return OrderRepository(db)


async def _holder(sessions: SessionRepository, factory_id: str = "alpha", t: float = 0) -> str:
    """A new session of ``factory_id`` that takes (or tries to take) the lease at ``t``."""
    session_id = (await sessions.open(factory_id, "key-1", hello(at(t)), now=at(t))).id
    await sessions.heartbeat(factory_id, session_id, beat(at(t)), now=at(t))
    return session_id


async def _submit(
    orders: OrderRepository, t: float, not_after: float, factory_id: str = "alpha", attempt: str = "j1/1"
) -> PlacedOrder:
    return await orders.put_submit(
        factory_id,
        attempt=attempt,
        spec=SPEC,
        site_user="alice",
        requester=Requester(user="user:alice", project="EHPC-1"),
        not_after=at(not_after),
        now=at(t),
    )


async def _ids(
    orders: OrderRepository, session_id: str, t: float, ack: int = 0, factory_id: str = "alpha"
) -> list[int]:
    taken = await orders.take(factory_id, session_id, Poll(ack=ack, wait_s=0), now=at(t))
    return [order.id for order in taken.orders]


async def _count(db: Database) -> int:
    async with db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(AgentOrder)) or 0)


def _ok(order: int, result: object = 4242, t: float = 5) -> Report:
    return Report(order=order, ok=True, result=result, finished_at=at(t))


async def test_without_a_live_lease_holder_nothing_is_written(
    db: Database, sessions: SessionRepository, orders: OrderRepository
) -> None:
    with pytest.raises(NoAgent):
        await _submit(orders, t=0, not_after=30)
    a = await _holder(sessions)  # holds until 15 s
    with pytest.raises(NoAgent):  # another Factory's agent is no help
        await _submit(orders, t=1, not_after=30, factory_id="bravo")
    with pytest.raises(NoAgent):
        await _submit(orders, t=15, not_after=45)  # a's lease lapsed at 15 s
    with pytest.raises(NoAgent):  # a read needs a live session: a's ended at 30 s
        await orders.put_read("alpha", op="health", args={}, not_after=at(40), now=at(30))
    assert await _count(db) == 0
    placed = await _submit(orders, t=14, not_after=44)
    assert (placed.session_id, placed.epoch) == (a, 1)
    assert await _count(db) == 1


async def test_a_bound_order_goes_to_its_session_only_and_again_until_acknowledged(
    sessions: SessionRepository, orders: OrderRepository
) -> None:
    a, b = await _holder(sessions), await _holder(sessions)  # b is a standby
    first = await _submit(orders, t=1, not_after=31)
    second = await orders.put_cancel("alpha", slurm_job_id=77, tag="j0", site_user="alice", not_after=at(31), now=at(1))
    assert await _ids(orders, b, t=2) == []
    taken = await orders.take("alpha", a, Poll(ack=0, wait_s=0), now=at(2))
    assert [order.id for order in taken.orders] == [first.id, second.id]
    submit = taken.orders[0]
    assert isinstance(submit, SubmitOrder)
    assert (submit.epoch, submit.attempt, submit.spec, submit.site_user) == (1, "j1/1", SPEC, "alice")
    assert submit.not_after == at(31)
    # Unacknowledged: sent again; acknowledged by cursor: never again.
    assert await _ids(orders, a, t=3) == [first.id, second.id]
    assert await _ids(orders, a, t=3, ack=first.id) == [second.id]
    assert await _ids(orders, a, t=4, ack=second.id) == []
    assert await _ids(orders, b, t=4) == []


async def test_a_lapsed_holders_orders_never_go_to_the_next_holder(
    sessions: SessionRepository, orders: OrderRepository
) -> None:
    a, b = await _holder(sessions), await _holder(sessions)
    stranded = await _submit(orders, t=1, not_after=60)
    # a stops beating; b takes the lease at 15 s at epoch 2.
    assert (await sessions.heartbeat("alpha", b, beat(), now=at(15))).epoch == 2
    fresh = await _submit(orders, t=16, not_after=60, attempt="j2/1")
    assert (fresh.session_id, fresh.epoch) == (b, 2)
    assert await _ids(orders, b, t=17) == [fresh.id]
    # a is alive again but no holder: nothing; nor once it holds a new epoch (b lapses at 30 s).
    assert await _ids(orders, a, t=17) == []
    await sessions.heartbeat("alpha", a, beat(), now=at(20))
    assert (await sessions.heartbeat("alpha", a, beat(), now=at(30))).epoch == 3
    assert await _ids(orders, a, t=31) == []
    assert await _ids(orders, b, t=31) == []  # b lost the lease: even its own unacknowledged order stops
    outcome = await orders.outcome(stranded.id)
    assert outcome is not None
    assert outcome.state == "open"  # until its not_after; the dispatcher settles the attempt by tag


async def test_an_order_is_never_delivered_once_its_not_after_passed(
    sessions: SessionRepository, orders: OrderRepository
) -> None:
    a = await _holder(sessions)
    late = await _submit(orders, t=1, not_after=10)
    assert await _ids(orders, a, t=9.999) == [late.id]
    assert await _ids(orders, a, t=10) == []
    outcome = await orders.outcome(late.id)
    assert outcome is not None
    assert outcome.state == "expired"
    # A report of what the agent did before not_after is still a fact, and is kept.
    answer = await orders.apply_reports("alpha", a, Reports(reports=[_ok(late.id)]), now=at(11))
    assert (answer.applied, answer.ignored) == (1, 0)
    outcome = await orders.outcome(late.id)
    assert outcome is not None
    assert outcome.state == "answered"


async def test_reports_apply_once_from_any_live_session_of_the_same_factory(
    sessions: SessionRepository, orders: OrderRepository
) -> None:
    a, b = await _holder(sessions), await _holder(sessions)
    other = await _holder(sessions, "bravo")
    placed = await _submit(orders, t=1, not_after=31)
    undelivered = await _submit(orders, t=1, not_after=31, attempt="j3/1")
    await orders.take("alpha", a, Poll(ack=0, wait_s=0, max_orders=1), now=at(2))  # delivers `placed` only
    # bravo's agent cannot answer alpha's order; nobody answers an order never delivered.
    foreign = await orders.apply_reports("bravo", other, Reports(reports=[_ok(placed.id)]), now=at(3))
    assert (foreign.applied, foreign.ignored) == (0, 1)
    never = await orders.apply_reports("alpha", a, Reports(reports=[_ok(undelivered.id)]), now=at(3))
    assert (never.applied, never.ignored) == (0, 1)
    with pytest.raises(UnknownSession):  # nor with its own session id under another Factory's name
        await orders.apply_reports("alpha", other, Reports(reports=[_ok(placed.id)]), now=at(3))
    # b (a standby of the same Factory) reports a's order: a fact, applied once.
    answer = await orders.apply_reports("alpha", b, Reports(reports=[_ok(placed.id), _ok(placed.id)]), now=at(4))
    assert (answer.applied, answer.ignored) == (1, 1)
    again = await orders.apply_reports("alpha", a, Reports(reports=[_ok(placed.id, result=1)]), now=at(5))
    assert (again.applied, again.ignored) == (0, 1)
    outcome = await orders.outcome(placed.id)
    assert outcome is not None
    assert outcome.report is not None
    assert (outcome.state, outcome.report.result) == ("answered", 4242)
    # An answered order is no longer delivered.
    assert await _ids(orders, a, t=6) == [undelivered.id]
    with pytest.raises(SessionExpired):  # b never beat again after 0 s: over at 30 s
        await orders.apply_reports("alpha", b, Reports(reports=[_ok(undelivered.id)]), now=at(30))


async def test_a_read_is_claimed_by_one_session_and_redelivered_to_it_only(
    sessions: SessionRepository, orders: OrderRepository
) -> None:
    a, b = await _holder(sessions), await _holder(sessions)
    read = await orders.put_read("alpha", op="list_jobs", args={"tags": None}, not_after=at(20), now=at(1))
    [order] = (await orders.take("alpha", b, Poll(ack=0, wait_s=0), now=at(2))).orders  # a standby may take reads
    assert isinstance(order, ReadOrder)
    assert (order.id, order.op, order.args) == (read.id, "list_jobs", {"tags": None})
    assert await _ids(orders, a, t=3) == []
    assert await _ids(orders, b, t=3) == [read.id]
    assert await _ids(orders, b, t=3, ack=read.id) == []


async def test_sessions_racing_for_reads_claim_each_once(sessions: SessionRepository, orders: OrderRepository) -> None:
    racers = [await _holder(sessions) for _ in range(4)]
    placed = [await orders.put_read("alpha", op="health", args={}, not_after=at(20), now=at(1)) for _ in range(30)]
    taken = await asyncio.gather(*(_ids(orders, s, t=2) for s in racers))
    handed = [order_id for ids in taken for order_id in ids]
    assert sorted(handed) == [order.id for order in placed]  # each read exactly once


async def test_orders_are_handed_out_oldest_first_up_to_max_orders(
    sessions: SessionRepository, orders: OrderRepository
) -> None:
    a = await _holder(sessions)
    placed = [await _submit(orders, t=1, not_after=31, attempt=f"j{n}/1") for n in range(5)]
    taken = await orders.take("alpha", a, Poll(ack=0, wait_s=0, max_orders=3), now=at(2))
    assert [order.id for order in taken.orders] == [order.id for order in placed[:3]]
    assert await _ids(orders, a, t=2, ack=placed[2].id) == [order.id for order in placed[3:]]


async def test_a_batch_of_concurrent_submits_is_one_transaction_in_call_order_each_bound_or_refused(
    db: Database, sessions: SessionRepository, orders: OrderRepository
) -> None:
    """The dispatcher's claimed batch: 20 submits at once to two Factories, one of which has no agent. They share
    a group commit (fewer batches than orders), the connected Factory's orders get consecutive ids in call order,
    each bound to its holder, and the other Factory's are refused without a row."""
    holder = await _holder(sessions, "alpha")
    placed = await asyncio.gather(
        *(_submit(orders, 1, 30, factory_id="alpha" if i % 2 == 0 else "bravo", attempt=f"j{i}/1") for i in range(20)),
        return_exceptions=True,
    )
    bound = [p for p in placed if isinstance(p, PlacedOrder)]
    assert [type(p) for p in placed[1::2]] == [NoAgent] * 10
    assert [p.id for p in bound] == sorted(p.id for p in bound)
    assert {(p.session_id, p.epoch) for p in bound} == {(holder, 1)}
    assert len(bound) == 10
    assert await _count(db) == 10
    assert orders.bound_batches < 20, "every submit had its own transaction"


class _Statements:
    """The SQL statements the database's engine runs while counting (sync listener: every cursor execute)."""

    def __init__(self, db: Database) -> None:
        self.seen: list[str] = []
        self._engine = db.engine.sync_engine
        event.listen(self._engine, "before_cursor_execute", self._record)

    def _record(self, _conn: object, _cursor: object, statement: str, *_args: object) -> None:
        self.seen.append(" ".join(statement.split()).upper())

    def close(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._record)

    def count(self, prefix: str) -> int:
        return sum(1 for statement in self.seen if statement.startswith(prefix) and "AGENT_ORDERS" in statement)


async def test_a_request_of_reports_is_one_update_applying_each_once_by_compare_and_set(
    db: Database, sessions: SessionRepository, orders: OrderRepository
) -> None:
    """Twenty delivered orders, one never delivered, one already answered, one of another Factory and a repeat in
    one request: one UPDATE of agent_orders; each delivered open order gets its own (first) report, nothing
    else changes."""
    a = await _holder(sessions)
    other = await _holder(sessions, "bravo")
    placed = [await _submit(orders, t=1, not_after=31, attempt=f"j{n}/1") for n in range(21)]
    foreign = await _submit(orders, t=1, not_after=31, factory_id="bravo", attempt="f1/1")
    await orders.take("alpha", a, Poll(ack=0, wait_s=0, max_orders=20), now=at(2))  # the 21st stays undelivered
    await orders.take("bravo", other, Poll(ack=0, wait_s=0), now=at(2))
    delivered, undelivered = placed[:20], placed[20]
    early = await orders.apply_reports("alpha", a, Reports(reports=[_ok(delivered[0].id, result=7)]), now=at(3))
    assert (early.applied, early.ignored) == (1, 0)
    batch = [_ok(order.id, result=1000 + n) for n, order in enumerate(delivered)]
    batch += [_ok(delivered[5].id, result=-1), _ok(undelivered.id), _ok(foreign.id)]
    statements = _Statements(db)
    try:
        answer = await orders.apply_reports("alpha", a, Reports(reports=batch), now=at(4))
    finally:
        statements.close()
    assert statements.count("UPDATE") == 1, statements.seen
    # 19 applied; the one answered before, the repeat, the undelivered and the foreign one ignored.
    assert (answer.applied, answer.ignored) == (19, 4)
    results = {}
    for order in [*placed, foreign]:
        outcome = await orders.outcome(order.id)
        assert outcome is not None
        results[order.id] = (outcome.state, outcome.report.result if outcome.report else None)
    assert results[delivered[0].id] == ("answered", 7)  # applied once: the later report did not overwrite it
    assert all(results[order.id] == ("answered", 1000 + n) for n, order in enumerate(delivered) if n), results
    assert results[undelivered.id] == ("open", None)
    assert results[foreign.id] == ("open", None)


async def test_a_report_applied_in_this_process_is_handed_to_its_waiter_without_a_read(
    db: Database, sessions: SessionRepository
) -> None:
    """The waiter gets the report the compare-and-set applied with the bell's ring: no SELECT of agent_orders
    (the bell's own check is kept out by its long interval)."""
    bell = Bell(db, interval_s=3600)
    orders = OrderRepository(db, bell, clock=lambda: at(2))
    a = await _holder(sessions)
    placed = await _submit(orders, t=1, not_after=31)
    await orders.take("alpha", a, Poll(ack=0, wait_s=0), now=at(2))
    statements = _Statements(db)
    try:
        waiter = asyncio.ensure_future(orders.wait_report(placed.id, at(60)))
        await asyncio.sleep(0)  # the waiter registers
        answer = await orders.apply_reports("alpha", a, Reports(reports=[_ok(placed.id, result=99)]), now=at(3))
        report = await asyncio.wait_for(waiter, 10)
    finally:
        statements.close()
        await bell.aclose()
    assert answer.applied == 1
    assert report is not None
    assert (report.order, report.result) == (placed.id, 99)
    assert statements.count("SELECT") == 0, statements.seen


async def test_a_report_applied_by_another_process_reaches_the_waiter_through_the_database(
    db: Database, sessions: SessionRepository
) -> None:
    """Another replica (its own repository and bell) applies the report, this process's waiter is handed
    nothing: its bell's check sees the order answered and the waiter reads the report from the database."""
    here, there = Bell(db, interval_s=0.05), Bell(db, interval_s=3600)
    clock = lambda: at(2)  # noqa: E731
    mine, replica = OrderRepository(db, here, clock=clock), OrderRepository(db, there, clock=clock)
    a = await _holder(sessions)
    placed = await _submit(mine, t=1, not_after=31)
    await replica.take("alpha", a, Poll(ack=0, wait_s=0), now=at(2))
    try:
        waiter = asyncio.ensure_future(mine.wait_report(placed.id, at(60)))
        await asyncio.sleep(0)
        await replica.apply_reports("alpha", a, Reports(reports=[_ok(placed.id, result=77)]), now=at(3))
        report = await asyncio.wait_for(waiter, 10)
    finally:
        await here.aclose()
        await there.aclose()
    assert report is not None
    assert report.result == 77
    assert here.checks >= 1
