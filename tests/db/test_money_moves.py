"""A job's moves that change money (a refund, a charge) and the books, on SQLite and PostgreSQL, across crashes.

The crash is simulated in-process: the database engine refuses every transaction after the first ``k`` (a
process that died right after its k-th commit writes nothing more), and ``k`` sweeps every point of a move.
Then another "process" (a fresh engine, a new dispatcher or reconciler) carries on. After the crash and
after the recovery, a job's state and its allocation's books must agree.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Collection, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.engine import Connection

from broker.db.engine import Database, create_database
from broker.db.models import Allocation, AllocationUnit, Job, JobCharge
from broker.db.repositories import JobRepository
from broker.db.repositories.allocations import AllocationRepository
from broker.db.repositories.jobs import Creation
from broker.db.repositories.projects import ProjectRepository
from broker.db.types import utc_now
from broker.factories.adapters import AdapterPool
from broker.factories.registry import FactoryRegistry, load_factories
from broker.loops.dispatch import Dispatcher
from broker.loops.reconcile import Reconciler
from broker.settings import Settings
from broker.tenancy.accounting import Reservation
from conveyor.spec import JobState
from slurm_adapters.factory import AdapterConfig
from slurm_adapters.records import JobRecord
from slurm_adapters.records import SlurmJobState as SlurmState
from tests.api.conftest import FakeAdapter, write_factories
from tests.db.helpers import new_job

PROJECT = "EHPC-AIF-2026PG01-1147"
HOUR = 3600
RESERVED_S = HOUR
SLURM_JOB_ID = 4242
RAN_S, GPUS = 754, 2  # what Slurm says a completed job used: 754 s on 2 GPUs
MAX_TRANSACTIONS = 60  # far more than any one move takes: the sweep must end before


class Crash(BaseException):
    """The process died (a BaseException: no ``except Exception`` of the loops may carry on after it)."""


@contextlib.contextmanager
def crash_after(database: Database, transactions: int) -> Iterator[Callable[[], bool]]:
    """Every transaction after the first ``transactions`` fails with :class:`Crash`; yields whether one did."""
    begun = 0
    crashed = False

    def on_begin(_connection: Connection) -> None:
        nonlocal begun, crashed
        begun += 1
        if begun > transactions:
            crashed = True
            raise Crash(f"crashed after {transactions} transactions")

    event.listen(database.engine.sync_engine, "begin", on_begin, insert=True)
    try:
        yield lambda: crashed
    finally:
        event.remove(database.engine.sync_engine, "begin", on_begin)


class ScriptedSlurm(FakeAdapter):
    """Slurm as the reconciler sees it: the records a test scripts, and scancel accepted."""

    records: list[JobRecord] = []  # noqa: RUF012 - one script per test, set by the test

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__(config)

    async def list_jobs(self, *, tags: Collection[str] | None = None, tag_prefix: str | None = None) -> list[JobRecord]:
        return list(self.records)

    async def cancel(self, job_id: int, user: str, tag: str | None = None) -> None:
        return None


@dataclasses.dataclass(frozen=True)
class Move:
    """One money-changing move: how its job is set up, which loop makes it, and where it must end."""

    name: str
    target: JobState
    charged_s: int  # what the allocation keeps once the job ended (0: a refund)
    queued: bool  # the dispatcher's move (else the reconciler's, on a job Slurm has)
    record: Callable[[str], JobRecord] | None = None
    spec: dict[str, Any] = dataclasses.field(default_factory=dict)
    cancel: bool = False


def _record(job_id: str, state: SlurmState, reason: str | None = None) -> JobRecord:
    start = utc_now() - timedelta(hours=1)
    ended = state is SlurmState.COMPLETED
    return JobRecord(
        job_id=SLURM_JOB_ID, tag=job_id, state=state, raw_state=state.value, reason=reason,
        exit_code=0 if ended else None, signal=0 if ended else None, submit_time=start,
        start_time=start if ended else None, end_time=start + timedelta(seconds=RAN_S) if ended else None,
        nodes="gn1", user="alice", allocated_tres={"node": "1", "gres/gpu": str(GPUS)} if ended else {},
    )  # fmt: skip


def _never_starts(job_id: str) -> JobRecord:
    return _record(job_id, SlurmState.PENDING, "PartitionTimeLimit")


def _completed(job_id: str) -> JobRecord:
    return _record(job_id, SlurmState.COMPLETED)


MOVES = [
    Move("dispatcher-cancels-before-slurm", JobState.CANCELLED, 0, queued=True, cancel=True),
    Move("dispatcher-rejects", JobState.REJECTED, 0, queued=True, spec={"resources": {"nodes": 0}}),
    Move("reconciler-rejects", JobState.REJECTED, 0, queued=False, record=_never_starts),
    Move("reconciler-charges-an-ended-job", JobState.COMPLETED, RAN_S * GPUS, queued=False, record=_completed),
]


@dataclasses.dataclass(frozen=True)
class Books:
    state: JobState
    reserved_s: int
    charged_s: int | None
    settled: bool
    used_s: int


async def _books(database: Database, job_id: str) -> Books:
    async with database.read() as session:
        job = await session.get(Job, job_id)
        charge = await session.get(JobCharge, job_id)
        assert job is not None
        assert charge is not None
        used = await session.scalar(select(Allocation.used_s).where(Allocation.id == charge.allocation_id))
    return Books(job.state, charge.reserved_s, charge.charged_s, charge.settled_at is not None, int(used or 0))


def _agree(books: Books, move: Move) -> bool:
    """A job still on its way holds its whole reservation; a job that made the move has paid exactly its due."""
    if books.state is move.target:
        return books.settled and books.charged_s == move.charged_s and books.used_s == move.charged_s
    return not books.settled and books.charged_s is None and books.used_s == books.reserved_s


async def _job_at_its_start(database: Database, move: Move) -> str:
    """A job holding ``RESERVED_S`` of an allocation of its own: queued, or submitted to Slurm as job 4242."""
    allocation = await AllocationRepository(database).add(
        PROJECT, "alpha", AllocationUnit.GPU_HOURS, 10 * HOUR, starts_at=utc_now() - timedelta(hours=1),
        ends_at=utc_now() + timedelta(days=1),
    )  # fmt: skip
    jobs = JobRepository(database)
    new = new_job()
    new = dataclasses.replace(
        new, spec={**new.spec, **move.spec}, reservation=Reservation(allocation.id, RESERVED_S)
    )  # fmt: skip
    job, _ = await jobs.create_one(Creation(new, "test"))
    if move.cancel:
        assert await jobs.request_cancel(job.id, actor="test")
    if not move.queued:
        [claimed] = await jobs.claim_queued("setup", 1, 60, utc_now())
        attempt = await jobs.record_attempt(claimed.id, lease_owner="setup", factory="alpha", slurm_user="alice",
                                            actor="test")  # fmt: skip
        assert attempt is not None
        assert await jobs.record_submission(job.id, attempt.attempt, str(SLURM_JOB_ID), actor="test")
    return job.id


def _loop(
    database: Database, registry: FactoryRegistry, move: Move, settings: Settings, *, worker: str, later_s: float
) -> Callable[[], Awaitable[object]]:
    """One cycle of the loop that makes ``move``, as a process started now would run it (``later_s`` on)."""
    adapters = AdapterPool(registry, build=ScriptedSlurm)

    def clock() -> datetime:
        return utc_now() + timedelta(seconds=later_s)

    if move.queued:
        dispatcher = Dispatcher(database, registry, adapters, settings, worker, clock=clock, failpoints=frozenset())
        return dispatcher.run_once
    reconciler = Reconciler(database, registry, adapters, settings, clock=clock)
    return lambda: reconciler.run_once("alpha")


@pytest.mark.parametrize("move", MOVES, ids=[move.name for move in MOVES])
async def test_defect_14_a_crash_at_any_point_of_a_move_leaves_state_and_money_agreeing(
    db: Database, database_url: str, tmp_path: Path, move: Move
) -> None:
    registry = load_factories(write_factories(tmp_path))
    settings = Settings(database_url=database_url, data_dir=tmp_path)
    await ProjectRepository(db).create(PROJECT, "test")
    for transactions in range(MAX_TRANSACTIONS):
        job_id = await _job_at_its_start(db, move)
        ScriptedSlurm.records = [move.record(job_id)] if move.record else []
        crashing = create_database(database_url)  # the process that dies
        try:
            with crash_after(crashing, transactions) as crashed, contextlib.suppress(Crash):
                await _loop(crashing, registry, move, settings, worker=f"doomed-{transactions}", later_s=0)()
        finally:
            await crashing.dispose()
        after_crash = await _books(db, job_id)
        assert _agree(after_crash, move), (transactions, after_crash)
        # The next process carries on (once the dead one's lease has run out) and ends the job as it should.
        await _loop(db, registry, move, settings, worker=f"next-{transactions}", later_s=settings.lease_s + 1)()
        recovered = await _books(db, job_id)
        assert recovered.state is move.target, (transactions, recovered)
        assert _agree(recovered, move), (transactions, recovered)
        if not crashed():
            return  # this run made the whole move without reaching its crash point: every point was swept
    raise AssertionError(f"the move took more than {MAX_TRANSACTIONS} transactions")
