"""The job environment a user may set: never variables that Slurm, its launchers or container runtimes read."""

from __future__ import annotations

import pytest

from conveyor.problems import Problem
from slurm_adapters.errors import UnsafeRequest
from slurm_adapters.safety import check_environment
from tests.api.conftest import Api, job_body

# One name per family, as users write them: Slurm's own (refused before issue 12) and those that its
# launchers, SPANK plugins, PMI/PMIx and container runtimes read.
SLURM_NAMES = ("SRUN_CPUS_PER_TASK", "SALLOC_PARTITION", "slurm_job_id")
LAUNCHER_AND_RUNTIME_NAMES = (
    "SPANK_X11",
    "PMI_RANK",
    "PMIX_RANK",
    "SLURMD_NODENAME",
    "APPTAINER_BIND",
    "APPTAINERENV_LD_PRELOAD",
    "SINGULARITY_BIND",
    "SINGULARITYENV_PATH",
)


async def refused(api: Api, name: str) -> None:
    response = await api.client.post("/v1/jobs", json=job_body(environment={name: "1"}))
    assert response.status_code == 422, response.text
    problem = Problem.model_validate(response.json())
    assert problem.code == "validation_error"
    assert name in (problem.detail or "")
    with pytest.raises(UnsafeRequest, match=name):
        check_environment({name: "1"})


@pytest.mark.parametrize("name", LAUNCHER_AND_RUNTIME_NAMES)
async def test_defect_11_launcher_and_runtime_variables_are_refused(api: Api, name: str) -> None:
    await refused(api, name)


@pytest.mark.parametrize("name", SLURM_NAMES)
async def test_slurms_own_variables_are_refused(api: Api, name: str) -> None:
    await refused(api, name)


async def test_ordinary_variables_are_accepted(api: Api) -> None:
    names = {"SLURMY": "1", "PMIX": "2", "MY_SRUN_FLAGS": "3", "HOME_CACHE": "4", "OMP_NUM_THREADS": "8"}
    response = await api.client.post("/v1/jobs", json=job_body(environment=names))
    assert response.status_code == 201, response.text
    check_environment(names)
