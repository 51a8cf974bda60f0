"""The agent link (issue 13): forwarding through a real agent beside the direct adapter, order delivery latency
with 20 sessions, and the broker's idle CPU with 20 long-polling agents; each beside a baseline of the same run.

The broker is its own process (``python -m app``, dev mode, a fresh SQLite file per start). The lab cluster is
echo by default (expendable, Slurm 22.05; ``--cluster`` names another lab cluster, e.g. bravo, also 22.05);
every phase's jobs are cancelled on that cluster afterwards, by name.

- ``forwarding``: bench/forwarding.py's workload (a burst of ``--jobs`` trivial jobs POSTed over 16 connections,
  timed from the first accept to the last ``submitted``, both by the broker's clock) with echo reached two ways,
  alternating per round: ``direct`` (the rest adapter in the broker) and ``agent`` (echo as ``adapter: {kind:
  agent}``, a real ``conveyor-agent`` process with the rest adapter inside, carrying out as many orders at once as
  the direct path makes Slurm calls). ``--modes ... sequential`` adds issue 14's baseline: the same number of
  sequential POSTs to the cluster's slurmrestd through the REST adapter, no broker (bench/forwarding.py's
  ``rest``). Jobs/s over all rounds, and the ratios.
- ``latency``: accept (the job's ``created_at``) to order delivered (its first submit order's ``delivered_at`` in
  ``agent_orders``), both the broker's clock, for jobs POSTed at ``--rate`` per second, round-robin over the
  Factories: with 20 agent Factories (19 :class:`~bench.null_slurm.NullSlurmAgent`, SIMULATED agents over a null
  Slurm in this process, plus echo's real agent process), beside 1 (echo's real agent alone), same run.
- ``idle``: the broker's CPU (utime + stime of its process) over ``--idle-s`` with 20 agent sessions
  long-polling and no jobs, beside the same broker process before any agent connected; % of one core. This
  broker runs with the production defaults of every loop and agent timing.

    .venv/bin/python -m bench.agent_link                      # all three, ~2 minutes
    .venv/bin/python -m bench.agent_link --parts forwarding --jobs 500 --rounds 4
    .venv/bin/python -m bench.agent_link --parts forwarding --jobs 1000 --modes agent sequential --cluster bravo
    .venv/bin/python -m bench.agent_link --parts latency idle --latency-jobs 400 --rate 20 --idle-s 60
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.forwarding import (
    DONE_STATES,
    CpuMeter,
    _post_all,
    _wait_none_queued,
    direct_phase,
    drain,
    list_jobs,
    parse_env,
    parse_time,
    py_spy,
)
from bench.forwarding import Run as ForwardingRun
from bench.null_slurm import NullSlurmAgent
from broker.db.migrate import upgrade
from broker.settings import Settings
from dev.lab.agents import AUDIENCE
from dev.lab.view import Cluster, clusters_of, job_dir, make_adapter, read_lab
from slurm_adapters.interface import SlurmAdapter
from tests.agentlink.harness import AgentProcess, register_agent_keys
from tests.faults.harness import PROJECT, BrokerProcess

CLUSTER = "echo"  # the lab's expendable cluster: the default one (``--cluster``) this benchmark submits to
LAB_FACTORIES = Path(os.environ.get("CONVEYOR_LAB_DIR", "/var/lib/conveyor-lab")) / "factories.yaml"
PARTS = ("forwarding", "latency", "idle")
FORWARDING_MODES = ("direct", "agent", "sequential")
SESSIONS = 20
# The direct path's Slurm calls at once by default: the dispatcher's claim batch times its batches in flight.
DIRECT_CALLS_AT_ONCE = Settings.model_fields["claim_batch"].default * Settings.model_fields["dispatch_batches"].default
# The forwarding brokers: bench/forwarding.py's dispatcher cadence, a health check every second so a Factory is
# healthy (and gets jobs) soon after its agent connects, and a listing a minute: each lists every job slurmctld
# still holds (MinJobAge keeps thousands after a few bursts; ~2 s of slurmrestd CPU each on 22.05, half a core at
# one per 5 s), a cost both paths pay alike that grows with the benchmark's own history. The same in every phase.
FAST = {
    "CONVEYOR_DISPATCHER_INTERVAL_S": "0.05",
    "CONVEYOR_RECONCILER_INTERVAL_S": "60",
    "CONVEYOR_HEALTH_INTERVAL_S": "1",
}
# The latency brokers: FAST, but the health check and the listings at their production cadence: with 20 agent
# Factories a check every second would be 60 read orders a second, which no deployment pays.
LATENCY = {**FAST, "CONVEYOR_HEALTH_INTERVAL_S": "15", "CONVEYOR_RECONCILER_INTERVAL_S": "5"}
# The idle broker: every loop and agent timing at its production default (BrokerProcess's fast test loops
# undone), so its idle CPU is what a deployment pays.
DEFAULTS = {
    "CONVEYOR_DISPATCHER_INTERVAL_S": "1",
    "CONVEYOR_RECONCILER_INTERVAL_S": "5",
    "CONVEYOR_HEALTH_INTERVAL_S": "15",
    "CONVEYOR_RETRY_BACKOFF_MAX_S": "60",
    "CONVEYOR_LEASE_S": "120",
}


# --- pure helpers (tests/unit/test_bench_agent_link.py) ----------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of a non-empty sample."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def cpu_percent(cpu_s: float, wall_s: float) -> float:
    """CPU seconds over a wall interval, in % of one core."""
    return 100.0 * cpu_s / wall_s


def null_factory_ids(count: int) -> list[str]:
    """The simulated Factories' ids: ``null-01`` ... (their names say they are simulations)."""
    return [f"null-{index:02d}" for index in range(1, count + 1)]


def agent_factories(lab: Mapping[str, Any], real: str, simulated: Sequence[str]) -> dict[str, Any]:
    """A Factory file with ``real`` reached through its agent, and one clone of it per ``simulated`` id, each an
    agent Factory of its own (no URL, no key) served by a simulated agent over a null Slurm."""
    entry = next((item for item in lab["factories"] if item["id"] == real), None)
    if entry is None:
        raise ValueError(f"the lab's Factory file has no Factory {real!r}")
    factories = [{**entry, "adapter": {"kind": "agent", "cluster": real}}]
    for factory_id in simulated:
        factories.append({**entry, "id": factory_id, "name": f"Null Slurm simulation {factory_id} (benchmark)",
                          "adapter": {"kind": "agent", "cluster": factory_id}})  # fmt: skip
    return {"factories": factories}


def direct_factories(lab: Mapping[str, Any], real: str) -> dict[str, Any]:
    """The lab's Factory file reduced to ``real``, reached directly (its adapter block as the lab has it)."""
    kept = [item for item in lab["factories"] if item["id"] == real]
    if not kept:
        raise ValueError(f"the lab's Factory file has no Factory {real!r}")
    return {"factories": kept}


def delivery_latencies(created: Mapping[str, datetime], delivered: Mapping[str, datetime]) -> dict[str, float]:
    """Job id -> seconds from accept to its first submit order's delivery; ``delivered`` is keyed by attempt id
    (``job/attempt``), the earliest delivery of a job counts; jobs not delivered are left out."""
    first: dict[str, datetime] = {}
    for attempt, moment in delivered.items():
        job = attempt.split("/", 1)[0]
        if job in created and (job not in first or moment < first[job]):
            first[job] = moment
    return {job: (moment - created[job]).total_seconds() for job, moment in first.items()}


# --- processes ---------------------------------------------------------------------------------------------


@dataclass
class Bench:
    cluster: Cluster
    workroot: Path
    template: Path
    lab: dict[str, Any]
    run_id: str = field(default_factory=lambda: secrets.token_hex(4))
    names: list[str] = field(default_factory=list)
    post_concurrency: int = 16
    agent_concurrency: int = DIRECT_CALLS_AT_ONCE  # as many Slurm calls at once as the direct path
    py_spy_prefix: Path | None = None  # forwarding: py-spy each burst's broker and agent
    forwarding_env: dict[str, str] = field(default_factory=lambda: dict(FAST))  # the forwarding brokers' settings

    @property
    def factory(self) -> str:
        """The Factory submitted to: the lab cluster's own (same id as the cluster)."""
        return self.cluster.name

    def py_spy_output(self, process: str, round_: int) -> Path | None:
        """Where a burst's profile of ``process`` goes (None: no profiling)."""
        if self.py_spy_prefix is None:
            return None
        return Path(f"{self.py_spy_prefix}-{process}-r{round_}.speedscope.json")

    def name(self, what: str) -> str:
        name = f"bench-agent-{self.run_id}-{what}"
        self.names.append(name)
        return name

    def broker(self, label: str, factories: Mapping[str, Any], settings: Mapping[str, str]) -> BrokerProcess:
        home = self.workroot / label
        home.mkdir(parents=True)
        shutil.copyfile(self.template, home / "conveyor.db")
        factories_file = home / "factories.json"
        factories_file.write_text(json.dumps(factories))
        url = f"sqlite+aiosqlite:///{home / 'conveyor.db'}"
        return BrokerProcess(workdir=home, database_url=url, factories_file=factories_file, extra_env=dict(settings))

    def body(self, name: str, factory: str, workdir: str) -> dict[str, Any]:
        return {
            "name": name,
            "project": PROJECT,
            "command": ["true"],
            "working_directory": workdir,
            "resources": {"cpus_per_task": 1, "time_limit_min": 2},
            "placement": {"factory": factory},
        }


@contextlib.contextmanager
def running(broker: BrokerProcess) -> Iterator[BrokerProcess]:
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@contextlib.contextmanager
def real_agent(bench: Bench, broker: BrokerProcess, label: str) -> Iterator[AgentProcess]:
    """echo's ``conveyor-agent`` process (rest adapter inside, ``bench.agent_concurrency`` orders at once), key
    registered; stopped by its PID."""
    agent = AgentProcess(broker.workdir / label, bench.cluster, bench.factory, broker.base_url)
    agent.config_file.write_text(yaml.safe_dump({**agent.config(), "concurrency": bench.agent_concurrency}))
    register_agent_keys(broker, bench.factory, agent.public_jwks)
    agent.start()
    try:
        yield agent
    finally:
        if agent.running():
            with contextlib.suppress(Exception):
                agent.stop(timeout_s=30)
        if agent.running():
            agent.kill()


async def factory_view(client: httpx.AsyncClient, factory_id: str) -> dict[str, Any]:
    answer = await client.get(f"/v1/factories/{factory_id}")
    answer.raise_for_status()
    view: dict[str, Any] = answer.json()
    return view


async def wait_factories(
    broker: BrokerProcess, factory_ids: Sequence[str], *, healthy: bool, agent: bool, timeout_s: float = 90.0
) -> None:
    """Until every Factory's agent holds its lease (``agent``) and (``healthy``) the Factory is healthy."""
    deadline = time.monotonic() + timeout_s
    async with broker.client() as client:
        waiting = list(factory_ids)
        while waiting:
            views = await asyncio.gather(*(factory_view(client, factory_id) for factory_id in waiting))
            waiting = [
                factory_id
                for factory_id, view in zip(waiting, views, strict=True)
                if (healthy and view.get("healthy") is not True)
                or (agent and not (view.get("agent") or {}).get("connected"))
            ]
            if waiting and time.monotonic() > deadline:
                raise TimeoutError(f"Factories {waiting} not ready in {timeout_s} s\n{broker.log_tail()}")
            await asyncio.sleep(0.2)  # a poll interval, not a wait for something to happen


async def wait_reconciled(broker: BrokerProcess, factory_id: str, timeout_s: float = 90.0) -> None:
    """Until the broker has finished a reconcile cycle of the Factory (its first listing, direct or pushed by
    the agent, is then behind it: a listing of the thousands of jobs slurmctld still holds costs slurmrestd
    seconds of CPU, which must not fall inside one path's burst only)."""
    deadline = time.monotonic() + timeout_s
    series = f'conveyor_reconcile_cycle_seconds{{factory="{factory_id}"}}'
    async with broker.client() as client:
        while series not in (await client.get("/metrics")).text:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{factory_id} not reconciled in {timeout_s} s\n{broker.log_tail()}")
            await asyncio.sleep(0.2)  # a poll interval, not a wait for something to happen


# --- 1. forwarding -----------------------------------------------------------------------------------------


@dataclass
class Burst:
    mode: str
    round: int
    jobs: int
    seconds: float
    cpu_s: dict[str, float]
    accepted_s: float | None = None  # first accept -> last accept (forwarding through a broker)

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds

    def accepted(self) -> str:
        return "" if self.accepted_s is None else f" (all accepted at {self.accepted_s:.2f} s)"

    def cpu(self) -> str:
        return ", ".join(f"{name} {seconds * 1000 / self.jobs:.1f}" for name, seconds in self.cpu_s.items())


async def forwarding_burst(bench: Bench, mode: str, round_: int, jobs: int) -> Burst:
    """One fresh broker (echo direct, or echo through a real agent); POST the burst; first accept -> last
    submitted by the broker's clock. CPU ms/job of the broker, the agent (agent mode), slurmctld, slurmrestd."""
    name = bench.name(f"fwd-{mode}-r{round_}")
    workdir = job_dir(bench.cluster, f"{name}-{secrets.token_hex(4)}")
    bodies = [bench.body(name, bench.factory, workdir) for _ in range(jobs)]
    real = bench.factory
    factories = agent_factories(bench.lab, real, []) if mode == "agent" else direct_factories(bench.lab, real)
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(running(bench.broker(f"fwd-{mode}-r{round_}", factories, bench.forwarding_env)))
        agent_pid = None
        if mode == "agent":
            agent_pid = stack.enter_context(real_agent(bench, broker, "agent")).pid
        await wait_factories(broker, [bench.factory], healthy=True, agent=mode == "agent")
        await wait_reconciled(broker, bench.factory)
        async with broker.client(limits=httpx.Limits(max_connections=bench.post_concurrency)) as client:
            stack.enter_context(py_spy(broker.pid, bench.py_spy_output(mode, round_)))
            if agent_pid is not None:
                stack.enter_context(py_spy(agent_pid, bench.py_spy_output("agent-process", round_)))
            meter = CpuMeter(bench.cluster, broker.pid)
            if agent_pid is not None:
                meter.pids["agent"] = agent_pid
                meter.started = meter._now()
            await _post_all(client, bodies, bench.post_concurrency)
            await _wait_none_queued(client, timeout_s=max(120.0, jobs * 0.5))
            cpu = meter.used()
            done = await list_jobs(client)
    await drain(bench.cluster, name)
    states = {job["state"] for job in done}
    if len(done) != jobs or states - DONE_STATES:
        raise RuntimeError(f"{mode}: not all {jobs} jobs forwarded: {sorted(states)} (log {broker.workdir})")
    created = min(parse_time(job["created_at"]) for job in done)
    accepted = max(parse_time(job["created_at"]) for job in done)
    submitted = max(parse_time(job["submitted_at"]) for job in done)
    return Burst(mode, round_, jobs, (submitted - created).total_seconds(), cpu, (accepted - created).total_seconds())


async def sequential_burst(bench: Bench, adapter: SlurmAdapter, round_: int, jobs: int) -> Burst:
    """``jobs`` sequential POSTs to the cluster's slurmrestd through the REST adapter, no broker (bench/forwarding.py's
    ``rest`` method): the baseline issue 14 sets the agent path against."""
    run = ForwardingRun(bench.cluster, jobs, bench.template, bench.workroot)
    phase = await direct_phase(run, adapter, round_)
    return Burst("sequential", round_, jobs, phase.seconds, phase.cpu_s)


async def forwarding(bench: Bench, jobs: int, rounds: int, modes: Sequence[str]) -> list[str]:
    bursts: list[Burst] = []
    adapter = make_adapter("rest", bench.cluster)
    try:
        if "sequential" in modes:  # untimed: the adapter's version negotiation and first connection
            await sequential_burst(bench, adapter, -1, 1)
        for round_ in range(rounds):
            for mode in modes if round_ % 2 == 0 else list(reversed(modes)):
                if mode == "sequential":
                    burst = await sequential_burst(bench, adapter, round_, jobs)
                else:
                    burst = await forwarding_burst(bench, mode, round_, jobs)
                print(f"  forwarding round {round_} {mode:10} {jobs} jobs in {burst.seconds:6.2f} s = "
                      f"{burst.rate:6.1f} jobs/s{burst.accepted()}; CPU ms/job: {burst.cpu()}", flush=True)  # fmt: skip
                bursts.append(burst)
    finally:
        await adapter.aclose()
    totals = {
        mode: sum(b.jobs for b in bursts if b.mode == mode) / sum(b.seconds for b in bursts if b.mode == mode)
        for mode in modes
    }
    per_round = {mode: " ".join(f"{b.rate:.1f}" for b in bursts if b.mode == mode) for mode in totals}
    rates = ", ".join(f"{mode} {totals[mode]:.1f} jobs/s ({per_round[mode]})" for mode in modes)
    ratios = [
        f"agent / {base} = {totals['agent'] / totals[base]:.2f}x (target >= {target})"
        for base, target in (("direct", "0.9x"), ("sequential", "1.0x"))
        if "agent" in totals and base in totals
    ]
    return [f"forwarding {jobs}-job bursts to {bench.factory}, {rounds} round(s): {rates}; " + "; ".join(ratios)]


# --- 2. accept -> order delivered --------------------------------------------------------------------------


def read_deliveries(database: Path) -> tuple[dict[str, datetime], dict[str, datetime]]:
    """From the broker's SQLite file: job id -> created_at, and submit attempt -> delivered_at (delivered ones)."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)) as db:
        created = {str(row[0]): _sqlite_time(row[1]) for row in db.execute("SELECT id, created_at FROM jobs")}
        delivered = {
            str(row[0]): _sqlite_time(row[1])
            for row in db.execute(
                "SELECT attempt, delivered_at FROM agent_orders WHERE kind = 'submit' AND delivered_at IS NOT NULL"
            )
        }
    return created, delivered


def _sqlite_time(value: object) -> datetime:
    moment = datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=None)


async def post_paced(client: httpx.AsyncClient, bodies: Sequence[dict[str, Any]], rate: float) -> None:
    """Open loop: body i is POSTed at start + i / rate, whatever the earlier answers took; every one must 201."""
    start = time.perf_counter()

    async def post(index: int, body: dict[str, Any]) -> None:
        await asyncio.sleep(max(0.0, start + index / rate - time.perf_counter()))
        answer = await client.post("/v1/jobs", json=body)
        if answer.status_code != 201:
            raise RuntimeError(f"POST /v1/jobs answered {answer.status_code}: {answer.text}")

    await asyncio.gather(*(post(index, body) for index, body in enumerate(bodies)))


@dataclass
class Latencies:
    sessions: int
    seconds: list[float]
    cpu: dict[str, float]  # % of one core while the jobs were POSTed and delivered, per party

    def line(self) -> str:
        ms = [s * 1000 for s in self.seconds]
        return (f"{self.sessions:2d} session(s): {len(ms)} jobs, accept -> delivered p50 {percentile(ms, 50):.0f} ms, "
                f"p99 {percentile(ms, 99):.0f} ms, max {max(ms):.0f} ms")  # fmt: skip

    def cpu_line(self) -> str:
        return ", ".join(f"{name} {percent:.0f} %" for name, percent in self.cpu.items())


async def latency_run(bench: Bench, sessions: int, jobs: int, rate: float, idle_s: float = 0.0) -> Latencies:
    """A fresh broker with ``sessions`` agent Factories: echo's real agent plus ``sessions - 1`` simulated ones."""
    simulated = null_factory_ids(sessions - 1)
    factories = [bench.factory, *simulated]
    name = bench.name(f"lat-{sessions}")
    workdir = job_dir(bench.cluster, f"{name}-{secrets.token_hex(4)}")
    bodies = [bench.body(name, factories[i % len(factories)], workdir) for i in range(jobs)]
    broker = bench.broker(f"latency-{sessions}", agent_factories(bench.lab, bench.factory, simulated), LATENCY)
    nulls: list[NullSlurmAgent] = []
    with running(broker), real_agent(bench, broker, "agent"):
        try:
            for factory_id in simulated:
                null = NullSlurmAgent(broker.workdir / "null-agents", factory_id, broker.base_url, audience=AUDIENCE,
                                      concurrency=bench.agent_concurrency)  # fmt: skip
                register_agent_keys(broker, factory_id, null.public_jwks)
                null.start()
                nulls.append(null)
            await wait_factories(broker, factories, healthy=True, agent=True)
            meter = CpuMeter(bench.cluster, broker.pid)
            started = time.monotonic()
            async with broker.client(limits=httpx.Limits(max_connections=32)) as client:
                await post_paced(client, bodies, rate)
            deadline = time.monotonic() + 60
            while True:
                created, delivered = await asyncio.to_thread(read_deliveries, broker.workdir / "conveyor.db")
                seconds = delivery_latencies(created, delivered)
                if len(seconds) >= jobs:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{jobs - len(seconds)} of {jobs} jobs' orders never delivered ({broker.workdir})"
                    )
                await asyncio.sleep(0.2)  # a poll interval, not a wait for something to happen
            wall = time.monotonic() - started
            cpu = {name: cpu_percent(used, wall) for name, used in meter.used().items()}
        finally:
            await asyncio.gather(*(null.stop() for null in nulls))
    await drain(bench.cluster, name)
    return Latencies(sessions, list(seconds.values()), cpu)


# --- 3. idle CPU -------------------------------------------------------------------------------------------


def process_cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` so far, in seconds, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CpuMeter.TICK


async def idle_cpu(pid: int, seconds: float) -> float:
    """The process's CPU over ``seconds`` of wall time, in % of one core."""
    before, started = process_cpu_s(pid), time.monotonic()
    await asyncio.sleep(seconds)  # the measured interval itself
    return cpu_percent(process_cpu_s(pid) - before, time.monotonic() - started)


async def idle(bench: Bench, seconds: float, overrides: Mapping[str, str]) -> list[str]:
    """One broker at production defaults (plus ``overrides``): idle with no agent, then with 20 sessions."""
    simulated = null_factory_ids(SESSIONS - 1)
    settings = {**DEFAULTS, **overrides}
    broker = bench.broker("idle", agent_factories(bench.lab, bench.factory, simulated), settings)
    nulls: list[NullSlurmAgent] = []
    with running(broker):
        await asyncio.sleep(5)  # settle: the start's own work (first loop cycles) is not idle time
        alone = await idle_cpu(broker.pid, seconds)
        print(f"  idle: broker with no agent connected {alone:.2f} % of one core over {seconds:.0f} s", flush=True)
        with real_agent(bench, broker, "agent"):
            try:
                for factory_id in simulated:
                    null = NullSlurmAgent(broker.workdir / "null-agents", factory_id, broker.base_url,
                                          audience=AUDIENCE, concurrency=bench.agent_concurrency)  # fmt: skip
                    register_agent_keys(broker, factory_id, null.public_jwks)
                    null.start()
                    nulls.append(null)
                await wait_factories(broker, [bench.factory, *simulated], healthy=False, agent=True)
                await asyncio.sleep(5)  # settle: hellos and first health reads are not idle time
                polled = await idle_cpu(broker.pid, seconds)
            finally:
                await asyncio.gather(*(null.stop() for null in nulls))
    print(f"  idle: broker with {SESSIONS} agents long-polling {polled:.2f} % of one core over {seconds:.0f} s",
          flush=True)  # fmt: skip
    return [
        f"idle broker CPU over {seconds:.0f} s ({_settings(overrides) or 'production timings'}): "
        f"{polled:.2f} % of one core with {SESSIONS} "
        f"long-polling agents ({SESSIONS - 1} simulated + 1 real), {alone:.2f} % with none connected"
    ]


# --- the run -----------------------------------------------------------------------------------------------


async def run(bench: Bench, args: argparse.Namespace) -> list[str]:
    lines: list[str] = []
    if "forwarding" in args.parts:
        lines += await forwarding(bench, args.jobs, args.rounds, args.modes)
    if "latency" in args.parts:
        results: list[Latencies] = []
        for sessions in (SESSIONS, 1):
            result = await latency_run(bench, sessions, args.latency_jobs, args.rate)
            print(f"  latency {result.line()}; CPU (% of one core): {result.cpu_line()}", flush=True)
            results.append(result)
        many, one = results
        ratio = percentile(many.seconds, 99) / percentile(one.seconds, 99)
        lines += [
            f"latency at {args.rate:g} jobs/s: {many.line()} ({SESSIONS - 1} simulated over a null Slurm + 1 real)",
            f"         baseline {one.line()} (the real agent alone); p99 ratio {ratio:.2f}x",
        ]
    if "idle" in args.parts:
        lines += await idle(bench, args.idle_s, parse_env(args.idle_env))
    return lines


def _settings(settings: Mapping[str, str]) -> str:
    return " ".join(f"{key}={value}" for key, value in sorted(settings.items()))


def lab_cluster(name: str) -> Cluster:
    """The lab cluster ``name`` (its Factory in the lab's Factory file has the same id)."""
    for cluster in clusters_of(read_lab()):
        if cluster.name == name:
            return cluster
    raise SystemExit(f"the lab has no cluster {name!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--jobs", type=int, default=200, help="forwarding: jobs per burst (default 200)")
    parser.add_argument("--rounds", type=int, default=2, help="forwarding: rounds of every mode, order reversed each")
    parser.add_argument("--modes", nargs="+", choices=FORWARDING_MODES, default=["direct", "agent"],
                        help="forwarding: the broker's direct adapter, the agent, sequential slurmrestd POSTs without "
                        "a broker (issue 14's baseline)")  # fmt: skip
    parser.add_argument("--forwarding-env", action="append", default=[], metavar="CONVEYOR_X=V",
                        help="forwarding: a broker setting over the benchmark's (diagnosis)")  # fmt: skip
    parser.add_argument("--latency-jobs", type=int, default=100, help="latency: jobs per run (default 100)")
    parser.add_argument("--rate", type=float, default=10.0, help="latency: jobs POSTed per second (default 10)")
    parser.add_argument("--idle-s", type=float, default=15.0, help="idle: seconds per measured interval")
    parser.add_argument("--idle-env", action="append", default=[], metavar="CONVEYOR_X=V",
                        help="idle: a broker setting over the production defaults (diagnosis)")  # fmt: skip
    parser.add_argument("--agent-concurrency", type=int, default=None,
                        help=f"orders each agent carries out at once (default {DIRECT_CALLS_AT_ONCE}: as many Slurm "
                        "calls as the direct path makes)")  # fmt: skip
    parser.add_argument("--cluster", default=CLUSTER,
                        help=f"the lab cluster (and its Factory) to submit to (default {CLUSTER})")  # fmt: skip
    parser.add_argument("--py-spy", type=Path, default=None, metavar="PREFIX",
                        help="forwarding: profile each burst's broker (py-spy must be installed)")  # fmt: skip
    args = parser.parse_args()
    cluster = lab_cluster(args.cluster)
    with tempfile.TemporaryDirectory(prefix="bench-agent-link-") as tmp:
        workroot = Path(tmp)
        template = workroot / "template.db"
        upgrade(f"sqlite+aiosqlite:///{template}")
        bench = Bench(cluster, workroot, template, json.loads(LAB_FACTORIES.read_text()), py_spy_prefix=args.py_spy)
        bench.forwarding_env.update(parse_env(args.forwarding_env))
        if args.agent_concurrency is not None:
            bench.agent_concurrency = args.agent_concurrency
        print(f"agent link: {cluster.name} (Slurm {cluster.release}), parts {' '.join(args.parts)}, run "
              f"{bench.run_id}", flush=True)  # fmt: skip
        try:
            lines = asyncio.run(run(bench, args))
        finally:
            for name in bench.names:
                with contextlib.suppress(AssertionError):
                    cluster.slurm("scancel", f"--name={name}", timeout_s=60)
    print(f"broker settings: forwarding {_settings(bench.forwarding_env)}; latency {_settings(LATENCY)}; "
          f"idle {_settings(DEFAULTS)}; agent timings at their defaults; SQLite; one process; each agent carries "
          f"out {bench.agent_concurrency} orders at once")  # fmt: skip
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
