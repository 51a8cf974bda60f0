"""The dispatcher taking over a dead broker's job, on SQLite and PostgreSQL, with a hand-moved clock.

Whatever the lease, nobody settles an attempt before its start + the Factory's submit window + Slurm's
MessageTimeout + the clock skew: until then the call may still reach Slurm. Every submit carries that window's
end (``not_after``), so the adapter never starts a call that could outlast it. A lease whose Slurm call is in
flight is renewed by its holder's heartbeat, so nobody takes that job over meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker.db.engine import Database
from broker.db.models import Antenna, AttemptOutcome
from broker.db.repositories import FactoryStateRepository, JobRepository
from broker.db.repositories.antennas import AntennaRepository
from broker.factories.adapters import AdapterPool
from broker.factories.registry import SUBMIT_SLACK_S, FactoryRegistry, load_factories
from broker.loops.dispatch import Dispatcher
from broker.settings import Settings
from conveyor.spec import JobState
from slurm_adapters.errors import SubmitWindowClosed
from slurm_adapters.factory import AdapterConfig
from slurm_adapters.interface import SlurmAdapter
from slurm_adapters.records import ClusterInfo, Health, JobRecord, OutputStream, Rendering, SlurmJobSpec, SubmitContext
from tests.api.conftest import write_factories  # the two Factories of the API tests
from tests.db.helpers import at, new_job

# alpha's submit window: the adapter's call deadline (8 s) + the slack between the attempt's commit and the call.
SUBMIT_WINDOW_S = 8 + SUBMIT_SLACK_S
# alpha's settle window: its submit window + Slurm's MessageTimeout (10 s) + clock skew (10 s).
SETTLE_WINDOW_S = SUBMIT_WINDOW_S + 10 + 10


@dataclass
class HandClock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


class ScriptedSlurm(SlurmAdapter):
    """Records every call and each submit's spec and context; ``submit`` waits for ``release`` when it is set,
    refuses as an adapter's fence does when ``refuse`` is set, raises ``error`` when it is set, else answers 77;
    lists nothing; always up."""

    kind = "scripted"

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__(config.cluster)
        self.calls: list[str] = []
        self.contexts: list[SubmitContext | None] = []
        self.release: asyncio.Event | None = None
        self.refuse = False
        self.submitting = asyncio.Event()
        self.submitted: list[tuple[SlurmJobSpec, SubmitContext | None]] = []
        self.error: Exception | None = None

    async def submit(self, spec: SlurmJobSpec, user: str, context: SubmitContext | None = None) -> int:
        self.calls.append("submit")
        self.contexts.append(context)
        self.submitted.append((spec, context))
        if self.refuse:
            raise SubmitWindowClosed("submit not started: its call deadline would end after not_after", cluster="a")
        self.submitting.set()
        if self.release is not None:
            await self.release.wait()
        if self.error is not None:
            raise self.error
        return 77

    async def list_jobs(self, *, tags: Collection[str] | None = None, tag_prefix: str | None = None) -> list[JobRecord]:
        self.calls.append("list_jobs")
        return []

    async def health(self) -> Health:
        self.calls.append("health")
        return Health(ok=True, detail="up", up_since=datetime(2020, 1, 1, tzinfo=UTC))

    def render(self, spec: SlurmJobSpec, user: str) -> Rendering:
        raise AssertionError("not called")

    async def get_job(self, job_id: int) -> JobRecord:
        raise AssertionError("not called")

    async def cancel(self, job_id: int, user: str, tag: str | None = None) -> None:
        raise AssertionError("not called")

    async def read_output(self, job_id: int, stream: OutputStream = "stdout", max_bytes: int = 65536) -> str:
        raise AssertionError("not called")

    async def cluster_info(self) -> ClusterInfo:
        raise AssertionError("not called")


@dataclass
class Setting:
    db: Database
    jobs: JobRepository
    registry: FactoryRegistry
    adapters: AdapterPool
    settings: Settings
    clock: HandClock

    @property
    def alpha(self) -> ScriptedSlurm:
        adapter = self.adapters.get("alpha")
        assert isinstance(adapter, ScriptedSlurm)
        return adapter

    def dispatcher(self, worker_id: str) -> Dispatcher:
        return Dispatcher(
            self.db, self.registry, self.adapters, self.settings, worker_id, clock=self.clock, failpoints=frozenset()
        )


@pytest.fixture
async def setting(db: Database, tmp_path: Path) -> Setting:
    registry = load_factories(write_factories(tmp_path))
    clock = HandClock(at(0))
    await FactoryStateRepository(db, clock).record_health("alpha", healthy=True, detail="up", actor="test")
    settings = Settings(
        database_url=str(db.engine.url.render_as_string(hide_password=False)), data_dir=tmp_path, lease_s=30
    )
    return Setting(db, JobRepository(db, clock), registry, AdapterPool(registry, build=ScriptedSlurm), settings, clock)


async def test_defect_15_nobody_settles_an_attempt_before_its_call_can_no_longer_reach_slurm(
    setting: Setting,
) -> None:
    job_id = (await setting.jobs.insert_job_with_event(new_job(), actor="test", now=at(0))).id
    # A dispatcher that died mid-call: its attempt began at 0 s; its claim was taken over at 5 s.
    await setting.jobs.claim_queued("dead", 10, 30, now=at(0))
    assert await setting.jobs.record_attempt(job_id, lease_owner="dead", factory="alpha", slurm_user="alice",
                                             actor="dead", now=at(0))  # fmt: skip
    assert await setting.jobs.release_lease(job_id, "dead", now=at(5))
    setting.clock.now = at(5)
    taker = setting.dispatcher("taker")
    assert await taker.run_once() == 1
    assert setting.alpha.calls == []  # Slurm not even asked: absence proven now would not hold at 20 s
    job = await setting.jobs.get(job_id)
    assert job is not None
    assert (job.state, job.next_attempt_at) == (JobState.QUEUED, at(SETTLE_WINDOW_S))
    assert job.state_reason is not None
    assert "may still reach" in job.state_reason
    setting.clock.now = at(SETTLE_WINDOW_S) - timedelta(microseconds=1)  # the submit window counts in full
    assert await taker.run_once() == 0  # not due yet
    # Once the window has passed, the tag is looked up, found absent, and the job submitted.
    setting.clock.now = at(SETTLE_WINDOW_S)
    assert await taker.run_once() == 1
    assert setting.alpha.calls == ["list_jobs", "health", "submit"]
    job = await setting.jobs.get(job_id)
    assert job is not None
    assert (job.state, job.slurm_job_id) == (JobState.SUBMITTED, "77")


async def test_every_submit_carries_its_attempt_its_requester_and_not_after_its_start_plus_the_submit_window(
    setting: Setting,
) -> None:
    it = Antenna(
        id="it", country="IT", title="test", factories=["alpha"], jwks={"keys": []}, requests_per_minute=60,
        max_active_jobs=None, created_at=at(0), updated_at=at(0), disabled_at=None,
    )  # fmt: skip
    assert await AntennaRepository(setting.db).create(it)
    from_antenna = dataclasses.replace(new_job(owner="usr_it_rossi"), antenna="it")
    job_ids = [(await setting.jobs.insert_job_with_event(new, actor="test", now=at(0))).id
               for new in (new_job(), from_antenna)]  # fmt: skip
    setting.clock.now = at(3)
    assert await setting.dispatcher("d").run_once() == 2
    contexts = {context.attempt: context for context in setting.alpha.contexts if context is not None}
    assert len(contexts) == len(setting.alpha.contexts) == 2
    for job_id in job_ids:
        job = await setting.jobs.get(job_id)
        assert job is not None
        assert job.state is JobState.SUBMITTED
        (attempt,) = await setting.jobs.attempts(job_id)
        assert attempt.started_at == at(3)
        context = contexts[f"{job_id}/1"]
        assert context.not_after == at(3 + SUBMIT_WINDOW_S)
        assert (context.requester_user, context.requester_project, context.requester_antenna) == (
            job.owner, job.project, job.antenna,
        )  # fmt: skip
    assert {context.requester_antenna for context in contexts.values()} == {None, "it"}


async def test_a_submit_whose_window_closed_is_retried_without_marking_the_factory_unhealthy(
    setting: Setting,
) -> None:
    job_id = (await setting.jobs.insert_job_with_event(new_job(), actor="test", now=at(0))).id
    setting.alpha.refuse = True
    assert await setting.dispatcher("d").run_once() == 1
    job = await setting.jobs.get(job_id)
    assert job is not None
    assert job.state is JobState.QUEUED
    assert job.state_reason is not None
    assert "not started in time" in job.state_reason
    (attempt,) = await setting.jobs.attempts(job_id)
    assert attempt.outcome is AttemptOutcome.NOT_APPLIED  # nothing was sent: no doubt to settle later
    state = await FactoryStateRepository(setting.db).get("alpha")
    assert state is not None
    assert state.healthy is True
    setting.alpha.refuse = False
    assert job.next_attempt_at is not None
    setting.clock.now = job.next_attempt_at
    assert await setting.dispatcher("d").run_once() == 1
    job = await setting.jobs.get(job_id)
    assert job is not None
    assert (job.state, job.slurm_job_id, job.attempt_count) == (JobState.SUBMITTED, "77", 2)
    assert setting.alpha.calls == ["submit", "submit"]  # no tag look-up: the refused attempt was not in doubt


async def test_defect_15_a_job_whose_submit_is_in_flight_is_not_taken_over(setting: Setting, db: Database) -> None:
    from broker.db.repositories.instances import InstanceRepository

    instances = InstanceRepository(db)
    await instances.register("holder", worker_id="holder", ttl_s=15, now=at(0))
    job_id = (await setting.jobs.insert_job_with_event(new_job(), actor="test", now=at(0))).id
    setting.alpha.release = asyncio.Event()
    holder = setting.dispatcher("holder")
    cycle = asyncio.create_task(holder.run_once())
    await asyncio.wait_for(setting.alpha.submitting.wait(), 10)  # its submit hangs
    assert holder.in_flight == {job_id}
    setting.clock.now = at(25)  # near the end of the 30 s lease, the holder's heartbeat renews it
    assert await instances.beat("holder", ttl_s=15, now=at(25), renew=holder.in_flight, lease_s=30)
    setting.clock.now = at(38)  # past the lease it claimed with, within the holder's heartbeat
    assert await setting.dispatcher("other").run_once() == 0
    setting.alpha.release.set()
    assert await asyncio.wait_for(cycle, 10) == 1
    job = await setting.jobs.get(job_id)
    assert job is not None
    assert (job.state, job.slurm_job_id, job.attempt_count) == (JobState.SUBMITTED, "77", 1)
    assert holder.in_flight == set()
    assert setting.alpha.calls == ["submit"]


async def test_a_batch_that_fails_before_its_jobs_are_carried_leaves_nothing_in_flight(
    setting: Setting, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database going away between a claim and the batch's reads must not leave the claimed jobs marked in
    flight: the heartbeat would renew their leases for ever and they would stay queued (seen in the PostgreSQL
    outage fault test)."""
    job_id = (await setting.jobs.insert_job_with_event(new_job(), actor="test", now=at(0))).id

    async def database_gone(*_: object) -> None:
        raise ConnectionRefusedError("the database went away")

    monkeypatch.setattr("broker.loops.dispatch.factory_statuses", database_gone)
    dispatcher = setting.dispatcher("live")
    with pytest.raises(ConnectionRefusedError):
        await dispatcher.run_once()
    assert dispatcher.in_flight == set()
    assert (await setting.jobs.get(job_id)) is not None
