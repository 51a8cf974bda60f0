"""What each adapter costs over plain sbatch, per Slurm release, measured side by side in one run.

For every lab cluster: submit-to-visible and submit-to-completed latency of a trivial job (median of
``--trials``, adapters and the sbatch baseline interleaved so drift hits all alike), and the submission rate
of a ``--burst``-job sequential burst. Every figure is printed beside plain sbatch on the same cluster as a
ratio (adapter / sbatch for latency, sbatch / adapter time for rate: above 1.0 the adapter is faster).

    .venv/bin/python -m bench.adapters                      # rest and cli on every cluster
    .venv/bin/python -m bench.adapters --pyslurm-in-chroot  # the pyslurm column, inside the sid chroot
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

from dev.lab.commands import run_slurm
from dev.lab.pivot_root import run_python
from dev.lab.view import SUBMIT_USER, Cluster, clusters_of, job_dir, make_adapter, new_tag, read_lab, wait_for_job
from slurm_adapters.errors import JobNotFound
from slurm_adapters.interface import SlurmAdapter
from slurm_adapters.records import SlurmJobSpec, SlurmJobState

POLL_S = 0.02  # the same polling interval for the adapters and the baseline


@dataclass
class Figures:
    visible_s: list[float]
    completed_s: list[float]
    burst_s: float = 0.0


def _trivial(cluster: Cluster, label: str) -> SlurmJobSpec:
    tag = new_tag(label)
    workdir = job_dir(cluster, tag)
    return SlurmJobSpec(
        name=f"bench-{label}",
        script="true\n",
        working_directory=workdir,
        stdout=f"{workdir}/out.txt",
        tag=tag,
        partition=cluster.cpu_partition["name"],
        time_limit_min=2,
    )


def _sbatch_argv(cluster: Cluster, spec: SlurmJobSpec) -> list[str]:
    return [
        "runuser", "-u", SUBMIT_USER, "--", "sbatch", "--parsable", f"--job-name={spec.name}",
        f"--chdir={spec.working_directory}", f"--output={spec.stdout}", f"--partition={spec.partition}",
        f"--time={spec.time_limit_min}", f"--comment={spec.tag}", "--wrap", "true",
    ]  # fmt: skip


def _sbatch(cluster: Cluster, spec: SlurmJobSpec) -> int:
    result = run_slurm(cluster.exec_prefix, cluster.slurm_conf, _sbatch_argv(cluster, spec))
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    return int(result.stdout.strip().split(";")[0])


def _scontrol_state(cluster: Cluster, job_id: int) -> str | None:
    result = run_slurm(cluster.exec_prefix, cluster.slurm_conf, ["scontrol", "show", "job", "-o", str(job_id)])
    if result.returncode != 0:
        return None
    for field in result.stdout.split():
        if field.startswith("JobState="):
            return field.split("=", 1)[1]
    return None


async def _poll(check: Callable[[], Awaitable[bool]], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError("job did not get there in time")
        await asyncio.sleep(POLL_S)


async def baseline_trial(cluster: Cluster, figures: Figures) -> None:
    spec = _trivial(cluster, "sbatch")
    started = time.perf_counter()
    job_id = await asyncio.to_thread(_sbatch, cluster, spec)

    async def visible() -> bool:
        return await asyncio.to_thread(_scontrol_state, cluster, job_id) is not None

    async def completed() -> bool:
        return await asyncio.to_thread(_scontrol_state, cluster, job_id) == "COMPLETED"

    await _poll(visible)
    figures.visible_s.append(time.perf_counter() - started)
    await _poll(completed)
    figures.completed_s.append(time.perf_counter() - started)


async def adapter_trial(adapter: SlurmAdapter, cluster: Cluster, figures: Figures) -> None:
    spec = _trivial(cluster, adapter.kind)
    started = time.perf_counter()
    job_id = await adapter.submit(spec, SUBMIT_USER)

    async def visible() -> bool:
        try:
            await adapter.get_job(job_id)
        except JobNotFound:
            return False
        return True

    async def completed() -> bool:
        return (await adapter.get_job(job_id)).state is SlurmJobState.COMPLETED

    await _poll(visible)
    figures.visible_s.append(time.perf_counter() - started)
    await _poll(completed)
    figures.completed_s.append(time.perf_counter() - started)


async def burst(cluster: Cluster, adapter: SlurmAdapter | None, size: int, drain: SlurmAdapter) -> float:
    """Seconds to submit ``size`` trivial jobs one after another; then (untimed) cancel what has not run yet.

    Trivial jobs start about one per scheduler pass on a small node, so waiting for 200 of them would only
    measure the lab's scheduler; clearing the queue keeps the next measurement from paying for this one.
    """
    template = _trivial(cluster, f"burst-{adapter.kind if adapter else 'sbatch'}")
    specs = [replace(template, tag=f"{template.tag}-{i:04d}") for i in range(size)]
    started = time.perf_counter()
    for spec in specs:
        if adapter is None:
            await asyncio.to_thread(_sbatch, cluster, spec)
        else:
            await adapter.submit(spec, SUBMIT_USER)
    elapsed = time.perf_counter() - started
    run_slurm(cluster.exec_prefix, cluster.slurm_conf, ["scancel", f"--name={template.name}"])

    async def drained() -> bool:
        records = await drain.list_jobs(tag_prefix=template.tag)
        return len(records) == size and all(r.state.is_terminal for r in records)

    await _poll(drained, timeout_s=600)
    return elapsed


async def bench_cluster(cluster: Cluster, kinds: list[str], trials: int, burst_size: int) -> list[str]:
    adapters = {kind: make_adapter(kind, cluster) for kind in kinds}
    results = {name: Figures([], []) for name in ["sbatch", *kinds]}
    try:
        for adapter in adapters.values():  # warm up: version negotiation, worker start, first connection
            await wait_for_job(adapter, await adapter.submit(_trivial(cluster, "warmup"), SUBMIT_USER), set())
        for trial in range(trials):
            order = ["sbatch", *kinds]
            if trial % 2:
                order.reverse()
            for name in order:
                if name == "sbatch":
                    await baseline_trial(cluster, results[name])
                else:
                    await adapter_trial(adapters[name], cluster, results[name])
        drain = next(iter(adapters.values()))
        for name in ["sbatch", *kinds]:
            results[name].burst_s = await burst(cluster, adapters.get(name), burst_size, drain)
    finally:
        for adapter in adapters.values():
            await adapter.aclose()
    return _table(cluster, results, burst_size)


def _table(cluster: Cluster, results: dict[str, Figures], burst_size: int) -> list[str]:
    base = results["sbatch"]
    base_vis, base_done = statistics.median(base.visible_s), statistics.median(base.completed_s)
    rows = []
    for name, fig in results.items():
        vis, done = statistics.median(fig.visible_s), statistics.median(fig.completed_s)
        rate = burst_size / fig.burst_s
        rows.append(
            f"{cluster.name:8} {cluster.short_release:6} {name:8} "
            f"{vis * 1000:8.0f} ms {vis / base_vis:6.2f}x  "
            f"{done * 1000:8.0f} ms {done / base_done:6.2f}x  "
            f"{rate:7.1f} jobs/s {base.burst_s / fig.burst_s:6.2f}x"
        )
    return rows


HEADER = (
    f"{'cluster':8} {'slurm':6} {'adapter':8} {'submit->visible':>20}  {'submit->completed':>20}  "
    f"{'burst submit rate':>22}\n{'':24} (median; ratio to sbatch, lower is better)  (ratio: higher is better)"
)


async def main_async(args: argparse.Namespace) -> None:
    doc = read_lab()
    print(HEADER)
    for cluster in clusters_of(doc):
        if args.clusters and cluster.name not in args.clusters:
            continue
        for row in await bench_cluster(cluster, args.adapters, args.trials, args.burst):
            print(row, flush=True)


def run_pyslurm_in_chroot(args: argparse.Namespace) -> int:
    status = read_lab().get("pyslurm", {})
    if status.get("status") not in {"built", "cached"}:
        print(f"pyslurm is not available in this lab: {status.get('reason') or status}")
        return 1
    inner = ["-m", "bench.adapters", "--adapters", "pyslurm", "--trials", str(args.trials), "--burst", str(args.burst)]
    lab_root = Path(read_lab()["lab_root"])
    result = run_python(lab_root, Path(status["chroot"]), status["venv_python"], inner, extra_env={}, timeout_s=3600)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapters", nargs="+", default=["rest", "cli"])
    parser.add_argument("--clusters", nargs="*", default=[])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--pyslurm-in-chroot", action="store_true", help="run the pyslurm column in the sid chroot")
    args = parser.parse_args()
    if args.pyslurm_in_chroot:
        return run_pyslurm_in_chroot(args)
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
