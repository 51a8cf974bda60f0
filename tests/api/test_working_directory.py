"""A job's working directory, through the API on SQLite and PostgreSQL: normalized, never with ``..``, and
inside the directories its Factory allows, else a 422 that names them."""

from __future__ import annotations

import pytest

from tests.api.conftest import Api, job_body

ESCAPES = ["/tmp/../../etc", "/root", "/", "/etc/slurm", "/scratch/alphabet"]


@pytest.mark.xfail(
    strict=True,
    reason="issue 12 item 8: any absolute working_directory is accepted (only its form is checked), and fails "
    "at Slurm or runs where the Factory never meant jobs to",
)
@pytest.mark.parametrize("directory", ESCAPES)
async def test_defect_08_a_working_directory_outside_the_factorys_roots_is_refused(api: Api, directory: str) -> None:
    body = job_body(working_directory=directory, placement={"factory": "alpha"})
    response = await api.client.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    problem = response.json()
    if ".." not in directory:
        assert "/scratch/alpha" in problem["detail"], problem  # names what alpha allows
    dry = await api.client.post("/v1/jobs?dry_run=true", json=body)
    assert dry.status_code == 422, dry.text
