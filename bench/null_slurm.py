"""A SIMULATION for the agent-link benchmark: agents over a null Slurm, in this process, that never touch Slurm.

:class:`NullSlurm` is a :class:`SlurmAdapter` with no cluster behind it: a submit returns a made-up job id at
once (and remembers the job as PENDING, so listings show it), reads answer from that memory, health is always
ok. :class:`NullSlurmAgent` is the real agent loop (:class:`agent.runner.Agent`, its executor, policy and signed
link, unchanged) over a :class:`NullSlurm`: a simulated site that holds a real session, long-polls, heartbeats
and reports like ``conveyor-agent``, so many sessions cost one process. Only the benchmark uses it; it proves
nothing about Slurm.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
from collections.abc import Collection
from pathlib import Path

from agent.clock import BrokerClock
from agent.executor import Executor, PauseSwitch
from agent.keys import generate_jwk, load_signing_key, public_jwk, write_private_jwk
from agent.link import BrokerLink
from agent.policy import PolicyFile, SitePolicyFile
from agent.runner import Agent
from slurm_adapters.errors import JobNotFound
from slurm_adapters.interface import SlurmAdapter
from slurm_adapters.records import (
    ClusterInfo,
    Health,
    JobRecord,
    NodeInfo,
    OutputStream,
    PartitionInfo,
    Rendering,
    SlurmJobSpec,
    SlurmJobState,
    SubmitContext,
)
from slurm_adapters.safety import SitePolicy

SITE_USERS = ("alice", "bob")
RELEASE = "null-slurm-simulation"


class NullSlurm(SlurmAdapter):
    """A simulated Slurm: made-up ids from 1 up, no call leaves the process. ``received`` maps each attempt id
    to the wall-clock time (``time.time()``) its submit reached this adapter."""

    kind = "rest"  # what the agent announces; the broker places jobs only by announced fields

    def __init__(self, cluster: str) -> None:
        super().__init__(cluster)
        self.ids = itertools.count(1)
        self.jobs: dict[int, JobRecord] = {}
        self.received: dict[str, float] = {}

    def render(self, spec: SlurmJobSpec, user: str) -> Rendering:
        return Rendering(adapter=self.kind, user=user, script=spec.script, payload={"simulated": True})

    async def submit(self, spec: SlurmJobSpec, user: str, context: SubmitContext | None = None) -> int:
        if context is not None:
            self.received.setdefault(context.attempt, time.time())
        job_id = next(self.ids)
        self.jobs[job_id] = JobRecord(
            job_id=job_id, tag=spec.tag, state=SlurmJobState.PENDING, raw_state="PENDING", reason="Simulated",
            exit_code=None, signal=None, submit_time=None, start_time=None, end_time=None, nodes=None, user=user,
            name=spec.name, partition=spec.partition,
        )  # fmt: skip
        return job_id

    async def get_job(self, job_id: int) -> JobRecord:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise JobNotFound(f"no simulated job {job_id}", cluster=self.cluster) from None

    async def list_jobs(self, *, tags: Collection[str] | None = None, tag_prefix: str | None = None) -> list[JobRecord]:
        wanted = set(tags) if tags is not None else None
        return [
            job
            for job in self.jobs.values()
            if (wanted is None or job.tag in wanted) and (tag_prefix is None or (job.tag or "").startswith(tag_prefix))
        ]

    async def cancel(self, job_id: int, user: str, tag: str | None = None) -> None:
        self.jobs.pop(job_id, None)

    async def read_output(self, job_id: int, stream: OutputStream = "stdout", max_bytes: int = 65536) -> str:
        return ""

    async def cluster_info(self) -> ClusterInfo:
        node = NodeInfo(name=f"{self.cluster}-n1", state="IDLE", cpus=8, alloc_cpus=0, memory_mb=8000,
                        partitions=("cpu",), gpus={}, gpus_used={})  # fmt: skip
        partition = PartitionInfo(name="cpu", default=True, state="UP", max_time_min=30, default_time_min=5,
                                  nodes=(node.name,), total_cpus=8, total_gpus={})  # fmt: skip
        return ClusterInfo(cluster=self.cluster, release=RELEASE, partitions=(partition,), nodes=(node,))

    async def health(self) -> Health:
        return Health(ok=True, detail="null Slurm (simulation)", release=RELEASE)


class NullSlurmAgent:
    """A SIMULATED agent: the real agent loop over :class:`NullSlurm`, in this process; never touches Slurm.

    ``public_jwks`` is what to register for ``factory`` before :meth:`start`; :meth:`stop` ends its session's
    loops within the shutdown grace (nothing is in flight on a null Slurm)."""

    def __init__(self, workdir: Path, factory: str, broker_url: str, *, audience: str, concurrency: int = 16) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        key_file = workdir / f"{factory}.jwk"
        jwk = generate_jwk(f"null-{factory}")
        write_private_jwk(key_file, jwk)
        self.public_jwks = {"keys": [public_jwk(jwk)]}
        self.factory = factory
        self.slurm = NullSlurm(factory)
        policy = SitePolicyFile(
            PolicyFile.model_validate({"site_users": list(SITE_USERS), "rules": [{"users": ["*"]}]}),
            SitePolicy(lookup=None, allowed_users=re.compile("|".join(SITE_USERS))),
        )
        self.link = BrokerLink(broker_url, factory=factory, audience=audience, key=load_signing_key(key_file))
        executor = Executor(self.slurm, policy, BrokerClock(), PauseSwitch(workdir / f"{factory}.paused"),
                            deadline_s=5.0)  # fmt: skip
        self.agent = Agent(self.link, executor, concurrency=concurrency, shutdown_grace_s=2.0)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.agent.run(self._stop), name=f"null-agent-{self.factory}")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), timeout=10)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.link.aclose()
