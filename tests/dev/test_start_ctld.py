"""``python -m dev.lab start-ctld`` after a SIGKILLed slurmctld leaves every node of the cluster usable.

slurmctld saves its state asynchronously: SIGKILLed just after it launched some batch jobs, it comes back from
state that predates those launches (it forgot the jobs, or holds them as still pending), and hands their ids
out again. The slurmd that launched them remembers the ids: had it kept running, it would refuse the relaunch
("Job N already running, do not launch second copy") and slurmctld would drain the node with the reason
"Duplicate jobid"; start-ctld starts every slurmd afresh with slurmctld. Only on the expendable cluster echo,
which is brought back healthy whatever the outcome (slurmctld running, the test's jobs cancelled, every node
idle: one left down or drained, for whatever reason, is resumed), so that the fault tests after it find it usable.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dev.lab import procs
from tests.lab import SUBMIT_USER, Cluster, clusters, new_tag

pytestmark = [pytest.mark.lab, pytest.mark.expendable_only, pytest.mark.exclusive, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
DUPLICATE = "Duplicate jobid"
JOBS = 4
ATTEMPTS = 3  # each a kill and a restart; slurmctld may have saved its state in time (then nothing to show)


@pytest.fixture
def echo() -> Iterator[Cluster]:
    """The expendable cluster; afterwards slurmctld runs (started again if the test left it down), the test's
    jobs are gone and every node is idle."""
    [cluster] = [c for c in clusters() if c.name == "echo"]
    assert cluster.raw["expendable"], "echo must be expendable: this test kills its slurmctld"
    yield cluster
    if procs.recorded_pid(cluster.host_path_of_pid_file()) is None:
        _start_ctld()
    cluster.slurm("scancel", "--name", "cvy-test-start-ctld", "--quiet")
    resumed: list[str] = []
    assert _poll(lambda: _all_idle(cluster, resumed), 60), f"echo's nodes not idle: {_nodes(cluster)}"


def _nodes(cluster: Cluster) -> dict[str, tuple[str, str]]:
    """Each node's state and reason as sinfo reports them."""
    out = cluster.slurm("sinfo", "-h", "-N", "-o", "%N|%T|%E")
    return {node: (state, reason) for node, state, reason in (line.split("|", 2) for line in out.splitlines())}


def _all_idle(cluster: Cluster, resumed: list[str]) -> bool:
    """True once every node is idle; a node down or drained, whatever the reason, is resumed on the way (the
    operator's repair, appended to ``resumed``)."""
    nodes = _nodes(cluster)
    for node, (state, reason) in nodes.items():
        if any(word in state for word in ("down", "drain", "fail")) and node not in resumed:
            cluster.slurm("scontrol", "update", f"nodename={node}", "state=resume")
            resumed.append(f"{node}: {state} ({reason})")
    return all(state == "idle" for state, _ in nodes.values())


def _start_ctld() -> None:
    """The lab's own command, as an operator (or a fault test) runs it."""
    result = subprocess.run(
        [sys.executable, "-m", "dev.lab", "start-ctld", "echo"],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, f"start-ctld failed: {result.stdout}{result.stderr}"


def _submit(cluster: Cluster, directory: str, command: str) -> int:
    out = cluster.slurm(
        "sbatch", "--parsable", f"--uid={SUBMIT_USER}", "--job-name=cvy-test-start-ctld", f"--chdir={directory}",
        "--time=2", "--mem=100", "--output=/dev/null", f"--wrap={command}",
    )  # fmt: skip
    return int(out.strip().split(";")[0])


def _states(cluster: Cluster, job_ids: list[int]) -> dict[int, str]:
    """Each job's state as slurmctld holds it ("" if it knows no such job)."""
    out = cluster.slurm("squeue", "-h", "-t", "all", "-o", "%i %T", timeout_s=30)
    known = dict(line.split() for line in out.splitlines() if line.strip())
    return {job_id: known.get(str(job_id), "") for job_id in job_ids}


def _drained(cluster: Cluster) -> list[str]:
    out = cluster.slurm("sinfo", "-h", "-N", "-t", "drain,drained,draining", "-o", "%N|%E")
    return [line for line in out.splitlines() if DUPLICATE in line]


def _poll(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)  # a poll interval
    return True


def _launched_then_forgotten(cluster: Cluster, directory: str, host_dir: Path) -> list[int]:
    """Launch short jobs, SIGKILL slurmctld as soon as they run on the node, let them end while it is down, start
    it again with the lab's command; the ids of the jobs that ran but that it came back without as run (may be
    none). A job slurmctld calls RUNNING may not have reached its node yet (the launch request is sent after the
    state change; killed before, it never runs): only the job's own mark on the node says it started."""
    command = f"touch {directory}/started.$SLURM_JOB_ID; sleep 3; touch {directory}/ended.$SLURM_JOB_ID"
    ids = [_submit(cluster, directory, command) for _ in range(JOBS)]
    started: list[int] = []

    def some_started() -> bool:
        started[:] = [job_id for job_id in ids if (host_dir / f"started.{job_id}").exists()]
        return bool(started)

    assert _poll(some_started, 60), f"none of {ids} started on the node: {_states(cluster, ids)}"
    assert cluster.kill_ctld() is not None, "echo's slurmctld was not running"
    ended = _poll(lambda: all((host_dir / f"ended.{job_id}").exists() for job_id in started), 30)
    assert ended, f"jobs {started} did not end on the node while slurmctld was down"
    _start_ctld()
    states = _states(cluster, ids)
    ran = [job_id for job_id in ids if (host_dir / f"ended.{job_id}").exists()]
    return [job_id for job_id in ran if states[job_id] in {"", "PENDING"}]


def test_defect_19_start_ctld_leaves_no_drained_node(echo: Cluster) -> None:
    tag = new_tag("start-ctld")
    directory = f"{echo.raw['scratch_dir']}/{tag}"
    host_dir = echo.host_path(directory)
    host_dir.mkdir(parents=True)
    host_dir.chmod(0o777)
    forgotten: list[int] = []
    for attempt in range(ATTEMPTS):
        # A directory per attempt: the ids slurmctld forgot come again, their marks must not.
        (host_dir / str(attempt)).mkdir(mode=0o777)
        (host_dir / str(attempt)).chmod(0o777)
        forgotten = _launched_then_forgotten(echo, f"{directory}/{attempt}", host_dir / str(attempt))
        if forgotten:
            break
    assert forgotten, f"slurmctld saved its state in time on each of {ATTEMPTS} kills: nothing to show"
    # New jobs draw the forgotten ids again (and slurmctld launches the ones it holds as pending once more).
    again = [_submit(echo, directory, "true") for _ in range(len(forgotten) + 1)]
    watched = sorted(set(again) | set(forgotten))
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not _drained(echo):
        states = _states(echo, watched)
        if all(state in {"", "COMPLETED"} for job_id, state in states.items() if job_id in again):
            break
        time.sleep(0.5)  # a poll interval
    assert not _drained(echo), f"after start-ctld (forgotten launches {forgotten}): {_drained(echo)}"
    assert all(state == "COMPLETED" for state in _states(echo, again).values()), _states(echo, again)
