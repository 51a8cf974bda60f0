"""How fast the broker forwards a burst to Slurm, beside plain slurmrestd POSTs and plain sbatch, in one run.

A burst of ``--jobs`` trivial jobs (``true``, 1 CPU) goes to the lab cluster charlie three ways:

- broker: the broker runs as its own process (``python -m app``, dev mode, a fresh SQLite file, loops on);
  all jobs are POSTed quickly (``--post-concurrency`` connections), and the figure is the time from the
  first accept (the earliest ``created_at``) until the last job is ``submitted`` in the broker (the latest
  ``submitted_at``), both from the broker's own clock;
- rest: sequential POSTs to slurmrestd through the same REST adapter the broker uses (its token minting and
  rendering included: that is what the broker pays too);
- sbatch: sequential ``sbatch --wrap true`` run as the submit user in the cluster's chroot.

The three alternate (ABC, CBA, ... for ``--rounds``) so that drift in the shared lab hits all alike; each
phase ends (untimed) by cancelling its jobs and waiting until charlie's queue holds none of them, so no
phase pays for the previous one's queue. Jobs/s are over all rounds (total jobs / total seconds). Each
phase also prints the CPU milliseconds per job spent by this process, the broker, slurmctld and slurmrestd:
on a small host that says who the bottleneck is. ``--methods backlog`` (diagnosis) times the dispatcher
alone on an already accepted backlog; ``--py-spy PREFIX`` profiles each broker phase.

    .venv/bin/python -m bench.forwarding                 # 1,000-job bursts, 2 rounds
    .venv/bin/python -m bench.forwarding --jobs 200 --rounds 1
    .venv/bin/python -m bench.forwarding --methods broker --broker-env CONVEYOR_CLAIM_BATCH=100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.adapters import _sbatch, _trivial
from broker.db.migrate import upgrade
from dev.lab import procs
from dev.lab.view import SUBMIT_USER, Cluster, clusters_of, job_dir, make_adapter, read_lab
from slurm_adapters.interface import SlurmAdapter

REPO = Path(__file__).resolve().parents[1]
CLUSTER = "charlie"  # the only lab cluster these benchmarks touch
PROJECT = "EHPC-AIF-2026PG01-1147"
LAB_FACTORIES = Path(os.environ.get("CONVEYOR_LAB_DIR", "/var/lib/conveyor-lab")) / "factories.yaml"
METHODS = ("rest", "sbatch", "broker")  # "backlog" (see broker_phase) is for diagnosis, on request
POLL_S = 0.1  # how often the broker is asked whether any job is still queued (a cheap 1-item page)
DONE_STATES = {"submitted", "running", "completed", "failed", "cancelled", "timeout"}
LIVE_SLURM_STATES = "PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED,REQUEUED"

# What the broker runs with unless --broker-env overrides it; printed with the results.
BROKER_DEFAULTS = {
    "CONVEYOR_DISPATCHER_INTERVAL_S": "0.05",
    "CONVEYOR_RECONCILER_INTERVAL_S": "5",
}


# --- the broker as a process ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def charlie_factories(directory: Path) -> Path:
    """The lab's Factory file reduced to charlie, so the broker never touches the other clusters."""
    document = json.loads(LAB_FACTORIES.read_text())
    document["factories"] = [entry for entry in document["factories"] if entry["id"] == CLUSTER]
    if not document["factories"]:
        raise SystemExit(f"the lab has no Factory {CLUSTER!r} in {LAB_FACTORIES}")
    path = directory / "factories.yaml"
    path.write_text(json.dumps(document))
    return path


def migrated_template(directory: Path) -> Path:
    """One migrated SQLite file, copied for every broker start (migrating once keeps starts quick)."""
    path = directory / "template.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@dataclass
class Broker:
    """``python -m app`` on 127.0.0.1 with a fresh SQLite copy, as dev/run.sh runs it; stopped by its PID."""

    process: subprocess.Popen[bytes]
    base_url: str
    token: str
    log: Path
    settings: dict[str, str]

    @classmethod
    def start(
        cls, workdir: Path, template: Path | None, overrides: Mapping[str, str], *, run_loops: bool = True
    ) -> Broker:
        """Start on a copy of ``template``, or (None) on the database already in ``workdir``."""
        workdir.mkdir(parents=True, exist_ok=True)
        database = workdir / "conveyor.db"
        if template is not None:
            shutil.copyfile(template, database)
        port, token = free_port(), f"bench-{secrets.token_hex(16)}"
        settings = {**BROKER_DEFAULTS, **overrides}
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")},
            "CONVEYOR_DATA_DIR": str(workdir),
            "CONVEYOR_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
            "CONVEYOR_FACTORIES_FILE": str(charlie_factories(workdir)),
            "CONVEYOR_DEV_MODE": "true",
            "CONVEYOR_DEV_TOKEN": token,
            "CONVEYOR_HOST": "127.0.0.1",
            "CONVEYOR_PORT": str(port),
            **settings,
            "CONVEYOR_RUN_LOOPS": "true" if run_loops else "false",
        }
        log = workdir / "broker.log"
        with log.open("wb") as out:
            process = subprocess.Popen([sys.executable, "-m", "app"], cwd=REPO, env=env, stdout=out, stderr=out)
        return cls(process, f"http://127.0.0.1:{port}", token, log, settings)

    def client(self, connections: int = 1) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        return httpx.AsyncClient(
            base_url=self.base_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30, limits=limits
        )

    async def wait_ready(self, timeout_s: float = 60.0, *, healthy: bool = True) -> None:
        """/readyz answers 200 and (``healthy``) charlie is healthy: a Factory never seen healthy gets no jobs."""
        deadline = time.monotonic() + timeout_s
        async with self.client() as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the broker exited with {self.process.returncode}:\n{self.log.read_text()}")
                with contextlib.suppress(httpx.TransportError):
                    ready = await client.get("/readyz")
                    factory = await client.get(f"/v1/factories/{CLUSTER}")
                    if ready.status_code == 200 and factory.status_code == 200 and _healthy(factory.json(), healthy):
                        return
                await asyncio.sleep(0.05)  # a poll interval, not a wait for something to happen
        raise TimeoutError(f"the broker was not ready within {timeout_s} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        procs.terminate(self.process)


def _healthy(factory: Mapping[str, Any], required: bool) -> bool:
    return factory.get("healthy") is True or not required


@contextlib.contextmanager
def py_spy(pid: int, output: Path | None) -> Iterator[None]:
    """``py-spy record`` on the broker while the block runs (only with --py-spy; py-spy must be installed)."""
    if output is None:
        yield
        return
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    argv = [spy, "record", "--pid", str(pid), "--rate", "250", "--format", "speedscope", "-o", str(output)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)  # py-spy attaches before the burst starts
    try:
        yield
    finally:
        os.kill(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


async def list_jobs(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    """Every job of the listing, page by page (500 a page, the API's largest)."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        answer = await client.get("/v1/jobs", params={**params, "limit": 500, **({"cursor": cursor} if cursor else {})})
        answer.raise_for_status()
        page = answer.json()
        items.extend(page["items"])
        cursor = page.get("next_cursor")
        if not cursor:
            return items


def broker_body(name: str, command: Sequence[str], workdir: str, time_limit_min: int = 2) -> dict[str, Any]:
    """A trivial 1-CPU job pinned to charlie, in the same kind of working directory the baselines use."""
    return {
        "name": name,
        "project": PROJECT,
        "command": list(command),
        "working_directory": workdir,
        "resources": {"cpus_per_task": 1, "time_limit_min": time_limit_min},
        "placement": {"factory": CLUSTER},
    }


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# --- Slurm side: cancelling and draining ------------------------------------------------------------------


def cancel_by_name(cluster: Cluster, name: str) -> None:
    cluster.slurm("scancel", f"--name={name}", timeout_s=60)


def live_count(cluster: Cluster, name: str) -> int:
    out = cluster.slurm("squeue", "--noheader", f"--name={name}", f"--states={LIVE_SLURM_STATES}", "--format=%i")
    return len(out.split())


async def drain(cluster: Cluster, name: str, timeout_s: float = 600.0) -> None:
    """Cancel the phase's jobs and wait until none is pending or running: the next phase starts clean."""
    deadline = time.monotonic() + timeout_s
    await asyncio.to_thread(cancel_by_name, cluster, name)
    while await asyncio.to_thread(live_count, cluster, name):
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs named {name} still live after {timeout_s} s")
        await asyncio.sleep(0.5)
        await asyncio.to_thread(cancel_by_name, cluster, name)


def cancel_ids(cluster: Cluster, job_ids: Sequence[int]) -> None:
    """The final safety net: scancel exactly the jobs this run recorded (ended ones only make scancel warn)."""
    for start in range(0, len(job_ids), 200):
        chunk = [str(job_id) for job_id in job_ids[start : start + 200]]
        with contextlib.suppress(AssertionError):
            cluster.slurm("scancel", *chunk, timeout_s=60)


# --- the three phases -----------------------------------------------------------------------------------


class CpuMeter:
    """CPU seconds spent meanwhile by each party: this process with its children (sbatch), the broker,
    slurmctld and slurmrestd. Where the time goes on a small host, and who the bottleneck is."""

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, cluster: Cluster, broker: int | None = None) -> None:
        self.pids = {
            name: pid
            for name, pid in {
                "broker": broker,
                "slurmctld": _pid_of(cluster.raw["slurmctld"]["pid_file"]),
                "slurmrestd": _pid_of(cluster.raw["rest"]["pid_file"]),
            }.items()
            if pid is not None
        }
        self.started = self._now()

    def _now(self) -> dict[str, float]:
        times = os.times()
        now = {"client": times.user + times.system + times.children_user + times.children_system}
        for name, pid in self.pids.items():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                now[name] = (int(fields[11]) + int(fields[12])) / self.TICK  # utime + stime
        return now

    def used(self) -> dict[str, float]:
        now = self._now()
        return {name: now[name] - self.started[name] for name in now if name in self.started}


def _pid_of(pid_file: str) -> int | None:
    """The lab's pid files are JSON ({"pid": ...}); a plain number is read too."""
    try:
        text = Path(pid_file).read_text()
        return int(json.loads(text)["pid"]) if text.lstrip().startswith("{") else int(text.split()[0])
    except (OSError, IndexError, KeyError, ValueError):
        return None


@dataclass
class Phase:
    method: str
    round: int
    jobs: int
    seconds: float
    detail: str = ""
    cpu_s: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds

    def cpu(self) -> str:
        """CPU milliseconds per job, per party."""
        return ", ".join(f"{name} {seconds * 1000 / self.jobs:.1f}" for name, seconds in self.cpu_s.items())


@dataclass
class Run:
    cluster: Cluster
    jobs: int
    template: Path
    workroot: Path
    run_id: str = field(default_factory=lambda: secrets.token_hex(4))
    broker_env: dict[str, str] = field(default_factory=dict)
    post_concurrency: int = 16
    py_spy_prefix: Path | None = None
    slurm_ids: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)

    def name(self, method: str, round_: int) -> str:
        name = f"bench-fwd-{self.run_id}-{method}-r{round_}"
        self.names.append(name)
        return name


async def direct_phase(run: Run, adapter: SlurmAdapter | None, round_: int) -> Phase:
    """``run.jobs`` sequential submits (REST adapter, or sbatch when ``adapter`` is None), timed end to end."""
    method = "sbatch" if adapter is None else "rest"
    name = run.name(method, round_)
    template = replace(_trivial(run.cluster, method), name=name)
    specs = [replace(template, tag=f"{template.tag}-{i:04d}") for i in range(run.jobs)]
    meter = CpuMeter(run.cluster)
    started = time.perf_counter()
    for spec in specs:
        if adapter is None:
            run.slurm_ids.append(await asyncio.to_thread(_sbatch, run.cluster, spec))
        else:
            run.slurm_ids.append(await adapter.submit(spec, SUBMIT_USER))
    elapsed = time.perf_counter() - started
    cpu = meter.used()
    await drain(run.cluster, name)
    return Phase(method, round_, run.jobs, elapsed, cpu_s=cpu)


async def _post_all(client: httpx.AsyncClient, bodies: list[dict[str, Any]], concurrency: int) -> list[float]:
    """POST every body over ``concurrency`` connections; the perf_counter time each 201 came back."""
    pending = iter(bodies)
    accepted: list[float] = []

    async def worker() -> None:
        for body in pending:
            answer = await client.post("/v1/jobs", json=body)
            if answer.status_code != 201:
                raise RuntimeError(f"POST /v1/jobs answered {answer.status_code}: {answer.text}")
            accepted.append(time.perf_counter())

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return accepted


async def _wait_none_queued(client: httpx.AsyncClient, timeout_s: float) -> float:
    """Poll until no job is queued any more; the perf_counter time that was first seen."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = await client.get("/v1/jobs", params={"state": "queued", "limit": 1})
        answer.raise_for_status()
        if not answer.json()["items"]:
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs still queued in the broker after {timeout_s} s")
        await asyncio.sleep(POLL_S)


async def broker_phase(run: Run, round_: int, *, backlog: bool = False) -> Phase:
    """A fresh broker; POST the burst; time first accept -> last ``submitted`` by the broker's clock.

    ``backlog``: the burst is POSTed to a broker without loops, which is then restarted with them, so the
    figure is the dispatcher alone draining an accepted backlog (first -> last ``submitted``), with no API
    traffic competing for the process and the SQLite writer.
    """
    method = "backlog" if backlog else "broker"
    name = run.name(method, round_)
    workdir = job_dir(run.cluster, f"{name}-{secrets.token_hex(4)}")
    bodies = [broker_body(name, ["true"], workdir) for _ in range(run.jobs)]
    home = run.workroot / f"{method}-r{round_}"
    broker = Broker.start(home, run.template, run.broker_env, run_loops=not backlog)
    run.settings = broker.settings
    spy = None if run.py_spy_prefix is None else Path(f"{run.py_spy_prefix}-{method}-r{round_}.speedscope.json")
    posting, accepted = 0.0, list[float]()
    try:
        await broker.wait_ready(healthy=not backlog)
        if backlog:
            async with broker.client(run.post_concurrency) as client:
                posting = time.perf_counter()
                accepted = await _post_all(client, bodies, run.post_concurrency)
            broker.stop()
            broker = Broker.start(home, None, run.broker_env)
            await broker.wait_ready()  # its dispatcher may start first: the timing is on submitted_at only
        async with broker.client(run.post_concurrency) as client:
            with py_spy(broker.process.pid, spy):
                meter = CpuMeter(run.cluster, broker.process.pid)
                if not backlog:
                    posting = time.perf_counter()
                    accepted = await _post_all(client, bodies, run.post_concurrency)
                seen_done = await _wait_none_queued(client, timeout_s=max(120.0, run.jobs * 0.5))
                cpu = meter.used()
            jobs = await list_jobs(client)
    finally:
        broker.stop()
    run.slurm_ids.extend(int(job["slurm_job_id"]) for job in jobs if job.get("slurm_job_id") is not None)
    await drain(run.cluster, name)
    states: dict[str, int] = {}
    for job in jobs:
        states[job["state"]] = states.get(job["state"], 0) + 1
    if len(jobs) != run.jobs or set(states) - DONE_STATES:
        raise RuntimeError(f"the broker did not forward all {run.jobs} jobs: {states} (log: {broker.log})")
    created = sorted(parse_time(job["created_at"]) for job in jobs)
    submitted = sorted(parse_time(job["submitted_at"]) for job in jobs)
    streaming = (run.jobs - 1) / max((submitted[-1] - submitted[0]).total_seconds(), 1e-6)
    post_rate = f"POSTs {run.jobs / (max(accepted) - posting):.0f} jobs/s over {run.post_concurrency} connections"
    if backlog:
        seconds = (submitted[-1] - submitted[0]).total_seconds() * run.jobs / (run.jobs - 1)
        detail = f"{post_rate}, before the dispatcher started; timed first -> last submitted"
    else:
        seconds = (submitted[-1] - created[0]).total_seconds()
        detail = (
            f"{post_rate}; accepts span {(created[-1] - created[0]).total_seconds():.2f} s; last submit "
            f"{(submitted[-1] - created[-1]).total_seconds():.2f} s after the last accept; first -> last submitted "
            f"{streaming:.1f} jobs/s; client saw none queued {seen_done - min(accepted):.2f} s after its first 201"
        )
    return Phase(method, round_, run.jobs, seconds, detail + (f"; profile {spy}" if spy else ""), cpu)


async def bench(run: Run, methods: Sequence[str], rounds: int) -> list[Phase]:
    phases: list[Phase] = []
    adapter = make_adapter("rest", run.cluster)
    try:
        # warm-up, untimed: version negotiation, the first connection, sbatch's first fork in the chroot
        warm = run.name("warmup", 0)
        spec = replace(_trivial(run.cluster, "warmup"), name=warm)
        run.slurm_ids.append(await adapter.submit(spec, SUBMIT_USER))
        run.slurm_ids.append(await asyncio.to_thread(_sbatch, run.cluster, spec))
        await drain(run.cluster, warm)
        for round_ in range(rounds):
            order = list(methods) if round_ % 2 == 0 else list(reversed(methods))
            for method in order:
                if method in {"broker", "backlog"}:
                    phase = await broker_phase(run, round_, backlog=method == "backlog")
                else:
                    phase = await direct_phase(run, adapter if method == "rest" else None, round_)
                print(
                    f"  round {round_} {method:7} {phase.jobs} jobs in {phase.seconds:7.2f} s = "
                    f"{phase.rate:7.1f} jobs/s; CPU ms/job: {phase.cpu()}"
                    + (f"\n      ({phase.detail})" if phase.detail else ""),
                    flush=True,
                )
                phases.append(phase)
    finally:
        await adapter.aclose()
    return phases


def table(phases: Sequence[Phase], methods: Sequence[str]) -> list[str]:
    """Per method: rate over all rounds (total jobs / total seconds), per-round rates, ratio to the broker."""
    totals = {
        m: sum(p.jobs for p in phases if p.method == m) / sum(p.seconds for p in phases if p.method == m)
        for m in methods
    }
    rows = [f"{'method':8} {'jobs/s':>8}  {'per round':24} {'broker / this':>13}"]
    for method in methods:
        rates = [p.rate for p in phases if p.method == method]
        per_round = " ".join(f"{rate:.1f}" for rate in rates)
        ratio = f"{totals['broker'] / totals[method]:.2f}x" if "broker" in totals else "-"
        spread = f" (median {statistics.median(rates):.1f})" if len(rates) > 2 else ""
        rows.append(f"{method:8} {totals[method]:8.1f}  {per_round + spread:24} {ratio:>13}")
    return rows


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.startswith("CONVEYOR_"):
            raise SystemExit(f"--broker-env takes CONVEYOR_NAME=VALUE, not {pair!r}")
        env[key] = value
    return env


def charlie() -> Cluster:
    for cluster in clusters_of(read_lab()):
        if cluster.name == CLUSTER:
            return cluster
    raise SystemExit(f"the lab has no cluster {CLUSTER!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000, help="jobs per burst (default 1000)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of all methods, order reversed every round")
    parser.add_argument("--methods", nargs="+", choices=[*METHODS, "backlog"], default=list(METHODS))
    parser.add_argument("--post-concurrency", type=int, default=16, help="connections POSTing to the broker")
    parser.add_argument("--broker-env", action="append", default=[], metavar="CONVEYOR_X=V", help="broker setting")
    parser.add_argument("--py-spy", type=Path, default=None, metavar="PREFIX", help="profile each broker phase")
    args = parser.parse_args()
    cluster = charlie()
    with tempfile.TemporaryDirectory(prefix="bench-forwarding-") as tmp:
        workroot = Path(tmp)
        run = Run(
            cluster, args.jobs, migrated_template(workroot), workroot, broker_env=parse_env(args.broker_env),
            post_concurrency=args.post_concurrency, py_spy_prefix=args.py_spy,
        )  # fmt: skip
        print(f"forwarding: {args.jobs}-job bursts of `true` (1 CPU) to {cluster.name} (Slurm {cluster.release}), "
              f"{args.rounds} round(s), run {run.run_id}", flush=True)  # fmt: skip
        try:
            phases = asyncio.run(bench(run, args.methods, args.rounds))
        finally:
            for name in run.names:
                with contextlib.suppress(AssertionError):
                    cancel_by_name(cluster, name)
            cancel_ids(cluster, run.slurm_ids)
    if {"broker", "backlog"} & set(args.methods):
        print(f"broker settings: {' '.join(f'{k}={v}' for k, v in sorted(run.settings.items()))} "
              "(others at their defaults; SQLite; one process)")  # fmt: skip
    for row in table(phases, args.methods):
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
