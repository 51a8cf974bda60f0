"""The fault tests' tools: a real broker process, jobs that leave a ledger line, bursts of clients, the checks.

The broker runs exactly as in production: ``python -m app`` (uvicorn, one worker) as a subprocess on a free
127.0.0.1 port, configured only through ``CONVEYOR_*`` variables, killed and stopped by its PID, restarted on
the same database and port. Each test job runs ``echo "$TAG $SLURM_JOB_ID $EPOCHREALTIME $SLURM_CLUSTER_NAME"
>> LEDGER`` (one short O_APPEND write: atomic), so the ledger says how many times, when and where each accepted
job really ran, whatever the broker believes.

:func:`check_exactly_once` is the invariant of issue #3, checked from three independent sides: the broker's
own answers (state, Slurm id, events), the ledger written by the jobs themselves, and the test's own
``scontrol`` on the cluster (one Slurm job per broker job id, which travels in Slurm's comment field).

Waits are deadlines on polled conditions, never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from conveyor.spec import TERMINAL_STATES
from dev.lab import procs
from dev.lab.view import Cluster
from slurm_adapters.convert import parse_key_values

REPO = Path(__file__).resolve().parents[2]
TOKEN = "dev-token-for-fault-tests-0123456789"
PROJECT = "EHPC-AIF-2026PG01-1147"
RUN_LABEL = "fault-run"
TAG_LABEL = "fault-tag"
TERMINAL = frozenset(str(state) for state in TERMINAL_STATES)
# Fast loops: a test waits on the broker's own cadence. A job claimed by a broker that was killed is due again
# once that broker's heartbeat lapses (15 s), whatever the lease (30 s, the broker's minimum, here).
FAST_LOOPS = {
    "CONVEYOR_DISPATCHER_INTERVAL_S": "0.2",
    "CONVEYOR_RECONCILER_INTERVAL_S": "0.5",
    "CONVEYOR_HEALTH_INTERVAL_S": "1",
    "CONVEYOR_RETRY_BACKOFF_MAX_S": "2",
    "CONVEYOR_LEASE_S": "30",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def poll_until(condition: Callable[[], bool], timeout_s: float, what: str, *, context: Callable[[], str] = str) -> None:
    """Poll ``condition`` until true; fail after ``timeout_s`` naming ``what`` (plus ``context()``)."""
    deadline = time.monotonic() + timeout_s
    interval = 0.05
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{context()}")
        time.sleep(interval)  # a poll interval, not a wait for something to happen
        interval = min(interval * 1.5, 0.5)


# --- the broker process -------------------------------------------------------------------------------


@dataclass
class BrokerProcess:
    """``python -m app`` on one database, one Factory file and one port, across kills and restarts.

    ``run_loops`` off: an API process only (no dispatcher, reconciler or health loop); ``extra_env`` adds or overrides
    ``CONVEYOR_*`` settings (they win over ``FAST_LOOPS``); ``run_as`` prefixes the command (e.g. a ``setpriv``
    that drops to an unprivileged user)."""

    workdir: Path
    database_url: str
    factories_file: Path
    port: int = field(default_factory=free_port)
    run_loops: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)
    run_as: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    incarnation: int = 0
    logs: list[Path] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "the broker was never started"
        return self.process.pid

    def env(self, failpoints: str = "") -> dict[str, str]:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        env = {
            **inherited,
            "CONVEYOR_DATA_DIR": str(self.workdir),
            "CONVEYOR_DATABASE_URL": self.database_url,
            "CONVEYOR_FACTORIES_FILE": str(self.factories_file),
            "CONVEYOR_DEV_MODE": "true",
            "CONVEYOR_DEV_TOKEN": TOKEN,
            "CONVEYOR_HOST": "127.0.0.1",
            "CONVEYOR_PORT": str(self.port),
            "CONVEYOR_RUN_LOOPS": "true" if self.run_loops else "false",
            **FAST_LOOPS,
            **self.extra_env,
        }
        if failpoints:
            env["CONVEYOR_FAILPOINTS"] = failpoints
        return env

    def start(self, *, failpoints: str = "", ready_timeout_s: float = 60.0) -> None:
        """Start a new incarnation (the previous one must have ended) and wait until /readyz says ready."""
        self.launch(failpoints=failpoints)
        self.wait_ready(ready_timeout_s)

    def launch(self, *, failpoints: str = "") -> None:
        """Start a new incarnation (the previous one must have ended) without waiting for it to be ready."""
        assert self.process is None or self.process.poll() is not None, "the previous broker still runs"
        self.incarnation += 1
        log = self.workdir / f"broker-{self.incarnation}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [*self.run_as, sys.executable, "-m", "app"], cwd=REPO, env=self.env(failpoints), stdout=out, stderr=out
            )

    def wait_ready(self, timeout_s: float) -> None:
        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"the broker exited with {self.process.returncode}\n{self.log_tail()}")
            try:
                return httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        poll_until(ready, timeout_s, "/readyz", context=self.log_tail)

    def wait_exit(self, timeout_s: float) -> int:
        """The return code once the process has ended (negative: killed by that signal)."""
        assert self.process is not None
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the broker still runs after {timeout_s} s\n{self.log_tail()}") from None

    def kill(self) -> int:
        """SIGKILL by PID: no shutdown code runs, exactly like a crash. Returns the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        return self.wait_exit(10)

    def stop(self) -> None:
        """SIGTERM (a graceful stop), SIGKILL if it does not end in time; nothing if it already ended."""
        if self.process is not None:
            procs.terminate(self.process)

    def log_tail(self, chars: int = 4000) -> str:
        """The end of each incarnation's log, without uvicorn's access lines (the polling drowns the rest)."""
        parts = []
        for log in self.logs:
            text = log.read_text(errors="replace") if log.exists() else ""
            lines = [line for line in text.splitlines() if not line.startswith("INFO:     127.0.0.1:")]
            parts.append(f"--- {log.name} (last {chars} chars) ---\n" + "\n".join(lines)[-chars:])
        return "\n".join(parts)

    def client(self, timeout_s: float = 10.0, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=timeout_s,
            **kwargs,
        )


def factories_file_with(lab_factories: Path, factory_ids: Iterable[str], directory: Path) -> Path:
    """A copy of the lab's Factory file holding only ``factory_ids``: the broker sees nothing else."""
    wanted = set(factory_ids)
    document = json.loads(lab_factories.read_text())
    kept = [entry for entry in document["factories"] if entry["id"] in wanted]
    missing = wanted - {entry["id"] for entry in kept}
    assert not missing, f"the lab's Factory file {lab_factories} lacks {sorted(missing)}"
    path = directory / "factories.json"
    path.write_text(json.dumps({"factories": kept}, indent=2))
    return path


# --- the jobs and their ledger -------------------------------------------------------------------------


@dataclass(frozen=True)
class Workspace:
    """A directory of the cluster's scratch space for one test: the jobs run there and append to its ledger."""

    cluster: Cluster
    inside: str  # the path as the jobs see it

    @property
    def ledger_inside(self) -> str:
        return f"{self.inside}/ledger"

    @property
    def ledger_host(self) -> Path:
        return self.cluster.host_path(self.ledger_inside)

    @classmethod
    def create(cls, cluster: Cluster, label: str) -> Workspace:
        inside = f"{cluster.raw['scratch_dir']}/conveyor-faults-{label}-{secrets.token_hex(6)}"
        host = cluster.host_path(inside)
        host.mkdir(parents=True)
        host.chmod(0o777)  # the jobs run as the lab's submit user
        workspace = cls(cluster, inside)
        workspace.ledger_host.touch()
        workspace.ledger_host.chmod(0o666)
        return workspace

    def ledger(self) -> list[LedgerLine]:
        """One line per run of a job, in the order written."""
        return parse_ledger(self.ledger_host.read_text())


@dataclass(frozen=True)
class LedgerLine:
    """One run of a job, as the job itself wrote it: its tag, Slurm job id, the time it ran (host clock) and the
    cluster it ran on."""

    tag: str
    slurm_id: str
    at: datetime | None  # None if the line carries no time
    cluster: str = ""  # "" if the line carries none


def parse_ledger(text: str) -> list[LedgerLine]:
    entries = []
    for line in text.splitlines():
        tag, slurm_id, at, cluster, *_ = [*line.split(), "", "", "", ""]
        if tag:
            # $EPOCHREALTIME uses the locale's decimal point.
            when = datetime.fromtimestamp(float(at.replace(",", ".")), UTC) if at else None
            entries.append(LedgerLine(tag, slurm_id, when, cluster))
    return entries


@dataclass
class Submission:
    """One job a test wants accepted, and every answer the broker gave to it."""

    tag: str
    key: str  # the Idempotency-Key, the same on every resend
    body: dict[str, Any]
    answers: list[str] = field(default_factory=list)  # "201", "200", "503", or "no answer: <error>"
    job_id: str | None = None
    problems: list[httpx.Response] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return self.job_id is not None

    @property
    def last(self) -> str | None:
        return self.answers[-1] if self.answers else None


LEDGER_LINE = "$TAG $SLURM_JOB_ID $EPOCHREALTIME $SLURM_CLUSTER_NAME"  # what each run appends to the ledger


def job_body(workspace: Workspace, factory_id: str, run: str, tag: str, *, secret: bool = False) -> dict[str, Any]:
    """A trivial job that appends ``TAG SLURM_JOB_ID TIME`` to the workspace's ledger (TAG from its environment;
    with ``secret``, from its secret environment, so the ledger line proves the sealed value reached the job)."""
    return {
        "name": f"faults-{run}",
        "project": PROJECT,
        "command": ["bash", "-c", f'echo "{LEDGER_LINE}" >> {workspace.ledger_inside}'],
        "secret_environment" if secret else "environment": {"TAG": tag},
        "working_directory": workspace.inside,
        "resources": {"time_limit_min": 2, "memory_mb": 100},
        "placement": {"factory": factory_id},
        "labels": {RUN_LABEL: run, TAG_LABEL: tag},
    }


def submissions(
    workspace: Workspace, factory_id: str, run: str, count: int, *, secret_every: int = 0
) -> list[Submission]:
    """``count`` jobs of :func:`job_body`, each with its own tag and Idempotency-Key; with ``secret_every`` n,
    every n-th one carries its tag as a secret."""
    made = []
    for index in range(count):
        tag = f"{run}-{index:04d}"
        secret = secret_every > 0 and index % secret_every == 0
        body = job_body(workspace, factory_id, run, tag, secret=secret)
        made.append(Submission(tag, f"{run}-key-{index:04d}", body))
    return made


# --- bursts of clients ---------------------------------------------------------------------------------


def _answer_kind(answer: str) -> str:
    if answer in {"200", "201", "503"}:
        return answer
    return "no answer" if answer.startswith("no answer") else "other"


class Progress:
    """Counts of answers during a burst, which fault injectors wait on (conditions, not sleeps)."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self._changed = asyncio.Condition()

    async def record(self, answer: str) -> None:
        kind = _answer_kind(answer)
        async with self._changed:
            self.counts[kind] += 1
            self.counts["answered" if kind in {"200", "201", "503", "other"} else "unanswered"] += 1
            self._changed.notify_all()

    @property
    def created(self) -> int:
        return self.counts["201"]

    async def until(self, condition: Callable[[collections.Counter[str]], bool], timeout_s: float, what: str) -> None:
        async def wait() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: condition(self.counts))

        try:
            await asyncio.wait_for(wait(), timeout_s)
        except TimeoutError:
            counts = dict(self.counts)
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; counts {counts}") from None


async def submit_one(client: httpx.AsyncClient, submission: Submission, progress: Progress | None = None) -> str:
    """POST the submission once with its Idempotency-Key; record and return what came back."""
    try:
        response = await client.post("/v1/jobs", json=submission.body, headers={"Idempotency-Key": submission.key})
    except httpx.TransportError as exc:
        answer = f"no answer: {type(exc).__name__}"
    else:
        answer = str(response.status_code)
        if response.status_code in {200, 201}:
            job_id = response.json()["id"]
            assert submission.job_id in {None, job_id}, (
                f"{submission.tag}: key {submission.key} answered {job_id}, earlier {submission.job_id}"
            )
            submission.job_id = job_id
        else:
            submission.problems.append(response)
    submission.answers.append(answer)
    if progress is not None:
        await progress.record(answer)
    return answer


async def burst(
    client: httpx.AsyncClient, items: list[Submission], *, concurrency: int = 16, progress: Progress | None = None
) -> None:
    """Send every submission once, ``concurrency`` at a time (each client takes the next one when free)."""
    queue: asyncio.Queue[Submission] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)

    async def worker() -> None:
        while True:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await submit_one(client, item, progress)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def run_with(burst_coro: Awaitable[None], injector: Awaitable[None], timeout_s: float) -> None:
    """Run a burst and a fault injector side by side; both must finish (an injector failure fails the test)."""
    await asyncio.wait_for(asyncio.gather(burst_coro, injector), timeout_s)


# --- waiting for the end, and the checks ------------------------------------------------------------


async def jobs_of_run(client: httpx.AsyncClient, run: str) -> list[dict[str, Any]]:
    """Every job the broker holds with this run's label (all pages)."""
    jobs: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"label": f"{RUN_LABEL}={run}", "limit": 500}
        if cursor:
            params["cursor"] = cursor
        response = await client.get("/v1/jobs", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        jobs.extend(page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            return jobs


async def wait_all_terminal(
    client: httpx.AsyncClient,
    run: str,
    expected: int,
    *,
    timeout_s: float,
    context: Callable[[], str] = str,
    on_poll: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """Poll the run's jobs (one listing per poll) until ``expected`` exist and all are terminal.

    ``on_poll`` runs before each poll (e.g. an operator's repair of the cluster, see :func:`resume_drained`).
    """
    deadline = time.monotonic() + timeout_s
    interval = 0.2
    while True:
        if on_poll is not None:
            await asyncio.to_thread(on_poll)
        jobs = await jobs_of_run(client, run)
        if len(jobs) >= expected and all(job["state"] in TERMINAL for job in jobs):
            return jobs
        if time.monotonic() > deadline:
            states = collections.Counter(job["state"] for job in jobs)
            active = [job for job in jobs if job["state"] not in TERMINAL]
            waiting = [
                (job["id"], job["state"], job["state_reason"], job.get("slurm_state"), job.get("slurm_reason"))
                for job in active[:5]
            ]
            raise AssertionError(
                f"after {timeout_s} s: {len(jobs)}/{expected} jobs, states {dict(states)}; e.g. {waiting}\n{context()}"
            )
        await asyncio.sleep(interval)  # a poll interval
        interval = min(interval * 1.5, 1.0)


def resume_drained(cluster: Cluster, reason: str, resumed: list[str]) -> None:
    """Do what the site's operator does: resume the nodes Slurm drained for ``reason`` (appended to
    ``resumed``). slurmctld restarted from state older than its last acknowledged jobs reuses their ids, and a
    slurmd still holding such a job drains its node with "Duplicate jobid"; nothing runs there until resumed."""
    out = cluster.slurm("sinfo", "-h", "-N", "-t", "drain,drained,draining", "-o", "%N|%E")
    for line in out.splitlines():
        node, _, why = line.partition("|")
        if node and reason in why:
            cluster.slurm("scontrol", "update", f"nodename={node}", "state=resume")
            resumed.append(f"{node}: {why}")


def release_launch_failures(cluster: Cluster, released: list[str]) -> None:
    """Do what the site's operator does: release the jobs Slurm requeued and held because their launch failed
    (appended to ``released``). A job that drew a reused id whose old job a slurmd still runs fails to launch
    there ("Duplicate jobid"), and Slurm holds it ("launch failed requeued held") until someone releases it."""
    out = cluster.slurm("squeue", "-h", "-t", "PD", "-o", "%i|%r")
    for line in out.splitlines():
        job, _, why = line.partition("|")
        if job and "launch failed" in why.replace("_", " ").lower():
            cluster.slurm("scontrol", "release", job)
            released.append(f"{job}: {why}")


def slurm_jobs_by_comment(cluster: Cluster) -> dict[str, list[dict[str, str]]]:
    """Every job slurmctld still knows (``scontrol show job -o``: within MinJobAge), grouped by comment."""
    out = cluster.slurm("scontrol", "show", "job", "-o", timeout_s=60)
    grouped: dict[str, list[dict[str, str]]] = collections.defaultdict(list)
    for line in out.splitlines():
        if "JobId=" not in line:
            continue  # "No jobs in the system"
        record = parse_key_values(line.strip())
        grouped[record.get("Comment", "(null)")].append(record)
    return grouped


@dataclass(frozen=True)
class SlurmAmnesia:
    """slurmctld was SIGKILLed at ``killed_at``. Its state is saved asynchronously, so it may come back from
    state older than its last answers, and the invariant allows exactly these consequences, all Slurm's own:

    - It forgot a job it acknowledged shortly before (and may reuse its id): that job, and only such a job,
      may end ``lost``, since Slurm itself can no longer tell what became of it.
    - It forgot such a job after the job had run and the broker had seen it end: the job is ``completed`` and
      ran once, but no Slurm job carries its id any more (see :func:`forgotten_after_it_ran`).
    - It forgot that a job had already run (saved pending, ran and ended before the kill): it runs that very
      Slurm job again after the restart (see :func:`rerun_by_slurm`).
    - It forgot that a job had ended (saved running, ended just before the kill): the fresh slurmd knows nothing
      of it, and slurmctld holds it running until its time limit ends it as TIMEOUT (see
      :func:`timed_out_after_it_ran`).
    """

    killed_at: datetime
    slack: timedelta = timedelta(seconds=2)  # the broker records a submission just after Slurm's answer


@dataclass
class Outcome:
    """What :func:`check_exactly_once` found, for the test's own further assertions and messages."""

    states: collections.Counter[str] = field(default_factory=collections.Counter)
    lost: list[str] = field(default_factory=list)  # "job id: reason"
    forgotten_after_it_ran: list[str] = field(default_factory=list)  # "job id: Slurm job id and run time"
    rerun_by_slurm: list[str] = field(default_factory=list)  # "job id: Slurm job id and run times"
    timed_out_after_it_ran: list[str] = field(default_factory=list)  # "job id: Slurm job id and run time"


def forgotten_after_it_ran(
    runs: list[LedgerLine], slurm_id: str, in_slurm: Sequence[object], amnesia: SlurmAmnesia
) -> bool:
    """Whether a completed job that no Slurm job carries any more is one that slurmctld forgot after it ran.

    Only if it ran exactly once, as the one Slurm job the broker recorded, and before slurmctld was killed (the
    broker saw it end then: after the restart Slurm could not have told it). Its own run in the ledger is the
    proof of exactly once; Slurm's missing record only means Slurm lost its memory of it (and reused its id).
    """
    return not in_slurm and _ran_once_before_the_kill(runs, slurm_id, amnesia)


def timed_out_after_it_ran(job: dict[str, Any], runs: list[LedgerLine], slurm_id: str, amnesia: SlurmAmnesia) -> bool:
    """Whether a job Slurm ended as TIMEOUT is one that had already ended when slurmctld was killed.

    Only if the broker serves Slurm's TIMEOUT, and the job ran exactly once, as the one Slurm job the broker
    recorded, before the kill: slurmctld came back from state that still held it running, and no slurmd could
    tell it otherwise. What the broker serves is Slurm's word; the ledger is the proof of exactly once.
    """
    served_timeout = job["state"] == "timeout" and job.get("slurm_state") == "TIMEOUT"
    return served_timeout and _ran_once_before_the_kill(runs, slurm_id, amnesia)


def _ran_once_before_the_kill(runs: list[LedgerLine], slurm_id: str, amnesia: SlurmAmnesia) -> bool:
    """The ledger holds one run, as the Slurm job the broker recorded, before slurmctld was killed."""
    if len(runs) != 1:
        return False
    [run] = runs
    return run.slurm_id == slurm_id and run.at is not None and run.at < amnesia.killed_at


def rerun_by_slurm(runs: list[LedgerLine], slurm_id: str, amnesia: SlurmAmnesia) -> bool:
    """Whether a job's two runs are one Slurm job that slurmctld ran again after forgetting it had run.

    Only if both runs carry the one Slurm id the broker recorded (the broker submitted once; a second submit
    would be another id), the first ran before slurmctld was killed and the second after (it came back from
    state that still held the job pending). The broker never requeues, so nothing but Slurm runs an id twice.
    """
    times = [run.at for run in runs if run.slurm_id == slurm_id and run.at is not None]
    return len(runs) == len(times) == 2 and times[0] < amnesia.killed_at < times[1]


async def check_exactly_once(
    client: httpx.AsyncClient,
    workspace: Workspace,
    run: str,
    items: list[Submission],
    *,
    amnesia: SlurmAmnesia | None = None,
) -> Outcome:
    """Issue #3's invariant for every accepted submission; also that nothing else of this run exists or ran.

    Every accepted tag: one broker job (by label), ``completed``, bound to one Slurm id (one queued ->
    submitted transition, every event naming the same id), one ledger line carrying that id, and exactly one
    Slurm job carrying the broker's id in its comment. Tags never accepted: no broker job, no run.

    With ``amnesia``, a job may instead be ``lost`` if and only if: it has a reason, Slurm acknowledged it
    before slurmctld was killed, Slurm no longer holds any job carrying its id, and it ran at most once. And a
    ``completed`` job may have no Slurm job carrying its id if and only if :func:`forgotten_after_it_ran`,
    and two ledger lines if and only if :func:`rerun_by_slurm`; a job may be ``timeout`` instead of
    ``completed`` if and only if :func:`timed_out_after_it_ran`.
    """
    failures: list[str] = []
    outcome = Outcome()
    accepted = {item.tag: item for item in items if item.accepted}
    broker_jobs = await jobs_of_run(client, run)
    by_tag: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for job in broker_jobs:
        by_tag[job["labels"][TAG_LABEL]].append(job)
    ledger_runs: dict[str, list[LedgerLine]] = collections.defaultdict(list)
    for line in workspace.ledger():
        ledger_runs[line.tag].append(line)
    ledger_ids = {tag: [line.slurm_id for line in runs] for tag, runs in ledger_runs.items()}
    slurm = slurm_jobs_by_comment(workspace.cluster)
    for tag, jobs in by_tag.items():
        if tag not in accepted:
            failures.append(f"{tag}: never accepted, yet the broker holds {[job['id'] for job in jobs]}")
    for tag, ran in ledger_ids.items():
        if tag not in accepted:
            failures.append(f"{tag}: never accepted, yet it ran: ledger {ran}")
    for tag, item in sorted(accepted.items()):
        jobs = by_tag.get(tag, [])
        if [job["id"] for job in jobs] != [item.job_id]:
            failures.append(f"{tag}: answered {item.job_id} ({item.answers}), broker holds {[j['id'] for j in jobs]}")
            continue
        job = jobs[0]
        outcome.states[job["state"]] += 1
        events = (await client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 500})).json()["items"]
        ran = ledger_ids.get(tag, [])
        in_slurm = [record.get("JobId") for record in slurm.get(job["id"], [])]
        if job["state"] == "lost" and amnesia is not None:
            outcome.lost.append(f"{job['id']} (ran {len(ran)} times): {job['state_reason']}")
            failures.extend(f"{tag} {job['id']}: {problem}" for problem in _forgotten(job, amnesia, ran, in_slurm))
        else:
            slurm_id = str(job["slurm_job_id"])
            runs = ledger_runs.get(tag, [])
            times = [f"{line.at:%H:%M:%S.%f}" if line.at else "?" for line in runs]
            if amnesia is not None and forgotten_after_it_ran(runs, slurm_id, in_slurm, amnesia):
                outcome.forgotten_after_it_ran.append(f"{job['id']}: Slurm job {slurm_id} ran at {times}")
                in_slurm = [slurm_id]  # it was, and ran once: only Slurm's memory of it is gone
            expected = "completed"
            if amnesia is not None and timed_out_after_it_ran(job, runs, slurm_id, amnesia):
                outcome.timed_out_after_it_ran.append(f"{job['id']}: Slurm job {slurm_id} ran at {times}")
                expected = "timeout"
            if amnesia is not None and rerun_by_slurm(runs, slurm_id, amnesia):
                outcome.rerun_by_slurm.append(f"{job['id']}: Slurm job {slurm_id} ran at {times}")
                ran = ran[:1]  # the broker's part: one submission, one Slurm job; the rest is Slurm's
            problems = _exactly_once(job, events, ran, in_slurm, expected)
            failures.extend(f"{tag} {job['id']}: {problem}" for problem in problems)
    if failures:
        shown = "\n  ".join(failures[:40])
        raise AssertionError(
            f"{len(failures)} violations of exactly-once ({len(accepted)} accepted, states {dict(outcome.states)})"
            f":\n  {shown}"
        )
    return outcome


def _exactly_once(
    job: dict[str, Any], events: list[dict[str, Any]], ran: list[str], in_slurm: list[Any], expected: str
) -> list[str]:
    problems = []
    if job["state"] != expected:
        problems.append(f"{job['state']} ({job['state_reason']}), expected {expected}")
    slurm_id = job["slurm_job_id"]
    if slurm_id is None:
        return [*problems, "no Slurm job id"]
    submits = [e for e in events if e["from_state"] == "queued" and e["to_state"] == "submitted"]
    named = {str(e["detail"]["slurm_job_id"]) for e in events if (e.get("detail") or {}).get("slurm_job_id")}
    if len(submits) != 1 or named != {str(slurm_id)}:
        problems.append(f"{len(submits)} submissions, Slurm ids in events {named} vs {slurm_id}")
    if ran != [str(slurm_id)]:
        problems.append(f"ledger {ran}, expected [{slurm_id}] (ran once)")
    if in_slurm != [str(slurm_id)]:
        problems.append(f"Slurm jobs carrying its id: {in_slurm}, expected [{slurm_id}]")
    return problems


def _forgotten(job: dict[str, Any], amnesia: SlurmAmnesia, ran: list[str], in_slurm: list[Any]) -> list[str]:
    problems = []
    if not job["state_reason"]:
        problems.append("lost without a reason")
    submitted_at = job["submitted_at"]
    # A submit in flight when slurmctld died: the dispatcher may not resubmit once slurmctld has restarted (or
    # cannot say since when it runs, as just after a start), because the controller may have dropped (or
    # started) it unsaved (broker/loops/doubt.py). Lost, never twice.
    reason = job["state_reason"] or ""
    in_doubt = submitted_at is None and any(
        words in reason for words in ("may have restarted since the attempt", "cannot say since when it has run")
    )
    if submitted_at is None and not in_doubt:
        problems.append(f"lost before Slurm took it, for a reason that is not slurmctld's restart: {reason}")
    elif submitted_at is not None and datetime.fromisoformat(submitted_at) > amnesia.killed_at + amnesia.slack:
        problems.append(f"lost, but Slurm took it at {submitted_at}, after slurmctld was killed ({amnesia.killed_at})")
    if in_slurm:
        problems.append(f"lost, yet Slurm still holds {in_slurm} carrying its id: it could tell")
    if len(ran) > 1:
        problems.append(f"lost, and it ran {len(ran)} times: {ran}")
    return problems


def summary(items: Iterable[Submission]) -> Mapping[str, int]:
    """How many submissions ended with each answer (for messages)."""
    return dict(collections.Counter(item.last or "unsent" for item in items))
