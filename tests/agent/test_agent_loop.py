"""The agent's main loop against a fake broker that follows the contract and checks every assertion: sessions,
heartbeats, the clock rule, the long poll with its cursor, batched reports that survive a broken link, a lost
session, the pause switch and a bounded shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent import __version__
from agent.backoff import Backoff
from agent.clock import BrokerClock
from agent.executor import Executor, PauseSwitch
from agent.keys import SigningKey
from agent.link import BrokerLink
from agent.runner import Agent
from slurm_adapters.agent_protocol import FEATURES
from slurm_adapters.records import ClusterInfo, SlurmJobSpec, SubmitContext
from tests.agent.conftest import site_policy
from tests.agent.fakes import (
    AUDIENCE,
    BROKER_URL,
    FACTORY,
    FakeBroker,
    RecordingAdapter,
    eventually,
    read_order,
    submit_order,
)


@dataclass
class Running:
    agent: Agent
    broker: FakeBroker
    adapter: RecordingAdapter
    stop: asyncio.Event
    task: asyncio.Task[None]
    pause_file: Path


def build(key: SigningKey, broker: FakeBroker, adapter: RecordingAdapter, tmp_path: Path, **options: float) -> Agent:
    link = BrokerLink(BROKER_URL, factory=FACTORY, audience=AUDIENCE, key=key, transport=broker.transport)
    executor = Executor(adapter, site_policy(), BrokerClock(), PauseSwitch(tmp_path / "pause"), deadline_s=1.0)
    return Agent(
        link,
        executor,
        concurrency=int(options.get("concurrency", 4)),
        linger_s=options.get("linger", 0.1),
        shutdown_grace_s=options.get("grace", 5.0),
        backoff=Backoff(base_s=0.01, cap_s=0.05),
    )


@pytest.fixture
async def running(key: SigningKey, adapter: RecordingAdapter, tmp_path: Path) -> AsyncIterator[Running]:
    broker = FakeBroker(key)
    agent = build(key, broker, adapter, tmp_path)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await broker.wait_for(lambda: bool(broker.polls))
    yield Running(agent, broker, adapter, stop, task, tmp_path / "pause")
    stop.set()
    await asyncio.wait_for(task, 10)
    await agent.link.aclose()
    assert broker.rejected == []  # every request carried a valid, request-bound, once-only assertion


async def test_hello_announces_the_agent_and_orders_come_back_as_reports(running: Running) -> None:
    broker = running.broker
    [session] = broker.sessions.values()
    hello = session.hello
    assert (hello.agent_version, hello.adapter, hello.slurm_release) == (__version__, "rest", "24.11.0")
    assert hello.features == list(FEATURES)
    await broker.give(submit_order(1), read_order(2, "health"), submit_order(3, site_user="root"))
    await broker.wait_for(lambda: {r["order"] for r in broker.reports} == {1, 2, 3})
    by_order = {report["order"]: report for report in broker.reports}
    assert by_order[1]["ok"]
    assert by_order[1]["result"] == 1000
    assert by_order[1]["site_account"] == "alice"
    assert by_order[2]["result"]["release"] == "24.11.0"
    assert by_order[3]["refused"]
    assert len(running.adapter.calls_of("submit")) == 1
    await broker.wait_for(lambda: session.ack == 3)  # acknowledged by cursor: never handed out again


async def test_repeats_over_the_wire_reach_slurm_once(running: Running) -> None:
    broker = running.broker
    first = submit_order(1, attempt="job-r/1")
    await broker.give(first, first, submit_order(2, attempt="job-r/1"), submit_order(3, attempt="job-r/2"))
    await broker.wait_for(lambda: {r["order"] for r in broker.reports} >= {1, 3})
    assert [call.args["context"].attempt for call in running.adapter.calls_of("submit")] == ["job-r/1", "job-r/2"]
    assert broker.reports_for(2) == []


async def test_no_orders_are_taken_while_the_clock_is_out_of_skew(running: Running) -> None:
    broker = running.broker
    broker.offset_s = 30.0  # the broker's clock jumps 30 s ahead: beyond the Factory's 2 s skew
    # The agent stamps its assertions on the broker's clock as it knew it: refused until a refusal's HTTP Date
    # tells it the broker's new time, then heard again (so the broker sees the offset in its heartbeats).
    await broker.wait_for(lambda: bool(broker.rejected))
    beats = len(broker.heartbeats)
    await broker.wait_for(lambda: len(broker.heartbeats) >= beats + 2)
    assert all(problem.startswith("lifetime") for problem in broker.rejected)
    broker.rejected.clear()
    polls = len(broker.polls)
    await broker.give(submit_order(1))
    await broker.wait_for(lambda: len(broker.heartbeats) >= beats + 6)
    assert len(broker.polls) <= polls + 1  # at most the poll already waiting when the clock drifted
    assert running.adapter.calls_of("submit") == []
    assert not running.agent.clock.in_sync
    broker.offset_s = 0.5  # and back: refused once more, resynchronized, in skew, the order runs
    await broker.wait_for(lambda: bool(broker.reports_for(1)))
    assert broker.reports_for(1)[0]["ok"]
    assert all(problem.startswith("lifetime") for problem in broker.rejected)
    broker.rejected.clear()


async def test_a_lost_session_leads_to_a_new_hello(running: Running) -> None:
    broker = running.broker
    await broker.forget_sessions()
    await broker.wait_for(lambda: len(broker.sessions) == 2 and bool(broker.current.hello))
    await broker.give(submit_order(7))
    await broker.wait_for(lambda: bool(broker.reports_for(7)))
    assert running.agent.sessions_opened == 2


async def test_reports_are_batched_and_survive_a_cut_link(running: Running) -> None:
    broker, adapter = running.broker, running.adapter
    adapter.gate = asyncio.Event()
    await broker.give(*(submit_order(n) for n in range(1, 6)))
    await broker.wait_for(lambda: len(adapter.calls_of("submit")) == 4)  # concurrency 4: the fifth waits
    broker.fail["reports"] = 3  # the next three report requests die on the way
    adapter.gate.set()
    await broker.wait_for(lambda: {r["order"] for r in broker.reports} == {1, 2, 3, 4, 5})
    assert broker.fail["reports"] == 0
    assert max(broker.report_batches) > 1  # several reports per request
    assert sum(broker.report_batches) == 5  # each delivered once, none lost
    assert len(running.agent.reports) == 0


async def test_the_pause_switch_is_heard_by_the_broker_and_stops_submits(running: Running) -> None:
    broker = running.broker
    running.pause_file.touch()
    await broker.wait_for(lambda: broker.heartbeats[-1]["paused"] is True)
    await broker.give(submit_order(1), read_order(2, "cluster_info"))
    await broker.wait_for(lambda: len(broker.reports) == 2)
    assert broker.reports_for(1)[0]["error"]["message"] == "paused by the site"
    assert broker.reports_for(2)[0]["ok"]
    assert running.adapter.calls_of("submit") == []
    running.pause_file.unlink()
    await broker.wait_for(lambda: broker.heartbeats[-1]["paused"] is False)


async def test_a_broken_link_at_hello_is_retried(key: SigningKey, adapter: RecordingAdapter, tmp_path: Path) -> None:
    broker = FakeBroker(key)
    broker.fail["sessions"] = 5
    agent = build(key, broker, adapter, tmp_path)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await broker.wait_for(lambda: bool(broker.polls))
    assert broker.fail["sessions"] == 0
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_stop_finishes_in_flight_orders_reports_them_and_polls_no_more(
    key: SigningKey, adapter: RecordingAdapter, tmp_path: Path
) -> None:
    broker = FakeBroker(key)
    agent = build(key, broker, adapter, tmp_path)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await broker.wait_for(lambda: bool(broker.polls))
    adapter.gate = asyncio.Event()
    await broker.give(submit_order(1))
    await broker.wait_for(lambda: bool(adapter.calls_of("submit")))
    before = len(broker.heartbeats)
    stop.set()
    await eventually(lambda: not any(t.get_name() == "poll" for t in asyncio.all_tasks()))  # polling has ended
    polls = len(broker.polls)
    beats = len(broker.heartbeats)
    await broker.wait_for(lambda: len(broker.heartbeats) >= beats + 2)  # the session lives on for the report
    assert not task.done()  # waiting for the order in flight
    # Every beat after stop says leaving (the lease goes to a standby at once); none before did.
    assert [beat["leaving"] for beat in broker.heartbeats[:before]] == [False] * before
    assert all(beat["leaving"] for beat in broker.heartbeats[before + 1 :])
    adapter.gate.set()
    await asyncio.wait_for(task, 10)
    assert broker.reports_for(1)[0]["ok"]
    assert len(broker.polls) == polls


async def test_stop_waits_no_longer_than_the_grace_period(
    key: SigningKey, adapter: RecordingAdapter, tmp_path: Path
) -> None:
    broker = FakeBroker(key)
    agent = build(key, broker, adapter, tmp_path, grace=0.3)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await broker.wait_for(lambda: bool(broker.polls))
    adapter.gate = asyncio.Event()  # never opened: Slurm hangs
    await broker.give(submit_order(1))
    await broker.wait_for(lambda: bool(adapter.calls_of("submit")))
    started = asyncio.get_running_loop().time()
    stop.set()
    await asyncio.wait_for(task, 5)
    assert asyncio.get_running_loop().time() - started < 2.0
    assert broker.reports_for(1) == []  # never reported: the broker settles it by lookup


class GatedAdapter(RecordingAdapter):
    """Each submit waits for its own gate (by order of arrival), so a test decides when each one finishes; a
    cluster_info read waits for ``read_gate``."""

    def __init__(self) -> None:
        super().__init__()
        self.gates: list[asyncio.Event] = []
        self.read_gate = asyncio.Event()

    async def cluster_info(self) -> ClusterInfo:
        await self.read_gate.wait()
        return await super().cluster_info()

    async def submit(self, spec: SlurmJobSpec, user: str, context: SubmitContext | None = None) -> int:
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        return await super().submit(spec, user, context)


@contextlib.asynccontextmanager
async def gated(
    key: SigningKey, tmp_path: Path, **options: float
) -> AsyncIterator[tuple[Agent, FakeBroker, GatedAdapter]]:
    """A running agent over a :class:`GatedAdapter` and a fake broker, polling; stopped at the end."""
    broker, adapter = FakeBroker(key), GatedAdapter()
    agent = build(key, broker, adapter, tmp_path, **options)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await broker.wait_for(lambda: bool(broker.polls))
    try:
        yield agent, broker, adapter
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await agent.link.aclose()


async def test_reports_of_orders_carried_out_together_go_in_one_request(key: SigningKey, tmp_path: Path) -> None:
    """Five submits finishing one after another: each report waits while the others still run, so the broker
    gets one request of five, not five of one."""
    async with gated(key, tmp_path, concurrency=5, linger=30.0) as (agent, broker, adapter):
        await broker.give(*(submit_order(n) for n in range(1, 6)))
        await broker.wait_for(lambda: len(adapter.gates) == 5)

        def reported_or_queued() -> int:
            return len(agent.reports) + len(broker.reports)

        for finished, gate in enumerate(adapter.gates, start=1):
            gate.set()
            await broker.wait_for(lambda: reported_or_queued() == finished)  # noqa: B023 - awaited at once
        await broker.wait_for(lambda: len(broker.reports) == 5)
        assert broker.report_batches == [5]


async def test_a_report_waits_no_longer_than_the_linger_for_orders_still_running(
    key: SigningKey, tmp_path: Path
) -> None:
    """One submit done, another stuck at the site: the done one is reported once the linger is over."""
    async with gated(key, tmp_path, concurrency=2, linger=0.2) as (agent, broker, adapter):
        await broker.give(submit_order(1), submit_order(2))
        await broker.wait_for(lambda: len(adapter.gates) == 2)
        adapter.gates[0].set()
        await broker.wait_for(lambda: len(broker.reports) == 1, timeout_s=5)
        assert agent.running == 1  # the other is still being carried out
        adapter.gates[1].set()
        await broker.wait_for(lambda: len(broker.reports) == 2)


async def test_the_next_poll_waits_for_the_orders_still_running_so_it_takes_a_batch(
    key: SigningKey, tmp_path: Path
) -> None:
    """Four orders in four slots, finishing one by one: the next poll goes out once all four slots are free (the
    linger is long), asking for four, not for one order per freed slot."""
    async with gated(key, tmp_path, concurrency=4, linger=30.0) as (agent, broker, adapter):
        await broker.give(*(submit_order(n) for n in range(1, 5)))
        await broker.wait_for(lambda: len(adapter.gates) == 4)
        polls = len(broker.polls)

        def ended() -> int:
            return 4 - len(agent.in_flight)

        for finished, gate in enumerate(adapter.gates, start=1):
            gate.set()
            await broker.wait_for(lambda: ended() == finished)  # noqa: B023 - awaited at once
        await broker.wait_for(lambda: len(broker.reports) == 4)
        await broker.give(*(submit_order(n) for n in range(5, 9)))
        await broker.wait_for(lambda: len(adapter.gates) == 8)
        later = broker.polls[polls:]
        assert later, "no poll after the first batch"
        assert all(poll.max_orders == 4 for poll in later), [poll.max_orders for poll in later]
        for gate in adapter.gates[4:]:
            gate.set()
        await broker.wait_for(lambda: len(broker.reports) == 8)


async def test_a_batch_is_reported_without_waiting_for_another_batch_or_a_read(key: SigningKey, tmp_path: Path) -> None:
    """Two polls' batches in flight with slots to spare, and a read (slow, like a listing) beside the first: the
    first batch is reported once its own orders end, long before the linger, while the second and the read
    still run; then the second goes in a request of its own."""
    async with gated(key, tmp_path, concurrency=8, linger=30.0) as (agent, broker, adapter):
        await broker.give(submit_order(1), submit_order(2), read_order(3, "cluster_info"))
        await broker.wait_for(lambda: len(adapter.gates) == 2)
        await broker.give(submit_order(4), submit_order(5))
        await broker.wait_for(lambda: len(adapter.gates) == 4)
        for gate in adapter.gates[:2]:
            gate.set()
        await broker.wait_for(lambda: len(broker.reports) == 2, timeout_s=5)
        assert sorted(report["order"] for report in broker.reports) == [1, 2]
        assert agent.running == 3  # the second batch and the read are still being carried out
        for gate in adapter.gates[2:]:
            gate.set()
        await broker.wait_for(lambda: len(broker.reports) == 4, timeout_s=5)
        adapter.read_gate.set()
        await broker.wait_for(lambda: len(broker.reports) == 5, timeout_s=5)
        assert broker.report_batches[:2] == [2, 2]


async def test_the_next_poll_goes_at_once_while_no_batch_is_partly_ended(key: SigningKey, tmp_path: Path) -> None:
    """Four orders in eight slots, none ended: the free slots are asked for at once (the linger is long), so a
    second batch is not held back behind the first."""
    async with gated(key, tmp_path, concurrency=8, linger=30.0) as (_, broker, adapter):
        await broker.give(*(submit_order(n) for n in range(1, 5)))
        await broker.wait_for(lambda: len(adapter.gates) == 4)
        await broker.wait_for(lambda: any(poll.max_orders == 4 for poll in broker.polls), timeout_s=5)
        await broker.give(*(submit_order(n) for n in range(5, 9)))
        await broker.wait_for(lambda: len(adapter.gates) == 8, timeout_s=5)
        for gate in adapter.gates:
            gate.set()
        await broker.wait_for(lambda: len(broker.reports) == 8)
