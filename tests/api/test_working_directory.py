"""A job's working directory, through the API on SQLite and PostgreSQL: normalized, never with ``..``, and
inside the directories its Factory allows, else a 422 that names them. alpha allows /scratch/alpha and
/home/{user}; bravo its job_root /scratch/bravo alone; jobs run as alice unless mapped."""

from __future__ import annotations

import pytest

from tests.api.conftest import Api, job_body
from tests.api.test_jobs import problem_of

ESCAPES = ["/tmp/../../etc", "/root", "/", "/etc/slurm", "/scratch/alphabet"]


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


async def test_a_working_directory_is_stored_normalized(api: Api) -> None:
    body = job_body(working_directory="/scratch/alpha//run/./1/", placement={"factory": "alpha"})
    response = await api.client.post("/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["spec"]["working_directory"] == "/scratch/alpha/run/1"


async def test_dot_dot_is_refused_by_name(api: Api) -> None:
    response = await api.client.post("/v1/jobs", json=job_body(working_directory="/scratch/alpha/../bravo"))
    problem = problem_of(response, 422, "validation_error")
    assert [error["loc"] for error in response.json()["errors"]] == [["body", "working_directory"]], problem
    assert "'..'" in response.text


async def test_the_home_root_is_the_home_of_the_site_user_the_job_runs_as(api: Api) -> None:
    mine = await api.client.post("/v1/jobs", json=job_body(working_directory="/home/alice/run"))
    assert mine.status_code == 201, mine.text
    theirs = await api.client.post("/v1/jobs", json=job_body(working_directory="/home/bob/run"))
    problem = problem_of(theirs, 422, "placement_failed.working_directory_not_allowed")
    assert "site user alice" in (problem.detail or "")
    assert "/scratch/alpha, /home/{user}" in (problem.detail or "")


async def test_placement_goes_where_the_working_directory_is_allowed(api: Api) -> None:
    dry = await api.client.post("/v1/jobs?dry_run=true", json=job_body(working_directory="/scratch/bravo/x"))
    assert dry.status_code == 200, dry.text
    assert dry.json()["factory"] == "bravo"
    nowhere = await api.client.post("/v1/jobs", json=job_body(working_directory="/opt"))
    problem = problem_of(nowhere, 422, "placement_failed.working_directory_not_allowed")
    assert "Factory alpha: /scratch/alpha, /home/{user}" in (problem.detail or "")
    assert "Factory bravo: /scratch/bravo" in (problem.detail or "")
