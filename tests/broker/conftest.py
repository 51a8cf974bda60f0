"""The broker's loops against the real lab, on SQLite and PostgreSQL (the database fixtures of tests/db).

Factories come from the lab's own Factory file, exactly as a broker started on the lab would read them.
Tests drive the loops by calling ``run_once`` until a state is reached (a deadline, never a fixed sleep).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from broker.db.engine import Database
from broker.db.models import Job
from broker.db.repositories import JobRepository, NewJob
from broker.db.types import utc_now
from broker.factories.adapters import AdapterPool
from broker.factories.health import HealthMonitor
from broker.factories.registry import FactoryRegistry, load_factories
from broker.loops.dispatch import Dispatcher
from broker.loops.reconcile import Reconciler
from broker.settings import Settings
from conveyor.spec import JobSpec, JobState
from dev.lab.view import lab_json_path
from tests.db import conftest as database_fixtures
from tests.lab import load_lab

# The database fixtures of tests/db, on both databases (fixtures are found by name in this module).
postgres_databases = database_fixtures.postgres_databases
migrated_postgres_url = database_fixtures.migrated_postgres_url
migrated_sqlite_template = database_fixtures.migrated_sqlite_template
database_url = database_fixtures.database_url
db = database_fixtures.db

PROJECT = "EHPC-AIF-2026PG01-1147"
TRACKED_OR_LOST = (JobState.SUBMITTED, JobState.RUNNING, JobState.LOST)


def lab_factories_file() -> Path:
    return lab_json_path().with_name("factories.yaml")


@pytest.fixture(scope="session")
def registry() -> FactoryRegistry:
    load_lab()  # fails loudly without a lab
    return load_factories(lab_factories_file())


@dataclass
class Clock:
    """The real time plus an offset a test may advance (a retry becomes due, an attempt grows old)."""

    offset: timedelta = field(default_factory=timedelta)

    def __call__(self) -> datetime:
        return utc_now() + self.offset


@dataclass
class Broker:
    """One broker's loops over one database and the lab, driven by hand."""

    db: Database
    registry: FactoryRegistry
    adapters: AdapterPool
    settings: Settings
    clock: Clock
    jobs: JobRepository
    dispatcher: Dispatcher
    reconciler: Reconciler
    health: HealthMonitor

    async def queue(self, owner: str = "user:alice", **fields: Any) -> str:
        data: dict[str, Any] = {"name": "broker-test", "project": PROJECT}
        data.update(fields)
        spec = JobSpec.model_validate(data)
        job = await self.jobs.insert_job_with_event(NewJob.from_spec(owner, spec), actor="test", now=self.clock())
        return job.id

    async def job(self, job_id: str) -> Job:
        job = await self.jobs.get(job_id)
        assert job is not None
        return job

    def past_the_settle_window(self, factory_id: str) -> None:
        """Move the clock past the settle window of an attempt started now (its submit window + MessageTimeout
        + clock skew), before which nobody may look its tag up."""
        factory = self.registry[factory_id]
        window_s = factory.submit_window_s + factory.message_timeout_s + factory.clock_skew_s
        self.clock.offset += timedelta(seconds=window_s + 1)

    async def cycle(self) -> None:
        await self.dispatcher.run_once()
        for factory_id in self.registry.ids:
            # As the runtime does for every Factory; here only where this test has jobs Slurm may show.
            if await self.jobs.active_jobs_by_factory(factory_id, TRACKED_OR_LOST):
                await self.reconciler.run_once(factory_id)

    async def until(self, job_id: str, condition: Callable[[Job], bool], what: str, timeout_s: float = 30.0) -> Job:
        """Run dispatcher and reconciler cycles until ``condition(job)`` holds."""
        deadline = time.monotonic() + timeout_s
        delay = 0.05
        while True:
            await self.cycle()
            job = await self.job(job_id)
            if condition(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"job {job_id} is {job.state} ({job.state_reason}; Slurm {job.slurm_state} {job.slurm_reason}) "
                    f"after {timeout_s} s, waiting for {what}"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    async def reach(self, job_id: str, *states: JobState, timeout_s: float = 30.0) -> Job:
        return await self.until(job_id, lambda job: job.state in states, f"{states}", timeout_s)


def make_broker(db: Database, registry: FactoryRegistry, adapters: AdapterPool, tmp_path: Path) -> Broker:
    settings = Settings(database_url=str(db.engine.url.render_as_string(hide_password=False)), data_dir=tmp_path)
    clock = Clock()
    return Broker(
        db=db,
        registry=registry,
        adapters=adapters,
        settings=settings,
        clock=clock,
        jobs=JobRepository(db, clock),
        dispatcher=Dispatcher(db, registry, adapters, settings, "test-dispatcher", clock=clock, failpoints=frozenset()),
        reconciler=Reconciler(db, registry, adapters, settings, clock=clock),
        health=HealthMonitor(db, registry, adapters),
    )


@pytest.fixture
async def broker(db: Database, registry: FactoryRegistry, tmp_path: Path) -> AsyncIterator[Broker]:
    adapters = AdapterPool(registry)
    made = make_broker(db, registry, adapters, tmp_path)
    await made.health.run_once()
    yield made
    await adapters.aclose()
