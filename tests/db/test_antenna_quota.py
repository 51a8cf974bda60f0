"""An Antenna's count of active jobs, on SQLite and PostgreSQL: taken at accept against its quota, kept by every
move across the line between active and ended, given back with a job not stored, and backfilled by 0007."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy import func, select

from broker.db.engine import Database, create_database
from broker.db.migrate import upgrade_async
from broker.db.models import AllocationUnit, Antenna, Job
from broker.db.repositories import JobRepository
from broker.db.repositories.allocations import AllocationRepository, OverBudget
from broker.db.repositories.antennas import AntennaRepository, national_issuer
from broker.db.repositories.errors import AntennaQuotaFull
from broker.db.repositories.jobs import Creation, NewJob
from broker.db.repositories.projects import ProjectRepository
from broker.db.types import UTCDateTime, json_document
from broker.tenancy.accounting import NOTHING, Reservation
from conveyor.spec import TERMINAL_STATES, JobState
from tests.db.helpers import T0, at, new_job

PROJECT = "EHPC-AIF-2026PG01-1147"


def _antenna(antenna_id: str, quota: int | None) -> Antenna:
    return Antenna(
        id=antenna_id, country="BE", title="test", factories=["alpha"], jwks={"keys": []}, requests_per_minute=60,
        max_active_jobs=quota, created_at=T0, updated_at=T0, disabled_at=None,
    )  # fmt: skip


def _national(antenna_id: str, reservation: Reservation | None = None) -> NewJob:
    return dataclasses.replace(new_job(owner=f"usr_{antenna_id}"), antenna=antenna_id, reservation=reservation)


async def _counted(db: Database, antenna_id: str) -> int:
    """The Antenna's counter of active jobs, as the accept's compare-and-set reads it."""
    async with db.read() as session:
        return int(await session.scalar(select(Antenna.active_jobs).where(Antenna.id == antenna_id)) or 0)


async def _active(db: Database, antenna_id: str) -> int:
    async with db.read() as session:
        query = select(func.count()).select_from(Job).where(Job.antenna == antenna_id)
        return int(await session.scalar(query.where(Job.state.not_in(TERMINAL_STATES))) or 0)


async def test_the_count_follows_every_move_across_the_line_between_active_and_ended(
    db: Database, jobs: JobRepository
) -> None:
    assert await AntennaRepository(db).create(_antenna("be", quota=None))
    made = [await jobs.create_one(Creation(_national("be"), "test"), now=at(0)) for _ in range(4)]
    ids = [job.id for job, _ in made]
    assert await _counted(db, "be") == 4
    assert await jobs.cancel_queued(ids[0], reason="test", actor="test")
    assert await jobs.reject(ids[1], JobState.QUEUED, reason="test", actor="test", cause="test")
    assert await jobs.transition(ids[2], JobState.QUEUED, JobState.SUBMITTED, actor="test")  # still active
    assert await jobs.lose(ids[3], JobState.QUEUED, reason="test", actor="test", cause="test")
    assert (await _counted(db, "be"), await _active(db, "be")) == (1, 1)
    assert await jobs.transition(ids[3], JobState.LOST, JobState.RUNNING, actor="test")  # Slurm shows it again
    assert (await _counted(db, "be"), await _active(db, "be")) == (2, 2)
    for job_id, state in ((ids[2], JobState.SUBMITTED), (ids[3], JobState.RUNNING)):
        assert await jobs.finish(job_id, state, JobState.COMPLETED, used=NOTHING, actor="test", cause="test")
    assert (await _counted(db, "be"), await _active(db, "be")) == (0, 0)
    other, _ = await jobs.create_one(Creation(new_job(), "test"))  # a direct user's job counts nowhere
    assert other.antenna is None


async def test_a_batch_takes_the_quotas_room_in_arrival_order_and_gives_back_what_it_does_not_store(
    db: Database, jobs: JobRepository
) -> None:
    antennas = AntennaRepository(db)
    assert await antennas.create(_antenna("be", quota=3))
    assert await antennas.create(_antenna("ch", quota=1))
    await ProjectRepository(db).create(PROJECT, "test")
    allocation = await AllocationRepository(db).add(
        PROJECT, "alpha", AllocationUnit.GPU_HOURS, 3600, starts_at=at(-3600), ends_at=at(3600)
    )
    too_big = Reservation(allocation.id, 7200)
    answers = await jobs.create_many(
        [
            Creation(_national("be"), "test"),
            Creation(_national("be", reservation=too_big), "test"),  # over budget: its slot goes back
            Creation(_national("ch"), "test"),
            Creation(_national("be"), "test"),
            Creation(_national("ch"), "test"),  # ch is full
            Creation(_national("be"), "test"),
            Creation(_national("be"), "test"),  # be is full
        ],
        now=at(0),
    )
    kinds = [type(answer).__name__ if isinstance(answer, Exception) else "stored" for answer in answers]
    # be's slot taken by the job over budget is given back, and the first job be refused meanwhile gets it.
    assert kinds == ["stored", "OverBudget", "stored", "stored", "AntennaQuotaFull", "stored", "AntennaQuotaFull"]
    full = answers[6]
    assert isinstance(full, AntennaQuotaFull)
    assert (full.antenna_id, full.active, full.quota) == ("be", 3, 3)
    assert isinstance(answers[1], OverBudget)
    assert [await _counted(db, a) for a in ("be", "ch")] == [await _active(db, a) for a in ("be", "ch")] == [3, 1]


async def test_migration_0007_counts_the_jobs_each_antenna_has_active(empty_database_url: str) -> None:
    await upgrade_async(empty_database_url, "0006")
    users = sa.table("users", sa.column("id"), sa.column("name"), sa.column("issuer"), sa.column("subject"),
                     sa.column("is_admin"), sa.column("created_at", UTCDateTime()))  # fmt: skip
    antennas = sa.table("antennas", sa.column("id"), sa.column("country"), sa.column("title"),
                        sa.column("factories", json_document()), sa.column("jwks", json_document()),
                        sa.column("requests_per_minute"), sa.column("created_at", UTCDateTime()),
                        sa.column("updated_at", UTCDateTime()))  # fmt: skip
    jobs = sa.table("jobs", sa.column("id"), sa.column("owner"), sa.column("project"), sa.column("name"),
                    sa.column("spec", json_document()), sa.column("labels", json_document()), sa.column("state"),
                    sa.column("created_at", UTCDateTime()), sa.column("updated_at", UTCDateTime()),
                    sa.column("attempt_count"))  # fmt: skip
    states = {"usr_be": ["queued", "running", "completed", "lost"], "usr_ch": ["rejected"], "usr_direct": ["queued"]}
    database = create_database(empty_database_url)
    try:
        async with database.write() as session:
            for antenna_id in ("be", "ch"):
                await session.execute(sa.insert(antennas).values(
                    id=antenna_id, country="BE", title="t", factories=[], jwks={}, requests_per_minute=60,
                    created_at=T0, updated_at=T0,
                ))  # fmt: skip
            for user_id, issuer in (("usr_be", "be"), ("usr_ch", "ch"), ("usr_direct", None)):
                await session.execute(sa.insert(users).values(
                    id=user_id, name=user_id, issuer=national_issuer(issuer) if issuer else None, subject="s",
                    is_admin=False, created_at=T0,
                ))  # fmt: skip
            for owner, owned in states.items():
                for n, state in enumerate(owned):
                    await session.execute(sa.insert(jobs).values(
                        id=f"job_{owner}_{n}", owner=owner, project=PROJECT, name="j", spec={}, labels={},
                        state=state, created_at=T0 + timedelta(seconds=n), updated_at=T0, attempt_count=0,
                    ))  # fmt: skip
        await upgrade_async(empty_database_url)
        async with database.read() as session:
            counted = {
                row.id: row.active_jobs for row in await session.execute(select(Antenna.id, Antenna.active_jobs))
            }
            marked = {row.id: row.antenna for row in await session.execute(select(Job.id, Job.antenna))}
    finally:
        await database.dispose()
    assert counted == {"be": 2, "ch": 0}
    assert marked == {
        **{f"job_usr_be_{n}": "be" for n in range(4)}, "job_usr_ch_0": "ch", "job_usr_direct_0": None,
    }  # fmt: skip
