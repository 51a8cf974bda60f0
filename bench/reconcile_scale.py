"""Reconcile at scale: the reconciler's cycle time and the broker's RSS with 1,000 and 10,000 active jobs.

Active jobs are real Slurm jobs, submitted *held* (they cost no CPU and never change state) with their
broker job id in Slurm's comment, over several lab clusters; the broker's database gets the matching jobs in
state ``submitted`` through the dispatcher's own write path (insert, claim, attempt, submission), so the
reconciler sees exactly what a broker that had dispatched them would. Sizes run smallest first and each one
tops the previous one up, so no job is submitted twice and no cancelled job lingers in the listings.

For each size: the baseline first, with the broker stopped: one plain listing of each cluster through the
same REST adapter the reconciler uses (``list_jobs``: one GET of every job in slurmctld's memory, parsed),
alone and all clusters at once. That is the floor a cycle cannot beat. Then the broker runs as a process
(loops on, ``--interval`` between cycles) and every cycle's ``duration_s`` is collected per Factory, with the
broker's VmRSS from /proc. The first cycle after a start writes Slurm's state and reason on every job (they
are new to it), so it is shown apart from the steady cycles.

Why a launcher (``--serve``) rather than ``python -m app``: GET /metrics declares
``conveyor_reconcile_cycle_seconds`` but carries no sample (app/metrics.py reads keys that
``Runtime.metrics()`` does not produce), so the launcher runs the same app the same way (``create_app`` and
``uvicorn.run`` with app/__main__.py's arguments) and adds one read-only route, ``/bench/reconcile``, with the
stats every ``Reconciler.run_once`` returned. /metrics is still read and reported, so the bench says when
the gap is closed.

    .venv/bin/python -m bench.reconcile_scale                   # 1,000 then 10,000 jobs on 4 clusters
    .venv/bin/python -m bench.reconcile_scale --jobs 1000 --cycles 3
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from broker.db.engine import Database, create_database
from broker.db.migrate import upgrade_async
from broker.db.repositories import JobRepository, NewJob
from broker.jobs.ids import JOB_ID_PREFIX
from dev.lab import procs
from dev.lab.commands import run_slurm
from dev.lab.view import SUBMIT_USER, Cluster, clusters_of, job_dir, lab_json_path, make_adapter, read_lab
from slurm_adapters.records import SlurmJobSpec
from slurm_adapters.rest.client import CODECS_BY_VERSION, RestAdapter
from slurm_adapters.tokens import TokenMinter

REPO = Path(__file__).resolve().parents[1]
PROJECT = "EHPC-AIF-2026PG01-1147"
OWNER = "user:bench"
ACTOR = "bench-seed"
SUBMITS_IN_FLIGHT = 6  # per cluster: slurmrestd 22.05 serves a request per thread, the box has 2 cores
CLAIM_BATCH = 500
HISTORY_ROUTE = "/bench/reconcile"


# --- the broker, as a process of its own ----------------------------------------------------------------


def serve() -> None:
    """The broker exactly as ``python -m app`` runs it, plus a read-only route with every reconcile cycle."""
    from fastapi.responses import JSONResponse

    from app.main import create_app
    from app.serving import serve
    from broker.loops.reconcile import Reconciler, ReconcileStats
    from broker.settings import Settings

    history: list[dict[str, Any]] = []
    run_once = Reconciler.run_once

    async def recorded(self: Reconciler, factory_id: str) -> ReconcileStats:
        stats = await run_once(self, factory_id)
        entry = dataclasses.asdict(stats)
        entry["started_at"] = stats.started_at.timestamp()
        entry["job_errors"] = len(stats.job_errors)
        history.append(entry)
        return stats

    Reconciler.run_once = recorded  # type: ignore[method-assign]
    settings = Settings()
    app = create_app(settings)

    @app.get(HISTORY_ROUTE, include_in_schema=False)
    async def cycles() -> JSONResponse:
        return JSONResponse(history)

    serve(app, host=settings.host, port=settings.port, log_level="warning")


@dataclass
class BrokerProcess:
    process: subprocess.Popen[bytes]
    base_url: str
    log: Path

    def rss_kb(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) in kB: the resident set now, and its peak since the process started."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        found = {m[1]: int(m[2]) for m in re.finditer(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.M)}
        return found["VmRSS"], found["VmHWM"]

    def stop(self) -> None:
        procs.terminate(self.process)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_broker(workdir: Path, database_url: str, factories: Path, interval_s: float) -> BrokerProcess:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")},
        "CONVEYOR_DATA_DIR": str(workdir),
        "CONVEYOR_DATABASE_URL": database_url,
        "CONVEYOR_FACTORIES_FILE": str(factories),
        "CONVEYOR_HOST": "127.0.0.1",
        "CONVEYOR_PORT": str(port),
        "CONVEYOR_RUN_LOOPS": "true",
        "CONVEYOR_RECONCILER_INTERVAL_S": str(interval_s),
        "CONVEYOR_DISPATCHER_INTERVAL_S": "1",
    }
    log = workdir / f"broker-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.reconcile_scale", "--serve"], cwd=REPO, env=env, stdout=out, stderr=out
        )
    broker = BrokerProcess(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the broker exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{broker.base_url}/readyz", timeout=1).status_code == 200:
                return broker
        except httpx.TransportError:
            pass
        time.sleep(0.1)  # a poll interval
    broker.stop()
    raise RuntimeError(f"the broker was not ready within 60 s:\n{log.read_text()}")


# --- seeding: held Slurm jobs and their broker jobs -----------------------------------------------------


@dataclass
class Target:
    """One cluster the run spreads jobs over, with what it takes to submit there held."""

    cluster: Cluster
    adapter: RestAdapter
    directory: str
    jobs: int = 0  # held jobs of this run on the cluster so far


def factories_file(workdir: Path, names: Sequence[str]) -> Path:
    """The lab's Factory file restricted to ``names`` (JSON is YAML)."""
    document = json.loads(lab_json_path().with_name("factories.yaml").read_text())
    document["factories"] = [entry for entry in document["factories"] if entry["id"] in names]
    missing = set(names) - {entry["id"] for entry in document["factories"]}
    if missing:
        raise SystemExit(f"the lab has no Factory {sorted(missing)}")
    path = workdir / "factories.yaml"
    path.write_text(json.dumps(document))
    return path


def broker_spec(name: str) -> dict[str, Any]:
    from conveyor.spec import JobSpec

    spec = JobSpec.model_validate(
        {"name": name, "project": PROJECT, "command": ["sleep", "60"], "resources": {"time_limit_min": 5}}
    )
    return spec.model_dump(mode="json")


async def submit_held(target: Target, client: httpx.AsyncClient, minter: TokenMinter, name: str, tag: str) -> int:
    """POST the adapter's own rendering of the job with ``hold`` set (SlurmAdapter has no hold of its own)."""
    spec = SlurmJobSpec(
        name=name,
        script="sleep 60\n",
        working_directory=target.directory,
        stdout=f"{target.directory}/%j.out",
        tag=tag,
        partition=target.cluster.cpu_partition["name"],
        time_limit_min=5,
    )
    version = target.adapter.api_version
    assert version is not None
    codec = CODECS_BY_VERSION[version]
    payload = target.adapter.render(spec, SUBMIT_USER).payload
    payload["job"]["hold"] = True
    headers = {"X-SLURM-USER-NAME": SUBMIT_USER, "X-SLURM-USER-TOKEN": minter.mint(SUBMIT_USER)}
    response = await client.post(codec.submit_path, json=payload, headers=headers)
    job_id = codec.parse_submit(response.json())
    if job_id is None:
        raise RuntimeError(f"{target.cluster.name}: held submit failed, HTTP {response.status_code}: {response.text}")
    return job_id


async def seed(database: Database, targets: Sequence[Target], total: int, name: str) -> float:
    """Top the run up to ``total`` jobs, spread evenly; returns the seconds it took.

    Per job, the dispatcher's own writes: the job inserted (queued), claimed, its attempt committed before the
    Slurm call, then the submission recorded (submitted, with the Slurm id). Submits run concurrently per
    cluster; SQLite's single writer orders the database side.
    """
    jobs = JobRepository(database)
    share = [total // len(targets) + (1 if i < total % len(targets) else 0) for i in range(len(targets))]
    started = time.monotonic()
    spec = broker_spec(name)
    work: list[tuple[Target, str]] = []
    for target, want in zip(targets, share, strict=True):
        for _ in range(want - target.jobs):
            job = await jobs.insert_job_with_event(NewJob(OWNER, PROJECT, name, spec), actor=ACTOR)
            work.append((target, job.id))
    claimed = 0
    while claimed < len(work):
        batch = await jobs.claim_queued(ACTOR, CLAIM_BATCH, lease_s=3600, now=_now())
        if not batch:
            raise RuntimeError(f"claimed {claimed} of {len(work)} seeded jobs, then none")
        claimed += len(batch)

    async def one(target: Target, job_id: str, client: httpx.AsyncClient, minter: TokenMinter) -> None:
        attempt = await jobs.record_attempt(
            job_id, lease_owner=ACTOR, factory=target.cluster.name, slurm_user=SUBMIT_USER,
            partition=target.cluster.cpu_partition["name"], placement_reason="bench seed", actor=ACTOR,
        )  # fmt: skip
        if attempt is None:
            raise RuntimeError(f"{job_id}: lease lost while seeding")
        slurm_id = await submit_held(target, client, minter, name, job_id)
        if not await jobs.record_submission(job_id, attempt.attempt, str(slurm_id), actor=ACTOR):
            raise RuntimeError(f"{job_id}: submission not recorded")
        target.jobs += 1

    async def per_cluster(target: Target) -> None:
        mine = [job_id for t, job_id in work if t is target]
        minter = TokenMinter(target.cluster.raw["jwt_key_file"], lifetime_s=60)
        gate = asyncio.Semaphore(SUBMITS_IN_FLIGHT)
        async with httpx.AsyncClient(base_url=target.adapter.base_url, timeout=60) as client:

            async def gated(job_id: str) -> None:
                async with gate:
                    await one(target, job_id, client, minter)

            await asyncio.gather(*(gated(job_id) for job_id in mine))

    await asyncio.gather(*(per_cluster(target) for target in targets))
    return time.monotonic() - started


def _now() -> Any:
    from broker.db.types import utc_now

    return utc_now()


def cancel_all(targets: Sequence[Target], name: str) -> list[str]:
    """scancel every job of this run by its unique name (as root: held jobs of alice); report what is left."""
    notes = []
    for target in targets:
        cluster = target.cluster
        run_slurm(cluster.exec_prefix, cluster.slurm_conf, ["scancel", f"--name={name}"], timeout_s=120)
        left = run_slurm(
            cluster.exec_prefix, cluster.slurm_conf, ["squeue", "-h", f"--name={name}", "-t", "PD,R", "-o", "%i"]
        ).stdout.split()
        notes.append(f"{cluster.name}: scancel --name={name}: {target.jobs} submitted, {len(left)} still queued")
    return notes


# --- measuring ------------------------------------------------------------------------------------------


@dataclass
class Listing:
    """The baseline: one listing per cluster, alone (median of rounds) and all clusters at once (per round)."""

    alone_s: dict[str, float]
    listed: dict[str, int]
    together_s: list[float]


async def baseline(targets: Sequence[Target], rounds: int) -> Listing:
    alone: dict[str, list[float]] = {t.cluster.name: [] for t in targets}
    listed: dict[str, int] = {}
    for _ in range(rounds):
        for target in targets:
            started = time.monotonic()
            records = await target.adapter.list_jobs(tag_prefix=JOB_ID_PREFIX)
            alone[target.cluster.name].append(time.monotonic() - started)
            listed[target.cluster.name] = len(records)
    together = []
    for _ in range(rounds):
        started = time.monotonic()
        await asyncio.gather(*(t.adapter.list_jobs(tag_prefix=JOB_ID_PREFIX) for t in targets))
        together.append(time.monotonic() - started)
    return Listing({k: statistics.median(v) for k, v in alone.items()}, listed, together)


@dataclass
class Cycles:
    """The reconciler's cycles while the broker ran: the first per Factory apart, then the steady ones."""

    first: dict[str, dict[str, Any]] = field(default_factory=dict)
    steady: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    rss_kb: int = 0
    hwm_kb: int = 0
    metrics_samples: list[str] = field(default_factory=list)


async def observe(broker: BrokerProcess, factories: Sequence[str], cycles: int, timeout_s: float) -> Cycles:
    """Collect ``cycles`` steady cycles per Factory (after the first), sampling RSS all along."""
    result = Cycles()
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=broker.base_url, timeout=30) as client:
        while True:
            rss, hwm = broker.rss_kb()
            result.rss_kb, result.hwm_kb = max(result.rss_kb, rss), hwm
            history = (await client.get(HISTORY_ROUTE)).json()
            by_factory: dict[str, list[dict[str, Any]]] = {f: [] for f in factories}
            for entry in history:
                by_factory[entry["factory"]].append(entry)
            if all(len(v) > cycles for v in by_factory.values()) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)  # a sampling interval
        metrics = (await client.get("/metrics")).text
    result.metrics_samples = [line for line in metrics.splitlines() if line.startswith("conveyor_reconcile_cycle")]
    for factory, entries in by_factory.items():
        if entries:
            result.first[factory] = entries[0]
            result.steady[factory] = entries[1 : cycles + 1]
    return result


def start_py_spy(pid: int, seconds: float, output: Path) -> subprocess.Popen[bytes] | None:
    """Sample the broker's Python stacks (collapsed, one line per stack) when asked; py-spy is not a dependency."""
    if seconds <= 0:
        return None
    argv = [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid), "--duration",
            str(int(seconds)), "--rate", "50", "--format", "raw", "--output", str(output)]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


@dataclass
class Row:
    jobs: int
    seeding_s: float
    listing: Listing
    cycles: Cycles

    def lines(self) -> list[str]:
        steady = [e["duration_s"] for entries in self.cycles.steady.values() for e in entries]
        firsts = [e["duration_s"] for e in self.cycles.first.values()]
        floor = max(self.listing.alone_s.values())
        together = statistics.median(self.listing.together_s)
        p50 = statistics.median(steady) if steady else float("nan")
        worst = max(steady) if steady else float("nan")
        rss_mb = self.cycles.rss_kb / 1024
        per_cluster = ", ".join(f"{k} {_ms(v)}" for k, v in self.listing.alone_s.items())
        head = (
            f"| {self.jobs:,} | {per_cluster} (all 4 at once {_ms(together)}) | {_ms(p50)} / {_ms(worst)} "
            f"(first {_ms(max(firsts)) if firsts else '-'}) | {p50 / floor:.1f}x / {p50 / together:.1f}x "
            f"| {rss_mb:.0f} MiB (peak {self.cycles.hwm_kb / 1024:.0f} MiB) |"
        )
        detail = []
        for factory, entries in self.cycles.steady.items():
            durations = [e["duration_s"] for e in entries]
            first = self.cycles.first[factory]
            errors = sum(e["job_errors"] for e in entries) + sum(1 for e in entries if e["error"])
            detail.append(
                f"    {factory:6} tracked {first['tracked']:5} listed {first['listed']:5}: "
                f"first {_ms(first['duration_s'])} ({first['changed']} changed), steady "
                + (f"p50 {_ms(statistics.median(durations))} max {_ms(max(durations))}" if durations else "none")
                + f", {sum(e['changed'] for e in entries)} changes, {errors} errors; "
                f"listing alone {_ms(self.listing.alone_s[factory])} ({self.listing.listed[factory]} tagged jobs)"
            )
        return [head, *detail]


HEADER = (
    "| active jobs | per-cluster listing, baseline (median) | reconcile cycle p50 / max (steady) "
    "| ratio p50 / slowest listing alone, / all at once | broker RSS (max seen) |\n|---:|---|---|---|---|"
)


async def run(args: argparse.Namespace) -> int:
    lab = read_lab()
    by_name = {c.name: c for c in clusters_of(lab)}
    unknown = [name for name in args.clusters if name not in by_name]
    if unknown:
        print(f"not lab clusters: {unknown}")
        return 1
    run_id = uuid.uuid4().hex[:8]
    name = f"cvy-bench-scale-{run_id}"
    workdir = Path(tempfile.mkdtemp(prefix="bench-reconcile-"))
    database_url = f"sqlite+aiosqlite:///{workdir / 'conveyor.db'}"
    await upgrade_async(database_url)
    factories = factories_file(workdir, args.clusters)
    print(f"run {run_id}: Slurm job name {name}, work files in {workdir}", flush=True)
    targets: list[Target] = []
    for cluster_name in args.clusters:
        cluster = by_name[cluster_name]
        adapter = make_adapter("rest", cluster)
        assert isinstance(adapter, RestAdapter)
        await adapter.health()  # negotiates the API version the renderings use
        targets.append(Target(cluster, adapter, job_dir(cluster, name)))
    database = create_database(database_url)
    rows: list[Row] = []
    try:
        for size in sorted(args.jobs):
            seeding = await seed(database, targets, size, name)
            spread = ", ".join(f"{t.cluster.name} {t.jobs}" for t in targets)
            print(f"{size:,} jobs: seeded in {seeding:.1f} s ({spread})", flush=True)
            listing = await baseline(targets, args.listings)
            broker = start_broker(workdir, database_url, factories, args.interval)
            try:
                spy = start_py_spy(broker.process.pid, args.py_spy, workdir / f"py-spy-{size}.txt")
                cycles = await observe(broker, args.clusters, args.cycles, timeout_s=args.timeout)
            finally:
                broker.stop()
            if spy is not None:
                spy.wait(timeout=120)
                print(f"  py-spy profile: {workdir / f'py-spy-{size}.txt'}")
            row = Row(size, seeding, listing, cycles)
            rows.append(row)
            print("\n".join(row.lines()), flush=True)
            print(f"  /metrics reconcile_cycle samples: {cycles.metrics_samples or 'none (see the docstring)'}")
    finally:
        await database.engine.dispose()
        for note in cancel_all(targets, name):
            print(note)
        for target in targets:
            await target.adapter.aclose()
    print()
    print(f"Reconciler every {args.interval:g} s, {args.cycles} steady cycles per Factory, SQLite, "
          f"clusters {', '.join(args.clusters)}:")  # fmt: skip
    print(HEADER)
    for row in rows:
        print(row.lines()[0])
    print("\nseeding: " + "; ".join(f"{r.jobs:,} jobs total after {r.seeding_s:.0f} s" for r in rows))
    return 0


def _sizes(text: str) -> list[int]:
    return [int(part.replace("_", "")) for part in text.split(",") if part.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=_sizes, default=[1000, 10000], help="active job counts, comma-separated")
    parser.add_argument("--clusters", type=lambda s: s.split(","), default=["alpha", "bravo", "echo", "delta"])
    parser.add_argument("--interval", type=float, default=5.0, help="CONVEYOR_RECONCILER_INTERVAL_S")
    parser.add_argument("--cycles", type=int, default=5, help="steady cycles per Factory to collect")
    parser.add_argument("--listings", type=int, default=5, help="baseline rounds")
    parser.add_argument("--timeout", type=float, default=600.0, help="longest wait for the cycles, seconds")
    parser.add_argument("--py-spy", type=float, default=0.0, help="profile the broker this many seconds")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve()
        return 0
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
