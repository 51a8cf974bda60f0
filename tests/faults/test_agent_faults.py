"""The faults the agent link must survive (issue 13), each ledger-counted, on SQLite and PostgreSQL.

The broker reaches echo only through real ``conveyor-agent`` processes (tests/faults/conftest.py); where the link
itself is the fault, the agent dials the broker through a :class:`~tests.agentlink.proxy.LinkProxy` the test
steers. Every test ends with :func:`~tests.faults.harness.check_exactly_once` (the broker's answers, the ledger
the jobs write, and Slurm's own listing agree: each job ran once, as one Slurm job) and prints its ledger counts.
Waits are deadlines on conditions; a proxy holding an answer until a time has passed is such a condition.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.agentlink.harness import AgentProcess
from tests.agentlink.proxy import Exchange, LinkProxy
from tests.faults.conftest import NewAgent, NewWorkspace, register_agents
from tests.faults.harness import (
    TOKEN,
    BrokerProcess,
    Outcome,
    Submission,
    Workspace,
    burst,
    check_exactly_once,
    jobs_of_run,
    poll_until,
    submissions,
    submit_one,
    wait_all_terminal,
)

pytestmark = pytest.mark.lab

JOBS = 20
SUBMITTED = re.compile(r"order (\d+): attempt (\S+) is Slurm job (\d+)")


def link_view(broker: BrokerProcess) -> dict[str, Any]:
    """echo's agent link as /v1/factories says: ``connected`` and the live ``sessions``."""
    answer = httpx.get(f"{broker.base_url}/v1/factories/echo", headers={"Authorization": f"Bearer {TOKEN}"},
                       timeout=5)  # fmt: skip
    assert answer.status_code == 200, answer.text
    view: dict[str, Any] = answer.json().get("agent") or {"connected": False, "sessions": []}
    return view


def wait_connected(broker: BrokerProcess, agent: AgentProcess, sessions: int = 1) -> dict[str, Any]:
    """Until a session holds echo's lease and ``sessions`` are live; the view then."""

    def ready() -> bool:
        view = link_view(broker)
        return bool(view["connected"]) and len(view["sessions"]) >= sessions

    poll_until(ready, 30, "echo's agent to hold the lease", context=agent.log_tail)
    return link_view(broker)


def slurm_submits(agent: AgentProcess) -> list[str]:
    """The attempts this agent submitted to Slurm, every incarnation (its log)."""
    return [match[2] for match in SUBMITTED.finditer(agent.log_text())]


async def submit_all(broker: BrokerProcess, items: list[Submission]) -> None:
    async with broker.client() as client:
        await burst(client, items)
    assert all(item.accepted for item in items), [item.problems[:1] for item in items if not item.accepted]


async def states(broker: BrokerProcess, run_id: str) -> collections.Counter[str]:
    async with broker.client() as client:
        return collections.Counter(job["state"] for job in await jobs_of_run(client, run_id))


async def finish(
    broker: BrokerProcess, workspace: Workspace, run_id: str, items: list[Submission], what: str, *agents: AgentProcess
) -> Outcome:
    """Wait until every job is terminal, check exactly once, and print the ledger's counts."""

    def context() -> str:
        return "\n".join([broker.log_tail(), *(agent.log_tail() for agent in agents)])

    async with broker.client() as client:
        await wait_all_terminal(client, run_id, len(items), timeout_s=150, context=context)
        outcome = await check_exactly_once(client, workspace, run_id, items)
        attempts = collections.Counter[int]()
        for item in items:
            events = (await client.get(f"/v1/jobs/{item.job_id}/events", params={"limit": 500})).json()["items"]
            attempts[sum(event["kind"] == "attempt_started" for event in events)] += 1
    ledger = workspace.ledger()
    runs = collections.Counter(line.tag for line in ledger)
    print(
        f"\nLEDGER {what}: {len(items)} jobs, {len(ledger)} runs on {sorted({line.cluster for line in ledger})}, "
        f"runs per job {dict(collections.Counter(runs.values()))}, distinct Slurm ids "
        f"{len({line.slurm_id for line in ledger})}, states {dict(outcome.states)}, attempts per job "
        f"{dict(sorted(attempts.items()))}"
    )
    return outcome


@pytest.fixture
def proxy(agent_broker: BrokerProcess) -> Iterator[LinkProxy]:
    """A proxy in front of the broker for the agent (the test steers it); stopped at the end."""
    link = LinkProxy(agent_broker.port)
    link.start()
    try:
        yield link
    finally:
        link.stop()


# --- 1. the agent killed right before and right after its Slurm submit ---------------------------------------


@pytest.mark.parametrize("point", ["before_submit", "after_submit"])
async def test_agent_killed_around_a_submit_and_restarted_with_nothing(
    agent_broker: BrokerProcess, new_agent: NewAgent, new_workspace: NewWorkspace, run_id: str, point: str
) -> None:
    agent = new_agent("agent")
    register_agents(agent_broker, agent)
    agent.start(env={"CONVEYOR_AGENT_FAILPOINTS": point})
    wait_connected(agent_broker, agent)
    workspace = new_workspace(run_id)
    items = submissions(workspace, "echo", run_id, JOBS)
    await submit_all(agent_broker, items)
    await asyncio.to_thread(poll_until, lambda: not agent.running(), 60, f"the agent to kill itself at {point}",
                            context=agent.log_tail)  # fmt: skip
    assert agent.kill() == -9, agent.log_tail()
    assert f"failpoint {point}: killing this process" in agent.log_text()
    before_restart = slurm_submits(agent)
    assert before_restart == [], before_restart  # the first submit's report was never written
    agent.start()  # the same files (config, key, policy): the agent keeps nothing else
    outcome = await finish(agent_broker, workspace, run_id, items, f"agent killed at {point}", agent)
    assert outcome.states == {"completed": JOBS}


# --- 2. the broker killed while orders are out; both killed --------------------------------------------------


@pytest.mark.parametrize("killed", ["broker", "broker and agent"])
async def test_broker_killed_while_orders_are_out(
    agent_broker: BrokerProcess, echo_agent: AgentProcess, new_workspace: NewWorkspace, run_id: str, killed: str
) -> None:
    wait_connected(agent_broker, echo_agent)
    workspace = new_workspace(run_id)
    # Every other job's tag is a secret: sealed in its order, opened by the restarted broker with the same key.
    items = submissions(workspace, "echo", run_id, JOBS, secret_every=2)
    await submit_all(agent_broker, items)
    await asyncio.to_thread(poll_until, lambda: len(slurm_submits(echo_agent)) >= 3, 60, "the first submits",
                            context=echo_agent.log_tail)  # fmt: skip
    assert agent_broker.kill() == -9
    if killed == "broker and agent":
        assert echo_agent.kill() == -9
    out_at_kill = len(slurm_submits(echo_agent))
    agent_broker.start()
    if killed == "broker and agent":
        echo_agent.start()
    outcome = await finish(agent_broker, workspace, run_id, items, f"{killed} killed ({out_at_kill} submitted)",
                           echo_agent)  # fmt: skip
    assert outcome.states == {"completed": JOBS}


# --- 3. the link cut for longer than a lease -------------------------------------------------------------------


async def test_link_cut_longer_than_a_lease(
    agent_broker: BrokerProcess, new_agent: NewAgent, proxy: LinkProxy, new_workspace: NewWorkspace, run_id: str
) -> None:
    agent = new_agent("agent", broker_url=proxy.base_url)
    register_agents(agent_broker, agent)
    agent.start()
    first = wait_connected(agent_broker, agent)["sessions"][0]["session_id"]
    workspace = new_workspace(run_id)
    items = submissions(workspace, "echo", run_id, JOBS)
    early, late = items[: JOBS // 2], items[JOBS // 2 :]
    await submit_all(agent_broker, early)
    await asyncio.to_thread(poll_until, lambda: len(slurm_submits(agent)) >= 3, 60, "the first submits",
                            context=agent.log_tail)  # fmt: skip
    proxy.cut()
    cut_at = time.monotonic()
    await submit_all(agent_broker, late)  # while the link is down: these must wait, never be lost
    await asyncio.to_thread(poll_until, lambda: not link_view(agent_broker)["sessions"], 30,
                            "the session to lapse", context=agent.log_tail)  # fmt: skip
    lapsed_after_s = time.monotonic() - cut_at
    assert lapsed_after_s > 3  # longer than a lease
    waiting = await states(agent_broker, run_id)
    assert not {"lost", "rejected"} & set(waiting), waiting
    async with agent_broker.client() as client:
        by_key = {job["id"]: job for job in await jobs_of_run(client, run_id)}
    assert all(by_key[item.job_id]["state"] == "queued" for item in late), [by_key[i.job_id] for i in late]
    proxy.restore()
    view = await asyncio.to_thread(wait_connected, agent_broker, agent)
    assert view["sessions"][0]["session_id"] != first  # a new session once the link returned
    await finish(agent_broker, workspace, run_id, items, f"link cut {lapsed_after_s:.0f}+ s", agent)


# --- 4. two agents long-polling when 200 orders appear; the holder killed --------------------------------------


async def submit_orders_by_session(broker: BrokerProcess) -> dict[tuple[str, int], int]:
    """How many submit orders the broker bound to each (session, epoch) (its database)."""
    engine = create_async_engine(broker.database_url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(text(
                "SELECT session_id, epoch, count(*) FROM agent_orders WHERE kind = 'submit' GROUP BY session_id, epoch"
            ))  # fmt: skip
            return {(row[0], int(row[1])): int(row[2]) for row in rows}
    finally:
        await engine.dispose()


async def test_two_agents_and_200_orders_then_the_holder_is_killed(
    agent_broker: BrokerProcess, new_agent: NewAgent, new_workspace: NewWorkspace, run_id: str
) -> None:
    one, two = new_agent("one", kid="lab-agent-1"), new_agent("two", kid="lab-agent-2")
    register_agents(agent_broker, one, two)
    one.start()
    two.start()
    view = await asyncio.to_thread(wait_connected, agent_broker, one, 2)
    [holder_session] = [s for s in view["sessions"] if s["holder"]]
    workspace = new_workspace(run_id)
    items = submissions(workspace, "echo", run_id, 200)
    await submit_all(agent_broker, items)

    def holder_and_standby() -> tuple[AgentProcess, AgentProcess]:
        if holder_session["session_id"] in one.log_text():
            return one, two
        return two, one

    holder, standby = holder_and_standby()
    await asyncio.to_thread(poll_until, lambda: len(slurm_submits(holder)) >= 60, 120, "60 submits by the holder",
                            context=holder.log_tail)  # fmt: skip
    bound = await submit_orders_by_session(agent_broker)
    assert set(bound) == {(holder_session["session_id"], holder_session["epoch"])}, bound
    assert slurm_submits(standby) == [], standby.log_tail()
    assert "fenced" not in standby.log_text()
    assert holder.kill() == -9
    submitted_by_holder = len(slurm_submits(holder))

    def taken_over() -> bool:
        sessions = link_view(agent_broker)["sessions"]
        return any(s["holder"] and s["session_id"] != holder_session["session_id"] for s in sessions)

    await asyncio.to_thread(poll_until, taken_over, 30, "the standby to take the lease", context=standby.log_tail)
    [new_holder] = [s for s in link_view(agent_broker)["sessions"] if s["holder"]]
    assert new_holder["epoch"] > holder_session["epoch"], (holder_session, new_holder)
    await finish(agent_broker, workspace, run_id, items,
                 f"200 orders, holder killed after {submitted_by_holder} submits", holder, standby)  # fmt: skip
    bound = await submit_orders_by_session(agent_broker)
    assert set(bound) <= {(holder_session["session_id"], holder_session["epoch"]),
                          (new_holder["session_id"], new_holder["epoch"])}, bound  # fmt: skip
    assert len(slurm_submits(holder)) + len(slurm_submits(standby)) <= 200
    assert slurm_submits(standby), standby.log_tail()


# --- 5. the holder's link cut after it received orders, before it reported -------------------------------------


async def test_reports_cut_after_the_orders_are_settled_by_tag(
    agent_broker: BrokerProcess, new_agent: NewAgent, proxy: LinkProxy, new_workspace: NewWorkspace, run_id: str
) -> None:
    agent = new_agent("agent", broker_url=proxy.base_url)
    register_agents(agent_broker, agent)
    cut = {"reports": False, "restored": False}

    async def on_answer(exchange: Exchange) -> None:
        submits = b'"kind":"submit"' in exchange.answer_body.replace(b" ", b"")
        if exchange.path.endswith("/orders") and submits and not cut["restored"]:
            cut["reports"] = True  # the orders go through; every report after them is lost on the way

    proxy.on_answer = on_answer
    proxy.drop_request = lambda method, path: cut["reports"] and path.endswith("/reports")
    agent.start()
    wait_connected(agent_broker, agent)
    workspace = new_workspace(run_id)
    items = submissions(workspace, "echo", run_id, JOBS)
    await submit_all(agent_broker, items)

    async def in_doubt() -> int:
        """Jobs whose submit report is overdue, so the broker knows the attempt may be in Slurm and waits to look
        it up (the lookup's own reads are reported through the same cut link, so they fail until it returns)."""
        async with agent_broker.client() as client:
            jobs = await jobs_of_run(client, run_id)
        doubted.update(j["id"] for j in jobs if j["state"] == "queued" and "reach" in (j["state_reason"] or ""))
        return len(doubted)

    doubted: set[str] = set()

    deadline = time.monotonic() + 150
    # Orders were carried out at the site and the broker gave up waiting for their reports: the attempts it holds
    # in doubt are settled by looking their tags up once the link returns. (Jobs not yet sent wait meanwhile: the
    # Factory's reads go unanswered too, so it is unhealthy.)
    while not slurm_submits(agent) or await in_doubt() < len(slurm_submits(agent)):
        assert time.monotonic() < deadline, (await states(agent_broker, run_id), proxy.dropped, agent.log_tail())
        await asyncio.sleep(0.5)  # a poll interval
    assert proxy.dropped["reports"] >= 1
    cut["restored"], cut["reports"] = True, False  # the link returns: reads (the settle's lookups) are answered again
    what = f"reports cut after orders ({len(doubted)} in doubt)"
    outcome = await finish(agent_broker, workspace, run_id, items, what, agent)
    assert outcome.states == {"completed": JOBS}
    async with agent_broker.client() as client:
        for item in items:
            events = (await client.get(f"/v1/jobs/{item.job_id}/events", params={"limit": 500})).json()["items"]
            started = [event for event in events if event["kind"] == "attempt_started"]
            # One attempt: a job in doubt was found by tag (a late report changes nothing): never resubmitted.
            assert len(started) == 1, (item.tag, item.job_id in doubted, events)


# --- 6. an order delayed past its not_after ----------------------------------------------------------------------


async def test_an_order_delayed_past_not_after_is_refused_and_resubmitted(
    agent_broker: BrokerProcess, new_agent: NewAgent, proxy: LinkProxy, new_workspace: NewWorkspace, run_id: str
) -> None:
    agent = new_agent("agent", broker_url=proxy.base_url)
    register_agents(agent_broker, agent)
    held: dict[str, Any] = {}

    async def on_answer(exchange: Exchange) -> None:
        if held or not exchange.path.endswith("/orders"):
            return
        submits = [order for order in json.loads(exchange.answer_body)["orders"] if order["kind"] == "submit"]
        if not submits:
            return
        [order] = submits
        held.update(order)
        not_after = datetime.fromisoformat(order["not_after"])
        # Hold the answer until its not_after has passed (the broker's clock is this host's).
        await asyncio.sleep((not_after - datetime.now(UTC)).total_seconds() + 0.2)
        held["released_at"] = datetime.now(UTC)

    proxy.on_answer = on_answer
    agent.start()
    wait_connected(agent_broker, agent)
    workspace = new_workspace(run_id)
    items = submissions(workspace, "echo", run_id, JOBS)
    delayed, others = items[0], items[1:]
    async with agent_broker.client() as client:
        assert await submit_one(client, delayed) == "201"
    await asyncio.to_thread(poll_until, lambda: "released_at" in held, 60, "the delayed order",
                            context=agent.log_tail)  # fmt: skip
    # The held answer itself never reaches the agent: its poll's budget (the 5 s wait + 15 s) is shorter than
    # the 25 s submit window, so the poll times out and the order is handed out again if it is still open. The
    # agent then refuses it (it could not end before not_after); if it had expired first, the agent never sees
    # it, and the broker settles the attempt and submits the next one. Either way attempt 1 never reaches Slurm.
    refused = f"order {held['id']} refused: not started"
    resubmitted = f"attempt {delayed.job_id}/2 is Slurm job"

    def refused_or_resubmitted() -> bool:
        text = agent.log_text()
        return refused in text or resubmitted in text

    await asyncio.to_thread(poll_until, refused_or_resubmitted, 60, "the agent to refuse it or the next attempt",
                            context=agent.log_tail)  # fmt: skip
    await submit_all(agent_broker, others)
    await finish(agent_broker, workspace, run_id, items, "one order delayed past not_after", agent)
    assert held["attempt"] not in slurm_submits(agent)  # no Slurm job for the delayed order's attempt
    async with agent_broker.client() as client:
        job = (await client.get(f"/v1/jobs/{delayed.job_id}")).json()
        events = (await client.get(f"/v1/jobs/{delayed.job_id}/events", params={"limit": 500})).json()["items"]
    assert held["attempt"] == f"{delayed.job_id}/1", held
    assert sum(event["kind"] == "attempt_started" for event in events) >= 2, events
    assert datetime.fromisoformat(job["submitted_at"]) > datetime.fromisoformat(held["not_after"]), job


# --- 7. the agent's key revoked mid-run ------------------------------------------------------------------------


async def test_a_revoked_agent_is_refused_at_once_and_nothing_is_lost(
    agent_broker: BrokerProcess, echo_agent: AgentProcess, new_agent: NewAgent, new_workspace: NewWorkspace,
    run_id: str,
) -> None:  # fmt: skip
    wait_connected(agent_broker, echo_agent)
    workspace = new_workspace(run_id)
    items = submissions(workspace, "echo", run_id, JOBS)
    early, late = items[: JOBS // 2], items[JOBS // 2 :]
    await submit_all(agent_broker, early)
    await asyncio.to_thread(poll_until, lambda: len(slurm_submits(echo_agent)) >= 3, 60, "the first submits",
                            context=echo_agent.log_tail)  # fmt: skip
    successor = new_agent("successor", kid="lab-agent-2")
    register_agents(agent_broker, successor)  # echo's JWKS replaced: the running agent's key is revoked
    revoked_at = time.monotonic()
    refusals_before = echo_agent.log_text().count("HTTP 401")
    await asyncio.to_thread(poll_until, lambda: echo_agent.log_text().count("HTTP 401") > refusals_before, 5,
                            "the revoked agent's next request to be refused", context=echo_agent.log_tail)  # fmt: skip
    refused_after_s = time.monotonic() - revoked_at
    await submit_all(agent_broker, late)
    await asyncio.to_thread(poll_until, lambda: not link_view(agent_broker)["connected"], 30,
                            "the revoked agent's lease to lapse", context=echo_agent.log_tail)  # fmt: skip
    submitted_by_revoked = len(slurm_submits(echo_agent))
    waiting = await states(agent_broker, run_id)
    assert not {"lost", "rejected"} & set(waiting), waiting
    assert echo_agent.running()  # it keeps trying, and keeps being refused
    successor.start()
    await asyncio.to_thread(wait_connected, agent_broker, successor)
    outcome = await finish(agent_broker, workspace, run_id, items,
                           f"key revoked (refused after {refused_after_s:.1f} s)", echo_agent, successor)  # fmt: skip
    assert outcome.states == {"completed": JOBS}
    assert len(slurm_submits(echo_agent)) == submitted_by_revoked  # nothing more from the revoked agent
