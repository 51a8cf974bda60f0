"""The polling shield: what N clients polling one job's status cost slurmctld, through the broker and directly.

The broker answers ``GET /v1/jobs/{id}`` from its database and asks Slurm only from its reconciler (one listing
per Factory per cycle), so slurmctld's load should not grow with the number of clients. This measures it on
slurmctld itself: the RPC counts of ``sdiag``'s by-message-type table (parsed by the same function as
tests/api/test_polling_shield.py), read before and after each window. Every figure is beside the baseline
measured in the same run: the same clients, at the same rate, asking slurmrestd for the job directly (and, at
a small N, running ``squeue -j``), plus control windows with no client at all.

Clients are asyncio tasks in this one process, each polling once a second, phases spread evenly over the
second. Broker clients keep one HTTP/1.1 connection each; slurmrestd (22.05) answers ``Connection: close``,
so direct clients connect per request, as any client of it must. ``squeue`` clients are processes: 1,000 of
them a second is not feasible on a 2-core machine, so that column stops at ``--squeue-max`` clients.

    .venv/bin/python -m bench.polling_shield                      # 10, 100, 1000 clients; 30 s windows
    .venv/bin/python -m bench.polling_shield --clients 10,100 --window 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from broker.db.migrate import upgrade
from dev.lab.commands import slurm_env
from dev.lab.view import SUBMIT_USER, Cluster, clusters_of, make_adapter, read_lab
from slurm_adapters.rest.client import CODECS_BY_VERSION, RestAdapter
from slurm_adapters.tokens import TokenMinter
from tests.api.conftest import TOKEN, job_body
from tests.api.server import Server, lab_factories, start_server
from tests.api.test_polling_shield import JOB_READS, rpc_counts

PERIOD_S = 1.0  # each client polls once a second
REQUEST_TIMEOUT_S = 10.0
TERMINAL = {"completed", "failed", "cancelled", "timeout", "lost", "rejected"}
_CONTENT_LENGTH = re.compile(rb"(?im)^content-length:\s*(\d+)")


@dataclass
class Tally:
    """What the clients of one window did (only requests that started inside the window count)."""

    ok: int = 0
    failed: int = 0
    latencies_s: list[float] = field(default_factory=list)
    counting: bool = False

    def add(self, ok: bool, latency_s: float) -> None:
        if not self.counting:
            return
        if ok:
            self.ok += 1
        else:
            self.failed += 1
        self.latencies_s.append(latency_s)


@dataclass
class Window:
    """One measured window: who polled, how much, and what slurmctld counted meanwhile."""

    via: str  # "none", "broker", "rest", "squeue"
    clients: int
    seconds: float
    rpc_all: int
    rpc_job_info: int
    by_type: dict[str, int]
    ok: int = 0
    failed: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None

    @property
    def rpc_per_min(self) -> float:
        return self.rpc_all * 60 / self.seconds

    @property
    def job_info_per_min(self) -> float:
        return self.rpc_job_info * 60 / self.seconds

    @property
    def polls_per_s(self) -> float:
        return (self.ok + self.failed) / self.seconds


# --- one poll of each kind ------------------------------------------------------------------------------


class BrokerPoll:
    """``GET /v1/jobs/{id}`` on a kept-alive connection of its own (reconnects after a transport error)."""

    def __init__(self, host: str, port: int, path: str) -> None:
        self._host, self._port = host, port
        self._request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Accept: application/json\r\n\r\n"
        ).encode()
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def __call__(self) -> bool:
        try:
            if self._streams is None:
                self._streams = await asyncio.open_connection(self._host, self._port)
            reader, writer = self._streams
            writer.write(self._request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = _CONTENT_LENGTH.search(head)
            body = await reader.readexactly(int(length[1])) if length else b""
            return head.startswith(b"HTTP/1.1 200") and b'"state"' in body
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            self.close()
            return False
        except asyncio.CancelledError:  # timed out mid-answer: the connection is out of step, drop it
            self.close()
            raise

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


class RestPoll:
    """slurmrestd's GET of the job with the user's own JWT, as a client holding the site's key would."""

    def __init__(self, url: str, path: str, minter: TokenMinter, job_id: int) -> None:
        parsed = httpx.URL(url)
        self._host, self._port, self._path = parsed.host, parsed.port or 80, path
        self._minter = minter
        self._marker = f'"job_id": {job_id}'.encode(), f'"job_id":{job_id}'.encode()

    async def __call__(self) -> bool:
        request = (
            f"GET {self._path} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\nAccept: application/json\r\n"
            f"X-SLURM-USER-NAME: {SUBMIT_USER}\r\nX-SLURM-USER-TOKEN: {self._minter.mint(SUBMIT_USER)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        try:
            reader, writer = await asyncio.open_connection(self._host, self._port)
        except OSError:
            return False
        try:
            writer.write(request)
            answer = await reader.read(-1)  # slurmrestd closes the connection after each answer
        except OSError:
            return False
        finally:
            writer.close()
        return answer.startswith(b"HTTP/1.1 200") and any(marker in answer for marker in self._marker)

    def close(self) -> None:
        pass


class SqueuePoll:
    """``squeue -h -j ID`` as a process of its own, as a user's watch loop on a login node runs it."""

    def __init__(self, cluster: Cluster, job_id: int) -> None:
        self._argv = [*cluster.exec_prefix, "squeue", "-h", "-j", str(job_id), "-o", "%i %T"]
        self._env = slurm_env(cluster.slurm_conf)
        self._expect = str(job_id).encode()

    async def __call__(self) -> bool:
        process = await asyncio.create_subprocess_exec(
            *self._argv, env=self._env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        out, _ = await process.communicate()
        return process.returncode == 0 and out.startswith(self._expect)

    def close(self) -> None:
        pass


Poll = BrokerPoll | RestPoll | SqueuePoll


async def _client(poll: Poll, phase_s: float, stop: asyncio.Event, tally: Tally) -> None:
    """Poll once per period at a fixed phase; a late answer delays the next poll, never doubles it up."""
    next_at = time.monotonic() + phase_s
    try:
        while not stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                    break
                except TimeoutError:
                    pass
            started = time.monotonic()
            try:
                ok = await asyncio.wait_for(poll(), timeout=REQUEST_TIMEOUT_S)
            except TimeoutError:
                ok = False
            tally.add(ok, time.monotonic() - started)
            next_at = max(next_at + PERIOD_S, time.monotonic())
    finally:
        poll.close()


# --- slurmctld's counters -------------------------------------------------------------------------------


def rpc_snapshot(cluster: Cluster) -> dict[str, int]:
    """slurmctld's cumulative RPC counts by message type (sdiag's table; differences need no reset)."""
    counts = rpc_counts(cluster.slurm("sdiag"))
    if not counts:
        raise RuntimeError(f"sdiag on {cluster.name} printed no RPC statistics by message type")
    return counts


async def measure(
    cluster: Cluster,
    via: str,
    polls: Sequence[Poll],
    window_s: float,
    warmup_s: float,
) -> Window:
    """Start the clients, let them settle, then count slurmctld's RPCs over ``window_s`` of polling."""
    stop, tally = asyncio.Event(), Tally()
    phases = [PERIOD_S * i / len(polls) for i in range(len(polls))]
    tasks = [asyncio.create_task(_client(poll, phase, stop, tally)) for poll, phase in zip(polls, phases, strict=True)]
    try:
        await asyncio.sleep(warmup_s)
        before = await asyncio.to_thread(rpc_snapshot, cluster)
        started = time.monotonic()
        tally.counting = True
        await asyncio.sleep(max(0.0, started + window_s - time.monotonic()))
        tally.counting = False
        after = await asyncio.to_thread(rpc_snapshot, cluster)
        seconds = time.monotonic() - started
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    delta = {name: after[name] - before.get(name, 0) for name in after if after[name] - before.get(name, 0)}
    latencies = sorted(tally.latencies_s)
    return Window(
        via=via,
        clients=len(polls),
        seconds=seconds,
        rpc_all=sum(delta.values()),
        rpc_job_info=sum(delta.get(name, 0) for name in JOB_READS),
        by_type=dict(sorted(delta.items(), key=lambda item: -item[1])),
        ok=tally.ok,
        failed=tally.failed,
        p50_ms=statistics.median(latencies) * 1000 if latencies else None,
        p99_ms=latencies[int(len(latencies) * 0.99) - 1] * 1000 if len(latencies) >= 100 else None,
    )


# --- the broker and its job -----------------------------------------------------------------------------


def wait_for_state(client: httpx.Client, location: str, states: set[str], timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while (job := client.get(location).json())["state"] not in states:
        if time.monotonic() > deadline:
            raise TimeoutError(f"job not {states} within {timeout_s} s: {job}")
        time.sleep(0.2)  # poll interval
    result: dict[str, Any] = job
    return result


def start_broker(workdir: Path, cluster: str) -> Server:
    """``python -m app`` on a fresh migrated SQLite file, one Factory, the broker's default loop intervals."""
    database = workdir / "conveyor.db"
    upgrade(f"sqlite+aiosqlite:///{database}")
    factories = lab_factories(workdir, only={cluster})
    env = {"CONVEYOR_RECONCILER_INTERVAL_S": "5", "CONVEYOR_DISPATCHER_INTERVAL_S": "1"}  # the defaults
    server = start_server(workdir, database, factories, run_loops=True, env=env)
    server.wait_ready(timeout_s=60)
    return server


async def rest_job_path(cluster: Cluster, job_id: int) -> tuple[str, str]:
    """(slurmrestd URL, the job's path in the version the broker's own adapter negotiates)."""
    adapter = make_adapter("rest", cluster)
    assert isinstance(adapter, RestAdapter)
    try:
        await adapter.health()
        version = adapter.api_version
        assert version is not None
        return adapter.base_url, CODECS_BY_VERSION[version].job_path(job_id)
    finally:
        await adapter.aclose()


# --- the run ----------------------------------------------------------------------------------------------


async def run_windows(
    args: argparse.Namespace, cluster: Cluster, server: Server, location: str, slurm_id: int
) -> list[Window]:
    """A control window, then broker, direct REST (and squeue) at each N, then a second control."""
    url = httpx.URL(server.base_url)
    rest_url, rest_path = await rest_job_path(cluster, slurm_id)
    minter = TokenMinter(cluster.raw["jwt_key_file"], lifetime_s=60)
    windows: list[Window] = []

    async def window(via: str, polls: Sequence[Poll]) -> None:
        result = await measure(cluster, via, polls, args.window, args.warmup if polls else 0.0)
        windows.append(result)
        print(
            f"  {via:7} {result.clients:5} clients: {result.polls_per_s:7.1f} polls/s ({result.failed} failed), "
            f"slurmctld {result.rpc_per_min:8.1f} RPC/min, job reads {result.job_info_per_min:8.1f}/min",
            flush=True,
        )

    await window("none", [])
    for n in args.clients:
        await window("broker", [BrokerPoll(url.host, url.port or 80, location) for _ in range(n)])
        await window("rest", [RestPoll(rest_url, rest_path, minter, slurm_id) for _ in range(n)])
        if n <= args.squeue_max:
            await window("squeue", [SqueuePoll(cluster, slurm_id) for _ in range(n)])
    await window("none", [])
    return windows


def render(windows: Sequence[Window], squeue_max: int) -> str:
    """The tables: every window as measured, then broker beside direct REST per N."""
    lines = [
        "| via | clients | polls/s done | failed | p50 ms | slurmctld RPC/min (all types) | job-info RPC/min |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for w in windows:
        p50 = f"{w.p50_ms:.1f}" if w.p50_ms is not None else "-"
        lines.append(
            f"| {w.via} | {w.clients} | {w.polls_per_s:.1f} | {w.failed} | {p50} | {w.rpc_per_min:.1f} "
            f"| {w.job_info_per_min:.1f} |"
        )
    controls = [w for w in windows if w.via == "none"]
    base_all = statistics.mean(w.rpc_per_min for w in controls)
    base_info = statistics.mean(w.job_info_per_min for w in controls)
    lines += [
        "",
        f"Control (0 clients): {', '.join(f'{w.rpc_per_min:.1f}' for w in controls)} RPC/min of all types, "
        f"{', '.join(f'{w.job_info_per_min:.1f}' for w in controls)} job-info RPC/min (first, last window). "
        "'Added' = minus the mean control.",
        "",
        "| clients | broker RPC/min all (added) | broker job-info/min (added) | direct REST RPC/min all (added) "
        "| direct REST job-info/min (added) | ratio REST/broker (all) | squeue -j RPC/min all (added) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in sorted({w.clients for w in windows if w.via == "broker"}):
        broker = next(w for w in windows if w.via == "broker" and w.clients == n)
        rest = next(w for w in windows if w.via == "rest" and w.clients == n)
        squeue = next((w for w in windows if w.via == "squeue" and w.clients == n), None)
        squeue_cell = (
            f"{squeue.rpc_per_min:.1f} ({squeue.rpc_per_min - base_all:+.1f})"
            if squeue
            else f"not run (> {squeue_max} processes/s)"
        )
        lines.append(
            f"| {n} | {broker.rpc_per_min:.1f} ({broker.rpc_per_min - base_all:+.1f}) "
            f"| {broker.job_info_per_min:.1f} ({broker.job_info_per_min - base_info:+.1f}) "
            f"| {rest.rpc_per_min:.1f} ({rest.rpc_per_min - base_all:+.1f}) "
            f"| {rest.job_info_per_min:.1f} ({rest.job_info_per_min - base_info:+.1f}) "
            f"| {rest.rpc_per_min / broker.rpc_per_min:.1f}x | {squeue_cell} |"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    cluster = next((c for c in clusters_of(read_lab()) if c.name == args.cluster), None)
    if cluster is None:
        print(f"the lab has no cluster {args.cluster!r}")
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="bench-shield-"))
    print(f"broker on {args.cluster}, work files in {workdir}", flush=True)
    server = await asyncio.to_thread(start_broker, workdir, args.cluster)  # Alembic runs its own event loop
    try:
        with server.client() as client:
            body = job_body(name="polled", command=["sleep", "1700"], resources={"time_limit_min": 30})
            created = client.post("/v1/jobs", json=body)
            if created.status_code != 201:
                raise RuntimeError(f"submit failed: {created.status_code} {created.text}")
            location = created.headers["location"]
            try:
                job = wait_for_state(client, location, {"running"}, timeout_s=120)
                slurm_id = int(job["slurm_job_id"])
                print(f"polled job {job['id']} = Slurm job {slurm_id} on {job['factory']}, running", flush=True)
                windows = await run_windows(args, cluster, server, location, slurm_id)
            finally:
                client.post(f"{location}/cancel")
                wait_for_state(client, location, TERMINAL, timeout_s=60)
    finally:
        server.stop()
    table = render(windows, args.squeue_max)
    print()
    print(f"{args.window:g} s windows on {cluster.name} (Slurm {cluster.release}), after {args.warmup:g} s warm-up:")
    print(table)
    args.json.write_text(json.dumps([asdict(w) for w in windows], indent=1))
    print(f"\nraw windows (with RPCs by message type): {args.json}")
    return 0


def _counts(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=_counts, default=[10, 100, 1000], help="comma-separated client counts")
    parser.add_argument("--window", type=float, default=30.0, help="seconds of each measured window")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of polling before a window opens")
    parser.add_argument("--squeue-max", type=int, default=10, help="largest N run as squeue processes (1 per s)")
    parser.add_argument("--cluster", default="bravo")
    parser.add_argument("--json", type=Path, default=Path("/tmp/bench-polling-shield.json"))
    args = parser.parse_args(argv)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
