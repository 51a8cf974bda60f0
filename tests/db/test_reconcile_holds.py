"""The reconciler on held Slurm jobs, driven by canned Slurm records, on SQLite and PostgreSQL.

A hold never clears by itself: each reason either ends the job (a hold Slurm made itself after a failed
launch) or leaves it waiting with a ``state_reason`` that says who can release it, counted by a metric.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from broker.db.engine import Database
from broker.db.repositories import JobRepository
from broker.factories.adapters import AdapterPool
from broker.factories.registry import load_factories
from broker.loops.reconcile import Reconciler
from broker.settings import Settings
from conveyor.spec import JobState
from slurm_adapters.factory import AdapterConfig
from slurm_adapters.interface import SlurmAdapter
from slurm_adapters.records import (
    ClusterInfo,
    Health,
    JobRecord,
    OutputStream,
    Rendering,
    SlurmJobSpec,
    SlurmJobState,
    SubmitContext,
)
from tests.api.conftest import write_factories  # the two Factories of the API tests
from tests.db.helpers import at, new_job


class CannedSlurm(SlurmAdapter):
    """Lists what the test says Slurm holds; records cancels; refuses everything else."""

    kind = "canned"

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__(config.cluster)
        self.records: dict[int, JobRecord] = {}
        self.cancelled: list[int] = []
        self.cancel_tags: dict[int, str | None] = {}  # the tag each cancel named

    async def list_jobs(self, *, tags: Collection[str] | None = None, tag_prefix: str | None = None) -> list[JobRecord]:
        return list(self.records.values())

    async def cancel(self, job_id: int, user: str, tag: str | None = None) -> None:
        self.cancelled.append(job_id)
        self.cancel_tags[job_id] = tag

    def render(self, spec: SlurmJobSpec, user: str) -> Rendering:
        raise AssertionError("not called by the reconciler")

    async def submit(self, spec: SlurmJobSpec, user: str, context: SubmitContext | None = None) -> int:
        raise AssertionError("not called by the reconciler")

    async def get_job(self, job_id: int) -> JobRecord:
        raise AssertionError("every job of these tests is listed")

    async def read_output(self, job_id: int, stream: OutputStream = "stdout", max_bytes: int = 65536) -> str:
        raise AssertionError("not called by the reconciler")

    async def cluster_info(self) -> ClusterInfo:
        raise AssertionError("not called by the reconciler")

    async def health(self) -> Health:
        raise AssertionError("not called by the reconciler")


def pending(job_id: str, slurm_job_id: int, reason: str | None) -> JobRecord:
    return JobRecord(
        job_id=slurm_job_id, tag=job_id, state=SlurmJobState.PENDING, raw_state="PENDING", reason=reason,
        exit_code=None, signal=None, submit_time=at(2), start_time=None, end_time=None, nodes=None, user="alice",
    )  # fmt: skip


async def submitted_job(jobs: JobRepository, slurm_job_id: int) -> str:
    """A job the dispatcher has submitted to alpha as ``slurm_job_id``."""
    job = await jobs.insert_job_with_event(new_job(), actor="test", now=at(0))
    await jobs.claim_queued("d", 10, 60, now=at(1))
    attempt = await jobs.record_attempt(
        job.id, lease_owner="d", factory="alpha", slurm_user="alice", actor="d", now=at(2)
    )
    assert attempt is not None
    assert await jobs.record_submission(job.id, attempt.attempt, str(slurm_job_id), actor="d", now=at(3))
    return job.id


# Slurm's reason as the adapters give it: scontrol prints the description with underscores, the JSON the code.
ENDING = {
    101: "launch_failed_requeued_held",  # held by Slurm itself after a failed launch (it had run once)
    102: "launch failed requeued held",
    103: "JobHoldMaxRequeue",  # requeued more than MaxBatchRequeue times, held by Slurm
}
RELEASABLE = {
    104: ("JobHeldAdmin", "administrators"),  # scontrol hold by an operator
    105: ("JobHeldUser", "site account"),  # a hold made under the job's own site account
    106: ("job_requeued_in_held_state", "site account"),  # scontrol requeuehold
}


async def test_defect_13_a_held_job_ends_or_says_who_can_release_it_and_is_counted(
    db: Database, tmp_path: Path
) -> None:
    registry = load_factories(write_factories(tmp_path))
    jobs = JobRepository(db)
    adapters = AdapterPool(registry, build=CannedSlurm)
    slurm = adapters.get("alpha")
    assert isinstance(slurm, CannedSlurm)
    settings = Settings(database_url=str(db.engine.url.render_as_string(hide_password=False)), data_dir=tmp_path)
    reconciler = Reconciler(db, registry, adapters, settings)
    ids: dict[int, str] = {}
    for slurm_job_id, reason in {**ENDING, **{k: v[0] for k, v in RELEASABLE.items()}, 107: "Priority"}.items():
        ids[slurm_job_id] = await submitted_job(jobs, slurm_job_id)
        slurm.records[slurm_job_id] = pending(ids[slurm_job_id], slurm_job_id, reason)

    stats = await reconciler.run_once("alpha")
    assert stats.ok, stats

    for slurm_job_id, reason in ENDING.items():
        job = await jobs.get(ids[slurm_job_id])
        assert job is not None
        assert job.state is JobState.FAILED, (reason, job.state, job.state_reason)
        assert job.state_reason is not None
        assert reason in job.state_reason  # Slurm's own words
        assert job.slurm_reason == reason
    assert sorted(slurm.cancelled) == sorted(ENDING)  # ended in Slurm too, not left held in its queue
    # Each cancel names the broker job's id, its tag: a re-issued Slurm id cannot cancel another job.
    assert slurm.cancel_tags == {slurm_job_id: ids[slurm_job_id] for slurm_job_id in ENDING}
    for slurm_job_id, (reason, who) in RELEASABLE.items():
        job = await jobs.get(ids[slurm_job_id])
        assert job is not None
        assert job.state is JobState.SUBMITTED
        assert job.state_reason is not None
        assert reason in job.state_reason
        assert who in job.state_reason
        assert "release" in job.state_reason
    waiting = await jobs.get(ids[107])
    assert waiting is not None
    assert (waiting.state, waiting.state_reason) == (JobState.SUBMITTED, None)
    assert reconciler.figures()["reconcile_held_jobs"]["alpha"] == len(RELEASABLE)

    # Released on the cluster: the job waits like any other, and the count drops.
    slurm.records[104] = pending(ids[104], 104, "Priority")
    assert (await reconciler.run_once("alpha")).ok
    released = await jobs.get(ids[104])
    assert released is not None
    assert (released.state, released.state_reason, released.slurm_reason) == (JobState.SUBMITTED, None, "Priority")
    assert reconciler.figures()["reconcile_held_jobs"]["alpha"] == len(RELEASABLE) - 1
    assert sorted(slurm.cancelled) == sorted(ENDING)  # nothing cancelled twice, no releasable hold cancelled
    await adapters.aclose()
