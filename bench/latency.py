"""Submit-to-running latency of a short job through the broker, beside a direct slurmrestd submit, in one run.

Per trial, on the lab cluster charlie: the broker path POSTs the job and polls ``GET /v1/jobs/{id}`` until it
says ``running`` (or ``completed``, should the job end between two reconciler cycles); the direct path
submits through the REST adapter and polls slurmrestd for the job until it is RUNNING. Both poll every
``POLL_S`` and the two alternate in order trial by trial, so drift hits both alike. The job is ``sleep 2``,
so RUNNING lasts long enough to be seen by both.

The broker learns that a job runs only from its reconciler, which lists the Factory's jobs every
``CONVEYOR_RECONCILER_INTERVAL_S``: that interval (``--reconciler-interval``, printed with the results) is a
floor on how soon ``running`` can be seen, and on average adds half of itself.

    .venv/bin/python -m bench.latency                  # 10 trials, reconciler every 0.5 s
    .venv/bin/python -m bench.latency --trials 20 --reconciler-interval 0.2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx

from bench.adapters import _trivial
from bench.forwarding import Broker, broker_body, cancel_by_name, cancel_ids, charlie, migrated_template, parse_time
from dev.lab.view import SUBMIT_USER, Cluster, job_dir, make_adapter
from slurm_adapters.errors import JobNotFound
from slurm_adapters.interface import SlurmAdapter
from slurm_adapters.records import SlurmJobState

POLL_S = 0.02  # the same polling interval for both paths
JOB_S = 2  # the job sleeps this long: RUNNING is observable, and trials do not pile up on the node
TIMEOUT_S = 60.0


@dataclass
class Samples:
    """Seconds from the client's submit call to ``running`` seen, plus the broker's own breakdown."""

    running_s: list[float] = field(default_factory=list)
    accept_s: list[float] = field(default_factory=list)  # POST answered (broker) / submit returned (direct)
    dispatch_s: list[float] = field(default_factory=list)  # broker clock: created_at -> submitted_at
    submitted_seen_s: list[float] = field(default_factory=list)  # client: submit call -> ``submitted`` seen


@dataclass
class Trials:
    cluster: Cluster
    client: httpx.AsyncClient
    adapter: SlurmAdapter
    name: str
    workdir: str
    broker: Samples = field(default_factory=Samples)
    direct: Samples = field(default_factory=Samples)
    slurm_ids: list[int] = field(default_factory=list)


async def broker_trial(trials: Trials) -> None:
    body = broker_body(trials.name, ["sleep", str(JOB_S)], trials.workdir)
    started = time.perf_counter()
    answer = await trials.client.post("/v1/jobs", json=body)
    if answer.status_code != 201:
        raise RuntimeError(f"POST /v1/jobs answered {answer.status_code}: {answer.text}")
    accepted = time.perf_counter()
    job_id = answer.json()["id"]
    deadline = time.monotonic() + TIMEOUT_S
    submitted_seen: float | None = None
    while True:
        read = await trials.client.get(f"/v1/jobs/{job_id}")
        read.raise_for_status()
        job = read.json()
        if submitted_seen is None and job["state"] != "queued":
            submitted_seen = time.perf_counter()
        if job["state"] in {"running", "completed"}:
            break
        if job["state"] not in {"queued", "submitted"}:
            raise RuntimeError(f"broker job {job_id} ended {job['state']}: {job.get('state_reason')}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"broker job {job_id} not running after {TIMEOUT_S} s: {job}")
        await asyncio.sleep(POLL_S)
    seen = time.perf_counter()
    trials.slurm_ids.append(int(job["slurm_job_id"]))
    samples = trials.broker
    samples.running_s.append(seen - started)
    samples.accept_s.append(accepted - started)
    created, submitted = parse_time(job["created_at"]), parse_time(job["submitted_at"])
    samples.dispatch_s.append((submitted - created).total_seconds())
    samples.submitted_seen_s.append((submitted_seen or seen) - started)


async def direct_trial(trials: Trials) -> None:
    spec = replace(_trivial(trials.cluster, "latency"), name=trials.name, script=f"sleep {JOB_S}\n")
    spec = replace(spec, working_directory=trials.workdir, stdout=f"{trials.workdir}/{spec.tag}.out")
    started = time.perf_counter()
    job_id = await trials.adapter.submit(spec, SUBMIT_USER)
    accepted = time.perf_counter()
    trials.slurm_ids.append(job_id)
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        with contextlib.suppress(JobNotFound):
            record = await trials.adapter.get_job(job_id)
            if record.state in {SlurmJobState.RUNNING, SlurmJobState.COMPLETED}:
                break
            if record.state.is_terminal:
                raise RuntimeError(f"Slurm job {job_id} ended {record.state}: {record.reason}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"Slurm job {job_id} not running after {TIMEOUT_S} s")
        await asyncio.sleep(POLL_S)
    trials.direct.running_s.append(time.perf_counter() - started)
    trials.direct.accept_s.append(accepted - started)


def p90(values: Sequence[float]) -> float:
    """Nearest-rank 90th percentile (with 10 trials: the 9th fastest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def ms(value: float) -> str:
    return f"{value * 1000:7.0f} ms"


def table(trials: Trials) -> list[str]:
    broker, direct = trials.broker, trials.direct
    b_med, d_med = statistics.median(broker.running_s), statistics.median(direct.running_s)
    b_p90, d_p90 = p90(broker.running_s), p90(direct.running_s)
    submitted = statistics.median(broker.submitted_seen_s)
    rows = [
        f"{'path':8} {'submit->running median':>22} {'p90':>10} {'submit call median':>20}",
        f"{'direct':8} {ms(d_med):>22} {ms(d_p90):>10} {ms(statistics.median(direct.accept_s)):>20}",
        f"{'broker':8} {ms(b_med):>22} {ms(b_p90):>10} {ms(statistics.median(broker.accept_s)):>20}",
        f"{'ratio':8} {b_med / d_med:21.2f}x {b_p90 / d_p90:9.2f}x   (broker / direct)",
        f"broker path, medians: accepted -> submitted {ms(statistics.median(broker.dispatch_s)).strip()} "
        f"(broker's clock); POST -> `submitted` seen {ms(submitted).strip()}, -> `running` seen {ms(b_med).strip()}",
    ]
    return rows


async def bench(cluster: Cluster, trials_n: int, broker: Broker, name: str, slurm_ids: list[int]) -> Trials:
    adapter = make_adapter("rest", cluster)
    await broker.wait_ready()
    try:
        async with broker.client() as client:
            trials = Trials(cluster, client, adapter, name, job_dir(cluster, name), slurm_ids=slurm_ids)
            await direct_trial(trials)  # warm-up, untimed: negotiation, first connections, first dispatch
            await broker_trial(trials)
            trials.broker, trials.direct = Samples(), Samples()
            for trial in range(trials_n):
                order = [broker_trial, direct_trial] if trial % 2 == 0 else [direct_trial, broker_trial]
                for step in order:
                    await step(trials)
                print(
                    f"  trial {trial:2}: broker {trials.broker.running_s[-1] * 1000:6.0f} ms, "
                    f"direct {trials.direct.running_s[-1] * 1000:6.0f} ms",
                    flush=True,
                )
            return trials
    finally:
        await adapter.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--reconciler-interval", type=float, default=0.5, help="CONVEYOR_RECONCILER_INTERVAL_S")
    args = parser.parse_args()
    cluster = charlie()
    settings = {"CONVEYOR_RECONCILER_INTERVAL_S": str(args.reconciler_interval)}
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        workroot = Path(tmp)
        broker = Broker.start(workroot / "broker", migrated_template(workroot), settings)
        name, slurm_ids = f"bench-lat-{secrets.token_hex(4)}", list[int]()
        print(f"latency: `sleep {JOB_S}` (1 CPU) on {cluster.name} (Slurm {cluster.release}), {args.trials} trials, "
              f"polling every {POLL_S * 1000:.0f} ms", flush=True)  # fmt: skip
        try:
            trials = asyncio.run(bench(cluster, args.trials, broker, name, slurm_ids))
        finally:
            broker.stop()
            with contextlib.suppress(AssertionError):
                cancel_by_name(cluster, name)
            cancel_ids(cluster, slurm_ids)
    print(f"broker settings: {' '.join(f'{k}={v}' for k, v in sorted(broker.settings.items()))} (SQLite, one process)")
    for row in table(trials):
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
