"""The jobs API in-process: acceptance, problems for bad input, ownership, idempotency, listing, events,
cancel, output and dry runs, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from broker.db.models import Job as JobRow
from broker.db.repositories import JobRepository
from conveyor.models import DryRun, EventList, Job, JobList, JobOutput
from conveyor.problems import PROBLEM_MEDIA_TYPE, Problem
from conveyor.spec import JobState
from slurm_adapters.errors import ClusterUnavailable, OutputUnavailable
from tests.api.conftest import Api, job_body


def problem_of(response: httpx.Response, status: int, code: str) -> Problem:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    problem = Problem.model_validate(response.json())
    assert problem.status == status
    assert problem.code == code, problem
    assert problem.type == f"https://conveyor.eu/problems/{code.split('.', maxsplit=1)[0]}"
    return problem


async def submit(client: httpx.AsyncClient, **changes: Any) -> Job:
    response = await client.post("/v1/jobs", json=job_body(**changes))
    assert response.status_code == 201, response.text
    return Job.model_validate(response.json())


async def place_on(api: Api, job_id: str, factory: str, slurm_job_id: str, state: JobState) -> None:
    """Stand in for the dispatcher and reconciler: the job reached Slurm on ``factory``."""
    async with api.db.write() as session:
        await session.execute(
            update(JobRow)
            .where(JobRow.id == job_id)
            .values(factory=factory, slurm_job_id=slurm_job_id, state=state, slurm_user="alice")
        )


# --- acceptance ---------------------------------------------------------------------------------------


async def test_a_201_job_is_readable_at_once(api: Api) -> None:
    response = await api.client.post("/v1/jobs", json=job_body(labels={"team": "nlp"}))
    assert response.status_code == 201, response.text
    job = Job.model_validate(response.json())
    assert response.headers["location"] == f"/v1/jobs/{job.id}"
    assert job.state is JobState.QUEUED
    assert job.owner == "dev"
    assert job.id.startswith("job_")
    again = await api.client.get(response.headers["location"])
    assert again.status_code == 200
    assert Job.model_validate(again.json()) == job


async def test_invalid_spec_is_a_422_problem_naming_each_field(api: Api) -> None:
    body = job_body(resources={"nodes": 0, "time_limit_min": "soon"})
    del body["name"]
    problem = problem_of(await api.client.post("/v1/jobs", json=body), 422, "validation_error")
    assert problem.errors is not None
    locs = {tuple(e.loc) for e in problem.errors}
    assert {("body", "name"), ("body", "resources", "nodes"), ("body", "resources", "time_limit_min")} <= locs
    assert problem.detail is not None
    assert "body.name" in problem.detail


async def test_unknown_fields_are_refused_not_dropped(api: Api) -> None:
    problem = problem_of(await api.client.post("/v1/jobs", json=job_body(gpus=4)), 422, "validation_error")
    assert problem.errors is not None
    assert [(e.loc, e.type) for e in problem.errors] == [(["body", "gpus"], "extra_forbidden")]


async def test_planned_features_are_refused_by_name(api: Api) -> None:
    for field, words in (("image", "use container.image"), ("array", "job arrays")):
        response = await api.client.post("/v1/jobs", json=job_body(**{field: "x"}))
        problem = problem_of(response, 422, "validation_error")
        assert problem.detail is not None
        assert words in problem.detail


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ({"command": ["python", "a\x00b"]}, "command word 1 contains a NUL byte"),
        ({"command": None, "script": "#!/bin/bash\necho \x00\n"}, "the script contains a NUL byte"),
        ({"environment": {"X": "\x00"}}, "environment variable 'X' contains a NUL byte"),
    ],
    ids=["command", "script", "environment"],
)
async def test_a_nul_byte_anywhere_is_a_422_not_a_database_error(api: Api, payload: dict[str, Any], words: str) -> None:
    """PostgreSQL cannot store NUL in JSON text (it answered 500 before), and Slurm could not run it anyway."""
    body = {key: value for key, value in {**job_body(), **payload}.items() if value is not None}
    problem = problem_of(await api.client.post("/v1/jobs", json=body), 422, "validation_error")
    assert problem.detail is not None
    assert words in problem.detail


async def test_malformed_json_is_a_422_problem(api: Api) -> None:
    response = await api.client.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"})
    problem = problem_of(response, 422, "validation_error")
    assert problem.errors
    assert problem.errors[0].type == "json_invalid"


async def test_a_time_limit_above_every_max_time_names_the_limit_and_the_partitions(api: Api) -> None:
    response = await api.client.post("/v1/jobs", json=job_body(resources={"time_limit_min": 500}))
    problem = problem_of(response, 422, "placement_failed.time_limit_exceeded")
    assert problem.detail is not None
    assert "500 min" in problem.detail
    for where in ("alpha/cpu 60 min", "bravo/cpu 30 min"):
        assert where in problem.detail
    extra = problem.model_extra or {}
    assert extra["requested"] == 500
    assert extra["partitions"] == {"alpha/cpu": 60, "bravo/cpu": 30}
    assert (await api.client.get("/v1/jobs")).json()["items"] == []


async def test_a_job_that_fits_a_drained_factory_is_accepted_and_waits(api: Api) -> None:
    drained = await api.client.post("/v1/admin/factories/bravo/drain", json={"reason": "maintenance"})
    assert drained.status_code == 200
    job = await submit(api.client, resources={"gpus_per_node": 2, "gpu_type": "h100", "time_limit_min": 20})
    assert job.state is JobState.QUEUED


async def test_unknown_gpu_type_is_refused_with_where_gpus_are(api: Api) -> None:
    body = job_body(resources={"gpus_per_node": 1, "gpu_type": "mi300"})
    problem = problem_of(await api.client.post("/v1/jobs", json=body), 422, "placement_failed.gpu_type_unavailable")
    assert problem.detail is not None
    assert "a100" in problem.detail
    assert "h100" in problem.detail


# --- authentication and ownership ---------------------------------------------------------------------


async def test_no_token_and_a_wrong_token_are_401_with_a_challenge(api: Api) -> None:
    missing = await api.anonymous.get("/v1/jobs")
    problem_of(missing, 401, "unauthorized")
    assert missing.headers["www-authenticate"] == 'Bearer realm="conveyor"'
    wrong = await api.anonymous.get("/v1/jobs", headers={"Authorization": "Bearer not-the-token"})
    problem_of(wrong, 401, "unauthorized.unknown")
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    basic = await api.anonymous.get("/v1/jobs", headers={"Authorization": "Basic ZGV2OmRldg=="})
    problem_of(basic, 401, "unauthorized")


async def test_a_missing_job_and_another_callers_job_answer_the_same_404(api: Api) -> None:
    job = await submit(api.client)
    theirs = await api.other.get(f"/v1/jobs/{job.id}")
    missing = await api.other.get("/v1/jobs/job_aaaaaaaaaaaaaaaaaaaa")
    a = problem_of(theirs, 404, "not_found").model_dump(exclude={"instance", "detail"})
    b = problem_of(missing, 404, "not_found").model_dump(exclude={"instance", "detail"})
    assert a == b
    for path in ("events", "output"):
        problem_of(await api.other.get(f"/v1/jobs/{job.id}/{path}"), 404, "not_found")
    problem_of(await api.other.post(f"/v1/jobs/{job.id}/cancel"), 404, "not_found")
    assert (await api.other.get("/v1/jobs")).json()["items"] == []


# --- idempotency --------------------------------------------------------------------------------------


async def test_twenty_parallel_identical_requests_with_one_key_make_one_job(api: Api) -> None:
    headers = {"Idempotency-Key": "retry-7c1e"}
    responses = await asyncio.gather(
        *(api.client.post("/v1/jobs", json=job_body(), headers=headers) for _ in range(20))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 19 + [201], [r.text for r in responses if r.status_code not in (200, 201)]
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    assert {r.headers["location"] for r in responses} == {f"/v1/jobs/{ids.pop()}"}
    listing = JobList.model_validate((await api.client.get("/v1/jobs")).json())
    assert len(listing.items) == 1


async def test_the_same_key_with_another_body_is_refused(api: Api) -> None:
    headers = {"Idempotency-Key": "k1"}
    first = await api.client.post("/v1/jobs", json=job_body(), headers=headers)
    assert first.status_code == 201
    response = await api.client.post("/v1/jobs", json=job_body(name="other"), headers=headers)
    problem = problem_of(response, 409, "idempotency_conflict")
    assert (problem.model_extra or {})["job_id"] == first.json()["id"]
    assert problem.detail is not None
    assert "k1" in problem.detail


async def test_a_key_is_scoped_to_its_caller(api: Api) -> None:
    headers = {"Idempotency-Key": "shared-key"}
    mine = await api.client.post("/v1/jobs", json=job_body(), headers=headers)
    theirs = await api.other.post("/v1/jobs", json=job_body(), headers=headers)
    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert mine.json()["id"] != theirs.json()["id"]


async def test_a_malformed_key_is_refused(api: Api) -> None:
    response = await api.client.post("/v1/jobs", json=job_body(), headers={"Idempotency-Key": "a\tb"})
    problem = problem_of(response, 422, "validation_error")
    assert problem.errors
    assert problem.errors[0].loc == ["header", "Idempotency-Key"]


# --- listing ------------------------------------------------------------------------------------------


async def test_list_filters_and_cursor_pages(api: Api) -> None:
    created = [await submit(api.client, labels={"team": "nlp" if i % 2 else "cv"}) for i in range(5)]
    other_project = await submit(api.client, project="EHPC-AIF-2026PG01-9999")
    await place_on(api, created[0].id, "alpha", "41", JobState.SUBMITTED)

    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = JobList.model_validate((await api.client.get("/v1/jobs", params=params)).json())
        assert len(page.items) <= 2
        seen += [job.id for job in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [job.id for job in reversed([*created, other_project])]  # newest first, nothing twice

    async def ids(**params: Any) -> set[str]:
        response = await api.client.get("/v1/jobs", params=params)
        assert response.status_code == 200, response.text
        return {job["id"] for job in response.json()["items"]}

    assert await ids(project="EHPC-AIF-2026PG01-9999") == {other_project.id}
    assert await ids(label="team=nlp") == {created[1].id, created[3].id}
    assert await ids(factory="alpha") == {created[0].id}
    assert await ids(state="submitted") == {created[0].id}
    assert await ids(state=["submitted", "queued"], label="team=cv", project="EHPC-AIF-2026PG01-1147") == {
        created[0].id, created[2].id, created[4].id,
    }  # fmt: skip


async def test_list_refuses_unknown_parameters_bad_states_and_forged_cursors(api: Api) -> None:
    problem_of(await api.client.get("/v1/jobs", params={"colour": "red"}), 422, "validation_error")
    problem_of(await api.client.get("/v1/jobs", params={"state": "sleeping"}), 422, "validation_error")
    problem = problem_of(await api.client.get("/v1/jobs", params={"cursor": "bm9wZQ"}), 422, "validation_error")
    assert problem.errors
    assert problem.errors[0].loc == ["query", "cursor"]


# --- events and cancel --------------------------------------------------------------------------------


async def test_events_start_with_created_and_page_by_cursor(api: Api) -> None:
    job = await submit(api.client)
    await api.client.post(f"/v1/jobs/{job.id}/cancel")
    first = EventList.model_validate((await api.client.get(f"/v1/jobs/{job.id}/events", params={"limit": 1})).json())
    assert [e.kind for e in first.items] == ["created"]
    assert first.items[0].to_state is JobState.QUEUED
    assert first.items[0].actor == "dev"
    assert first.next_cursor is not None
    rest = await api.client.get(f"/v1/jobs/{job.id}/events", params={"cursor": first.next_cursor})
    assert [e["kind"] for e in rest.json()["items"]] == ["cancel_requested"]
    after = await api.client.get(f"/v1/jobs/{job.id}/events", params={"after": first.items[0].id})
    assert after.json()["items"] == rest.json()["items"]
    problem_of(
        await api.client.get(f"/v1/jobs/{job.id}/events", params={"after": 1, "cursor": "x"}), 422, "validation_error"
    )


async def test_cancel_records_intent_is_repeatable_and_refused_once_ended(api: Api) -> None:
    job = await submit(api.client)
    response = await api.client.post(f"/v1/jobs/{job.id}/cancel")
    assert response.status_code == 202
    assert Job.model_validate(response.json()).cancel_requested
    assert (await api.client.post(f"/v1/jobs/{job.id}/cancel")).status_code == 202

    ended = await submit(api.client)
    moved = await JobRepository(api.db).reject(ended.id, JobState.QUEUED, reason="test", actor="test", cause="test")
    assert moved
    problem = problem_of(await api.client.post(f"/v1/jobs/{ended.id}/cancel"), 409, "cancel_not_possible")
    assert problem.detail is not None
    assert "rejected" in problem.detail


# --- output -------------------------------------------------------------------------------------------


async def test_output_of_a_job_not_at_slurm_yet_is_a_clear_409(api: Api) -> None:
    job = await submit(api.client)
    problem = problem_of(await api.client.get(f"/v1/jobs/{job.id}/output"), 409, "output_unavailable.not_submitted")
    assert problem.detail is not None
    assert "queued" in problem.detail


async def test_output_is_read_through_the_factorys_adapter(api: Api) -> None:
    job = await submit(api.client)
    await place_on(api, job.id, "alpha", "4242", JobState.RUNNING)
    api.adapter("alpha").outputs[(4242, "stdout")] = "epoch 1\nepoch 2\n"
    api.adapter("alpha").outputs[(4242, "stderr")] = "warning\n"
    out = JobOutput.model_validate((await api.client.get(f"/v1/jobs/{job.id}/output")).json())
    assert (out.content, out.truncated, out.stream) == ("epoch 1\nepoch 2\n", False, "stdout")
    tail = await api.client.get(f"/v1/jobs/{job.id}/output", params={"stream": "stdout", "max_bytes": 8})
    assert (tail.json()["content"], tail.json()["truncated"]) == ("epoch 2\n", True)
    err = await api.client.get(f"/v1/jobs/{job.id}/output", params={"stream": "stderr"})
    assert err.json()["content"] == "warning\n"


async def test_output_the_factory_cannot_read_or_reach_is_a_clear_problem(api: Api) -> None:
    job = await submit(api.client)
    await place_on(api, job.id, "bravo", "7", JobState.COMPLETED)
    api.adapter("bravo").output_error = OutputUnavailable("output files are not reachable from the broker")
    problem = problem_of(await api.client.get(f"/v1/jobs/{job.id}/output"), 409, "output_unavailable.not_readable")
    assert problem.detail is not None
    assert "bravo" in problem.detail
    assert "not reachable" in problem.detail
    api.adapter("bravo").output_error = ClusterUnavailable("slurmrestd did not answer", cluster="bravo")
    response = await api.client.get(f"/v1/jobs/{job.id}/output")
    problem = problem_of(response, 503, "unavailable")
    assert response.headers["retry-after"] == str(problem.retry_after_s)
    assert problem.detail is not None
    assert "bravo" in problem.detail


# --- dry run ------------------------------------------------------------------------------------------


async def test_a_dry_run_shows_placement_and_rendering_and_stores_nothing(api: Api) -> None:
    body = job_body(resources={"gpus_per_node": 2, "gpu_type": "h100", "time_limit_min": 60})
    response = await api.client.post("/v1/jobs", params={"dry_run": "true"}, json=body)
    assert response.status_code == 200, response.text
    dry = DryRun.model_validate(response.json())
    assert (dry.factory, dry.partition, dry.time_limit_min) == ("bravo", "gpu", 60)
    assert dry.rendering.adapter == "rest"
    assert dry.rendering.site_user == "alice"
    assert "exec python train.py" in dry.rendering.script
    assert "bravo/gpu" in dry.reason
    assert "not available now" in dry.reason  # no health check has run in these tests
    assert (await api.client.get("/v1/jobs")).json()["items"] == []
    assert "location" not in response.headers


async def test_a_dry_run_of_an_impossible_job_is_the_same_422(api: Api) -> None:
    response = await api.client.post("/v1/jobs?dry_run=true", json=job_body(resources={"time_limit_min": 500}))
    problem_of(response, 422, "placement_failed.time_limit_exceeded")
