"""The AgentAdapter and the long poll end to end over the service API, on SQLite and PostgreSQL, with the
real clock and short deadlines.

``ScriptedAgent`` is a test double of a Factory's agent (no Slurm anywhere): it opens a session, takes the
lease, long-polls through :class:`AgentService` and answers each order as the test's script says. The bell is
checked too: twenty idle long polls cost one database check per interval, not one per poller.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select

from broker.agents.adapter import AgentAdapter
from broker.agents.errors import UnknownFactory, UnknownSession
from broker.agents.link import AgentLink
from broker.agents.service import AgentService
from broker.agents.timings import AgentTimings
from broker.db.engine import Database
from broker.db.models import AgentOrder
from broker.factories.adapters import AdapterPool
from slurm_adapters.agent_protocol import CancelOrder, Order, Poll, ReadOrder, Report, Reports, SubmitOrder
from slurm_adapters.codec import error_to_json, health_to_json, output_chunk_to_json, record_to_json, spec_from_json
from slurm_adapters.errors import (
    ClusterUnavailable,
    InvalidRequest,
    JobError,
    SiteError,
    SlurmError,
    UnsafeRequest,
)
from slurm_adapters.factory import AdapterConfigError, AgentConfig
from slurm_adapters.records import (
    MAX_OUTPUT_CHUNK_BYTES,
    Health,
    JobRecord,
    OutputChunk,
    SlurmJobSpec,
    SlurmJobState,
    SubmitContext,
)
from tests.db.agent_helpers import agent_registry, beat, hello
from tests.db.helpers import wait_until

TIMINGS = AgentTimings(
    session_ttl_s=30, lease_s=15, heartbeat_s=5, poll_wait_s=5, bell_interval_s=0.05, read_timeout_s=1.0,
    report_grace_s=0.3,
)  # fmt: skip
SPEC = SlurmJobSpec(name="train", script="#!/bin/sh\necho hi\n", working_directory="/scratch/alice", tag="job-1")
Answer = Callable[[Order], Report | None]


def now() -> datetime:
    return datetime.now(UTC)


def ok(result: object) -> Answer:
    return lambda order: Report(order=order.id, ok=True, result=result, finished_at=now())


def failed(error: SlurmError, *, refused: bool = False) -> Answer:
    return lambda order: Report(order=order.id, ok=False, error=error_to_json(error), refused=refused,
                                finished_at=now())  # fmt: skip


def silent(order: Order) -> Report | None:
    return None


class ScriptedAgent:
    """A test double of a Factory's agent over the service API: answers each order with ``answer``. While it
    runs, a lease holder heartbeats as a real agent does, so a slow machine never lapses its session or lease (a
    standby stays silent: its heartbeat would compete for the lease)."""

    def __init__(self, service: AgentService, factory_id: str = "alpha", answer: Answer = silent) -> None:
        self.service = service
        self.factory_id = factory_id
        self.answer = answer
        self.received: list[Order] = []
        self.session_id = ""
        self.heartbeat_s = TIMINGS.heartbeat_s
        self.holds = False

    async def connect(self, *, hold: bool = True) -> ScriptedAgent:
        granted = await self.service.open_session(self.factory_id, "key-1", hello(now()))
        self.session_id, self.heartbeat_s = granted.session_id, granted.heartbeat_s
        if hold:
            await self.hold()
        return self

    async def hold(self) -> None:
        """Takes the Factory's lease with a first heartbeat; later ones come while :meth:`run` runs."""
        assert (await self.service.heartbeat(self.factory_id, self.session_id, beat(now()))).holder
        self.holds = True

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            if self.holds:
                group.create_task(self._heartbeats())
            group.create_task(self._answer_orders())

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            await self.service.heartbeat(self.factory_id, self.session_id, beat(now()))

    async def _answer_orders(self) -> None:
        ack = 0
        while True:
            batch = await self.service.poll(self.factory_id, self.session_id, Poll(ack=ack, wait_s=5))
            for order in batch.orders:
                ack = max(ack, order.id)
                self.received.append(order)
                report = self.answer(order)
                if report is not None:
                    await self.service.report(self.factory_id, self.session_id, Reports(reports=[report]))


@contextlib.asynccontextmanager
async def running(agent: ScriptedAgent) -> AsyncIterator[ScriptedAgent]:
    task = asyncio.create_task(agent.run())
    try:
        yield agent
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
def agent_timings() -> AgentTimings:
    """The link's timings (a module that imports :func:`link` may define its own)."""
    return TIMINGS


@pytest.fixture
async def link(db: Database, agent_timings: AgentTimings) -> AsyncIterator[AgentLink]:
    link = AgentLink(db, agent_timings)
    yield link
    await link.aclose()


@pytest.fixture
def service(link: AgentLink) -> AgentService:
    return AgentService(link, agent_registry())


@pytest.fixture
def adapter(link: AgentLink) -> AgentAdapter:
    return link.adapter("alpha", AgentConfig(cluster="alpha-cluster", timeout_s=1.0))


def context(window_s: float = 3.0) -> SubmitContext:
    return SubmitContext(
        attempt="job-1/1", not_after=now() + timedelta(seconds=window_s), requester_user="user:alice",
        requester_project="EHPC-AIF-2026PG01-1147", requester_antenna="it",
    )  # fmt: skip


async def _orders_written(db: Database) -> int:
    async with db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(AgentOrder)) or 0)


async def test_a_submit_returns_the_slurm_id_the_agent_reported(service: AgentService, adapter: AgentAdapter) -> None:
    async with running(await ScriptedAgent(service, answer=ok(4242)).connect()) as agent:
        assert await adapter.submit(SPEC, "alice", context()) == 4242
    [order] = agent.received
    assert isinstance(order, SubmitOrder)
    assert spec_from_json(order.spec) == SPEC
    assert (order.attempt, order.site_user, order.epoch) == ("job-1/1", "alice", 1)
    assert (order.requester.user, order.requester.project, order.requester.antenna) == (
        "user:alice", "EHPC-AIF-2026PG01-1147", "it"
    )  # fmt: skip


@pytest.mark.parametrize(
    "error",
    [
        JobError("partition gpu does not exist"),
        InvalidRequest("time limit over the partition's"),
        SiteError("slurmctld refused the connection"),
        ClusterUnavailable("slurmctld is down", maybe_applied=False),
    ],
    ids=type,
)
async def test_a_submits_typed_error_comes_back_typed(
    service: AgentService, adapter: AgentAdapter, error: SlurmError
) -> None:
    async with running(await ScriptedAgent(service, answer=failed(error)).connect()):
        with pytest.raises(SlurmError) as raised:
            await adapter.submit(SPEC, "alice", context())
    assert type(raised.value) is type(error)
    assert raised.value.message == error.message
    assert raised.value.cluster == "alpha-cluster"
    if isinstance(error, ClusterUnavailable):
        assert isinstance(raised.value, ClusterUnavailable)
        assert raised.value.maybe_applied is False


@pytest.mark.parametrize(
    "error",
    [UnsafeRequest("alice is not in the site's users"), InvalidRequest("the site allows at most 4 nodes")],
    ids=["unsafe", "invalid"],
)
async def test_a_submit_the_sites_policy_refused_raises_with_the_sites_reason(
    service: AgentService, adapter: AgentAdapter, error: SlurmError
) -> None:
    async with running(await ScriptedAgent(service, answer=failed(error, refused=True)).connect()):
        with pytest.raises(InvalidRequest) as raised:
            await adapter.submit(SPEC, "alice", context())
    assert type(raised.value) is type(error)
    assert error.message in raised.value.message


async def test_a_submit_the_site_did_not_start_for_its_own_state_is_not_applied_never_the_jobs_fault(
    service: AgentService, adapter: AgentAdapter
) -> None:
    """Paused, fenced, too late for not_after: the agent refuses with a SiteError and nothing reached Slurm."""
    refusal = SiteError("paused by the site")
    async with running(await ScriptedAgent(service, answer=failed(refusal, refused=True)).connect()):
        with pytest.raises(ClusterUnavailable) as raised:
            await adapter.submit(SPEC, "alice", context())
    assert raised.value.maybe_applied is False
    assert "paused by the site" in raised.value.message


async def test_no_report_by_not_after_leaves_the_submit_in_doubt(service: AgentService, adapter: AgentAdapter) -> None:
    async with running(await ScriptedAgent(service, answer=silent).connect()) as agent:
        ctx = context(window_s=0.5)
        with pytest.raises(ClusterUnavailable) as raised:
            await adapter.submit(SPEC, "alice", ctx)
        assert raised.value.maybe_applied is True
        assert now() >= ctx.not_after  # never given up before the agent's window closed
        assert len(agent.received) == 1  # delivered, never answered


async def test_no_agent_means_nothing_was_sent(db: Database, service: AgentService, adapter: AgentAdapter) -> None:
    with pytest.raises(ClusterUnavailable) as raised:
        await adapter.submit(SPEC, "alice", context())
    assert raised.value.maybe_applied is False
    standby = await ScriptedAgent(service).connect(hold=False)  # a session that holds no lease: no submit either
    assert standby.session_id
    with pytest.raises(ClusterUnavailable) as again:
        await adapter.submit(SPEC, "alice", context())
    assert again.value.maybe_applied is False
    await ScriptedAgent(service).connect()
    with pytest.raises(ClusterUnavailable) as closed:  # a window already closed: nothing is written either
        await adapter.submit(SPEC, "alice", context(window_s=-1))
    assert closed.value.maybe_applied is False
    assert await _orders_written(db) == 0


async def test_a_cancel_goes_by_slurm_id_and_tag(service: AgentService, adapter: AgentAdapter) -> None:
    with pytest.raises(InvalidRequest):
        await adapter.cancel(77, "alice")
    async with running(await ScriptedAgent(service, answer=ok(None)).connect()) as agent:
        await adapter.cancel(77, "alice", tag="job-1")
    [order] = agent.received
    assert isinstance(order, CancelOrder)
    assert (order.slurm_job_id, order.tag, order.site_user) == (77, "job-1", "alice")


RECORD = JobRecord(
    job_id=77, tag="job-1", state=SlurmJobState.RUNNING, raw_state="RUNNING", reason=None, exit_code=None,
    signal=None, submit_time=datetime(2026, 12, 7, 1, 0, tzinfo=UTC), start_time=None, end_time=None,
    nodes="n1", user="alice",
)  # fmt: skip


OUTPUT = bytes(range(256)) * 3


def reads(order: Order) -> Report | None:
    assert isinstance(order, ReadOrder)
    result: Any
    if order.op == "get_job":
        result = record_to_json(RECORD) if order.args == {"job_id": 77} else None
    elif order.op == "list_jobs":
        result = [record_to_json(RECORD)] if order.args["tags"] == ["job-1"] else []
    elif order.op == "read_output_chunk":
        offset, max_bytes = order.args["offset"], order.args["max_bytes"]
        data = OUTPUT[offset : offset + max_bytes]
        result = output_chunk_to_json(OutputChunk(data, offset, len(OUTPUT), offset + len(data) >= len(OUTPUT)))
    else:
        result = health_to_json(Health(ok=True, detail="up", release="24.11.1"))
    return Report(order=order.id, ok=True, result=result, finished_at=now())


async def test_reads_go_to_any_session_and_come_back_decoded(service: AgentService, adapter: AgentAdapter) -> None:
    async with running(await ScriptedAgent(service, answer=reads).connect(hold=False)):  # a standby serves reads
        assert await adapter.get_job(77) == RECORD
        assert await adapter.list_jobs(tags=["job-1"]) == [RECORD]
        health = await adapter.health()
    assert (health.ok, health.release) == (True, "24.11.1")


async def test_a_ranged_output_read_is_a_capped_read_order_and_comes_back_as_bytes(
    db: Database, service: AgentService, adapter: AgentAdapter
) -> None:
    async with running(await ScriptedAgent(service, answer=reads).connect(hold=False)):
        chunk = await adapter.read_output_chunk(77, "stdout", 700, 10 * MAX_OUTPUT_CHUNK_BYTES)
        past = await adapter.read_output_chunk(77, "stdout", 5000, 1)
    assert chunk == OutputChunk(OUTPUT[700:], 700, len(OUTPUT), True)
    assert past == OutputChunk(b"", 5000, len(OUTPUT), True)
    async with db.read() as session:
        orders = (await session.scalars(select(AgentOrder).order_by(AgentOrder.id))).all()
    assert [order.payload["op"] for order in orders] == ["read_output_chunk"] * 2
    assert orders[0].payload["args"] == {
        "job_id": 77,
        "stream": "stdout",
        "offset": 700,
        "max_bytes": MAX_OUTPUT_CHUNK_BYTES,
    }
    for offset, max_bytes in ((-1, 10), (0, 0)):
        with pytest.raises(InvalidRequest):
            await adapter.read_output_chunk(77, "stdout", offset, max_bytes)
    assert await _orders_written(db) == 2  # a bad range never became an order


async def test_an_unanswered_read_times_out_as_nothing_changed(service: AgentService, adapter: AgentAdapter) -> None:
    async with running(await ScriptedAgent(service, answer=silent).connect()):
        started = time.monotonic()
        with pytest.raises(ClusterUnavailable) as raised:
            await adapter.health()
    assert raised.value.maybe_applied is False
    assert time.monotonic() - started >= TIMINGS.read_timeout_s


async def test_an_empty_long_poll_waits_its_time_and_an_order_ends_it_at_once(
    service: AgentService, adapter: AgentAdapter, link: AgentLink
) -> None:
    agent = await ScriptedAgent(service).connect()
    started = time.monotonic()
    empty = await service.poll("alpha", agent.session_id, Poll(ack=0, wait_s=0.3))
    assert empty.orders == []
    assert time.monotonic() - started >= 0.3
    waiting = asyncio.create_task(service.poll("alpha", agent.session_id, Poll(ack=0, wait_s=20)))
    await wait_until(lambda: link.bell.waiting >= 1)
    submit = asyncio.create_task(adapter.submit(SPEC, "alice", context(window_s=0.5)))
    answer = await asyncio.wait_for(waiting, 5)  # long before its 20 s
    assert [order.kind for order in answer.orders] == ["submit"]
    with pytest.raises(ClusterUnavailable):
        await submit


async def test_a_stopping_process_answers_open_long_polls_at_once_and_later_ones_without_waiting(
    service: AgentService, link: AgentLink
) -> None:
    agents = [await ScriptedAgent(service).connect(hold=False) for _ in range(2)]
    polls = [asyncio.create_task(service.poll("alpha", agent.session_id, Poll(ack=0, wait_s=25))) for agent in agents]
    await wait_until(lambda: link.bell.waiting == 2)
    service.stop_polls()
    answers = await asyncio.wait_for(asyncio.gather(*polls), 5)  # long before their 25 s
    assert [answer.orders for answer in answers] == [[], []]
    later = await asyncio.wait_for(service.poll("alpha", agents[0].session_id, Poll(ack=0, wait_s=25)), 5)
    assert later.orders == []
    assert link.bell.waiting == 0


async def test_another_replicas_orders_and_reports_wake_waiters_here(db: Database, link: AgentLink) -> None:
    """Two links on one database play two broker replicas: no local ring crosses between them."""
    other = AgentLink(db, TIMINGS)
    try:
        here, there = AgentService(link, agent_registry()), AgentService(other, agent_registry())
        adapter_there = other.adapter("alpha", AgentConfig(cluster="alpha"))
        # The agent polls here; the submit is written there: only this process's bell check can wake the poll.
        async with running(await ScriptedAgent(here, answer=ok(31)).connect()):
            await wait_until(lambda: link.bell.waiting == 1)
            seen = link.bell.checks
            await wait_until(lambda: link.bell.checks >= seen + 3)  # the poll waits on the bell by now
            started = time.monotonic()
            assert await adapter_there.submit(SPEC, "alice", context(window_s=5)) == 31
            assert time.monotonic() - started < 2.5  # woken by the checks, not by the 5 s long poll's end
        assert there is not here
    finally:
        await other.aclose()


async def test_twenty_idle_long_polls_cost_one_check_per_interval(
    db: Database, service: AgentService, link: AgentLink
) -> None:
    agents = [await ScriptedAgent(service).connect(hold=False) for _ in range(20)]
    statements: list[bool] = []  # per statement on agent_orders: is it the bell's check?

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "agent_orders" in statement:
            statements.append("max(agent_orders.id)" in statement)

    def settled() -> bool:  # the pollers' first takes (and the bell's first ring) are over
        return len(statements) > 20 and all(statements[-5:])

    event.listen(db.engine.sync_engine, "before_cursor_execute", count)
    polls = [asyncio.create_task(service.poll("alpha", agent.session_id, Poll(ack=0, wait_s=25))) for agent in agents]
    try:
        await wait_until(lambda: link.bell.waiting == 20)
        await wait_until(settled)
        start, checks = len(statements), link.bell.checks
        await wait_until(lambda: link.bell.checks >= checks + 10)
        window, idle = link.bell.checks - checks, statements[start:]
        # All twenty pollers together: one check per interval, nothing per poller.
        assert all(idle)
        assert len(idle) <= window + 1
        assert all(not task.done() for task in polls)
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", count)
        for task in polls:
            task.cancel()
        await asyncio.gather(*polls, return_exceptions=True)
    assert link.bell.waiting == 0  # cancelled polls leave no waiter behind


def test_the_adapter_pool_builds_agent_factories_on_the_link(link: AgentLink) -> None:
    pool = AdapterPool(agent_registry(), agents=link)
    alpha = pool.get("alpha")
    assert isinstance(alpha, AgentAdapter)
    assert (alpha.kind, alpha.factory_id, alpha.cluster) == ("agent", "alpha", "alpha")
    assert pool.get("alpha") is alpha
    assert not isinstance(pool.get("charlie"), AgentAdapter)  # a direct Factory: its own adapter
    with pytest.raises(AdapterConfigError):  # without the link, nothing can reach an agent Factory
        AdapterPool(agent_registry()).get("alpha")


async def test_the_service_opens_sessions_for_agent_factories_only(service: AgentService) -> None:
    granted = await service.open_session("alpha", "key-1", hello(now()))
    assert (granted.factory, granted.clock_skew_s) == ("alpha", 3.0)  # the Factory's own skew
    assert (granted.heartbeat_s, granted.lease_s, granted.poll_wait_s) == (5, 15, 5)
    for factory_id in ("charlie", "nowhere"):  # a direct Factory, an unknown one
        with pytest.raises(UnknownFactory):
            await service.open_session(factory_id, "key-1", hello(now()))
    with pytest.raises(UnknownSession):  # alpha's session under bravo's name
        await service.poll("bravo", granted.session_id, Poll(ack=0, wait_s=0))
    answer = await service.heartbeat("alpha", granted.session_id, beat(now()))
    assert (answer.holder, answer.epoch) == (True, 1)
    [connection] = (await service.connections())["alpha"]
    assert (connection.session_id, connection.holder, connection.epoch, connection.paused) == (
        granted.session_id, True, 1, False
    )  # fmt: skip
