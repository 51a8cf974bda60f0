"""``GET /v1/factories`` shows the capacity the health loop observed on the real lab, and follows a GPU job.

The app runs in-process with its loops on, in front of the lab's alpha (22.05, gn1-2 with 4 a100 each). The
GPU job goes to Slurm through the lab's own adapter, not through the broker, so the broker's view of it comes
only from its capacity snapshots. Waits are deadlines on polled conditions.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from app.main import create_app
from broker.db.types import utc_now
from conveyor.models import FactoryView
from slurm_adapters.records import SlurmJobSpec, SlurmJobState
from tests.api.conftest import TOKEN, api_settings, client_for
from tests.api.server import lab_factories
from tests.db.helpers import only_sqlite, wait_until
from tests.lab import SUBMIT_USER, Cluster, clusters, job_dir, make_adapter, new_tag, wait_for_job

pytestmark = pytest.mark.lab

JOB_GPUS = 2


def gpu_job(cluster: Cluster) -> SlurmJobSpec:
    tag = new_tag("capacity")
    return SlurmJobSpec(
        name="capacity",
        script="sleep 300\n",
        working_directory=job_dir(cluster, tag),
        tag=tag,
        partition="gpu",
        gpus_per_node=JOB_GPUS,
        gpu_type="a100",
        time_limit_min=5,
    )


async def alpha_view(client: httpx.AsyncClient) -> FactoryView:
    response = await client.get("/v1/factories")
    assert response.status_code == 200, response.text
    [alpha] = [FactoryView.model_validate(view) for view in response.json()]
    return alpha


@only_sqlite  # the snapshots live in the process's memory: the database plays no part
async def test_factories_show_observed_capacity_and_free_gpus_drop_while_a_gpu_job_runs(
    tmp_path: Path, database_url: str
) -> None:
    alpha = next(cluster for cluster in clusters() if cluster.name == "alpha")
    factories = lab_factories(tmp_path, only=["alpha"])
    settings = api_settings(tmp_path, database_url, factories_file=factories, run_loops=True, health_interval_s=0.2)
    app = create_app(settings)
    adapter = make_adapter("rest", alpha)
    try:
        async with app.router.lifespan_context(app), client_for(app, TOKEN) as client:
            views: list[FactoryView] = []

            async def checked() -> bool:  # the health loop's first cycle runs after startup, not before serving
                views.append(await alpha_view(client))  # health (stored) and counts (in memory): in either order
                view = views[-1]
                return view.healthy is False or (view.healthy is not None and view.total_gpus is not None)

            await wait_until(checked, timeout_s=30)
            first = views[-1]
            assert first.healthy is True
            assert first.total_gpus == {"a100": 8}
            assert first.slurm_release is not None
            assert first.slurm_release.startswith("22.05")
            assert first.free_gpus is not None
            assert 0 <= first.free_gpus["a100"] <= 8

            job_id = await adapter.submit(gpu_job(alpha), SUBMIT_USER)
            try:
                record = await wait_for_job(adapter, job_id, {SlurmJobState.RUNNING})
                assert record.state is SlurmJobState.RUNNING, record
                running_since = utc_now()
                seen: list[FactoryView] = []

                async def observed_while_running() -> bool:
                    seen.append(await alpha_view(client))
                    return seen[-1].observed_at is not None and seen[-1].observed_at >= running_since

                await wait_until(observed_while_running, timeout_s=30)
                during = seen[-1]
                assert during.total_gpus == {"a100": 8}
                assert during.free_gpus is not None
                # Other jobs may hold GPUs too: the job's own GPUs are the least that must be gone.
                assert during.free_gpus["a100"] <= 8 - JOB_GPUS, during
            finally:
                await adapter.cancel(job_id, SUBMIT_USER)
                await wait_for_job(adapter, job_id, {SlurmJobState.CANCELLED})
    finally:
        await adapter.aclose()
