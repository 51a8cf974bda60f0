"""Reading the output of a job: a permanent condition is a 409 saying why, a temporary one a 503 with Retry-After.

Runs on SQLite and PostgreSQL (the ``api`` fixture); the Factory's adapter is the conftest's FakeAdapter, told
what to answer.
"""

from __future__ import annotations

import httpx
import pytest

from conveyor.calls import RetryPolicy
from conveyor.client import AsyncClient
from conveyor.problems import OutputUnavailable as SdkOutputUnavailable
from conveyor.problems import Problem
from conveyor.spec import JobState
from slurm_adapters.errors import ClusterUnavailable, JobNotFound
from tests.api.conftest import TOKEN, Api
from tests.api.test_jobs import place_on, problem_of, submit


async def test_defect_16_output_of_a_job_slurm_no_longer_knows_is_409_gone_not_503(api: Api) -> None:
    """The Factory answers (slurmctld says the job id is unknown): nothing will change by retrying, so 409
    ``output_unavailable.gone`` without Retry-After; a Factory that does not answer is still a 503."""
    job = await submit(api.client)
    await place_on(api, job.id, "alpha", "4242", JobState.COMPLETED)
    adapter = api.adapter("alpha")
    adapter.output_error = JobNotFound("job 4242 is not known to slurmctld", cluster="alpha")
    response = await api.client.get(f"/v1/jobs/{job.id}/output")
    problem = problem_of(response, 409, "output_unavailable.gone")
    assert "retry-after" not in response.headers
    assert problem.retry_after_s is None
    assert problem.detail is not None
    assert "4242" in problem.detail
    assert "alpha" in problem.detail

    # The SDK's view: a typed error at once, not retried (one more adapter call, where a 503 would be six).
    calls_before = adapter.output_calls
    transport = httpx.ASGITransport(app=api.app)
    retry = RetryPolicy(cap_s=0.0)  # a 503 would be retried without waiting: the count below tells
    async with AsyncClient("http://conveyor.test", token=TOKEN, transport=transport, retry=retry) as sdk:
        remote = await sdk.job(job.id)
        with pytest.raises(SdkOutputUnavailable) as raised:
            await remote.output()
    assert raised.value.problem.code == "output_unavailable.gone"
    assert adapter.output_calls == calls_before + 1

    # Only a Factory that really does not answer is temporary.
    adapter.output_error = ClusterUnavailable("slurmctld did not answer", cluster="alpha")
    unreachable = await api.client.get(f"/v1/jobs/{job.id}/output")
    assert isinstance(problem_of(unreachable, 503, "unavailable"), Problem)
    assert "retry-after" in unreachable.headers
