"""A real crash: the dispatcher process SIGKILLs itself right after Slurm accepted the job (failpoint)."""

from __future__ import annotations

import asyncio
import signal
import sys
import textwrap

import pytest

from broker.db.models import AttemptOutcome
from broker.loops.dispatch import FAILPOINTS_ENV, active_failpoints
from conveyor.spec import JobState
from tests.broker.conftest import Broker, lab_factories_file

pytestmark = pytest.mark.lab

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from broker.factories.adapters import AdapterPool
    from broker.db.engine import create_database
    from broker.loops.dispatch import Dispatcher
    from broker.factories.registry import load_factories
    from broker.factories.health import HealthMonitor
    from broker.settings import Settings

    async def main() -> None:
        settings = Settings(database_url=sys.argv[1], data_dir="/tmp")
        database = create_database(settings.database_url)
        registry = load_factories(sys.argv[2])
        adapters = AdapterPool(registry)
        await HealthMonitor(database, registry, adapters).run_once()
        await Dispatcher(database, registry, adapters, settings, "doomed-dispatcher").run_once()

    asyncio.run(main())
    """
)


def test_unknown_failpoints_are_refused() -> None:
    assert active_failpoints({FAILPOINTS_ENV: "after_submit, before_submit"}) == {"after_submit", "before_submit"}
    with pytest.raises(ValueError, match="unknown failpoints"):
        active_failpoints({FAILPOINTS_ENV: "after_sbumit"})


async def test_a_dispatcher_killed_after_submit_leaves_a_job_found_by_tag_and_submitted_once(broker: Broker) -> None:
    job_id = await broker.queue(command=["true"])
    url = broker.db.engine.url.render_as_string(hide_password=False)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, url, str(lab_factories_file()),
        env={"PATH": "/usr/bin:/bin", FAILPOINTS_ENV: "after_submit"},
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(child.communicate(), timeout=60)
    assert child.returncode == -signal.SIGKILL, stderr.decode()
    job = await broker.job(job_id)
    assert job.state is JobState.QUEUED  # Slurm has it; the broker never heard back
    [attempt] = await broker.jobs.attempts(job_id)
    assert attempt.finished_at is None
    assert await broker.jobs.release_lease(job_id, "doomed-dispatcher")  # its lease would run out
    broker.past_the_settle_window(attempt.factory)
    await broker.dispatcher.run_once()
    job = await broker.job(job_id)
    assert job.state is JobState.SUBMITTED
    records = await broker.adapters.get(attempt.factory).list_jobs(tags={job_id})
    assert [record.job_id for record in records] == [int(job.slurm_job_id or 0)]
    assert [a.outcome for a in await broker.jobs.attempts(job_id)] == [AttemptOutcome.SUBMITTED]
