"""The SDK's wire models: JSON round trips, strict requests, tolerant answers, problems -> typed exceptions."""

from __future__ import annotations

import copy
import json
import pickle
import subprocess
import sys
import sysconfig
import tomllib
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import FastAPI, Query
from pydantic import BaseModel, ValidationError

from conveyor import (
    AuthError,
    CancelNotPossible,
    Conflict,
    ConveyorError,
    DryRun,
    EventList,
    EventQuery,
    FactoryView,
    IdempotencyConflict,
    Job,
    JobEvent,
    JobLinks,
    JobList,
    JobQuery,
    JobSpec,
    JobState,
    NotFound,
    Page,
    PlacementCode,
    PlacementFailed,
    Problem,
    RateLimited,
    Unavailable,
    ValidationFailed,
    error_from_problem,
)
from conveyor.models import _JOB_EXAMPLE
from conveyor.problems import (
    CANCEL_NOT_POSSIBLE,
    IDEMPOTENCY_CONFLICT,
    NOT_FOUND,
    PLACEMENT_FAILED,
    PROBLEM_BASE_URI,
    PROBLEM_TYPES,
    RATE_LIMITED,
    UNAVAILABLE,
    VALIDATION_ERROR,
    field_errors,
)

SDK_DIR = Path(__file__).resolve().parents[2] / "sdk"


def job_json(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(_JOB_EXAMPLE)
    data.update(changes)
    return data


def spec(**fields: Any) -> dict[str, Any]:
    return {"name": "train", "project": "EHPC-AIF-2026PG01-1147", "command": ["python", "train.py"], **fields}


def errors_of(model: type[BaseModel], data: Any) -> list[Any]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    return list(caught.value.errors())


# ---------------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------------


def test_job_round_trips_through_json() -> None:
    job = Job.model_validate_json(json.dumps(job_json()))
    assert Job.model_validate_json(job.model_dump_json()) == job
    wire = json.loads(job.model_dump_json())
    assert wire["id"] == "job_3k7vq2mzx4d5f6g7hqjw"
    assert wire["created_at"] == "2026-03-02T09:14:07Z"
    assert wire["slurm_job_id"] == 4242137
    assert job.state is JobState.RUNNING
    assert job.spec.resources.gpus_per_node == 4


def test_timestamps_are_aware_utc() -> None:
    job = Job.model_validate(job_json(created_at="2026-03-02T10:14:07+01:00", started_at=None))
    assert job.created_at == datetime(2026, 3, 2, 9, 14, 7, tzinfo=UTC)
    assert job.created_at.utcoffset() == timedelta(0)
    assert job.model_dump(mode="json")["created_at"] == "2026-03-02T09:14:07Z"
    local = datetime(2026, 3, 2, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    assert Job.model_validate(job_json(updated_at=local)).updated_at == datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize("naive", ["2026-03-02T09:14:07", datetime(2026, 3, 2, 9, 14, 7)])
def test_naive_timestamps_are_refused(naive: object) -> None:
    (error,) = errors_of(Job, job_json(created_at=naive))
    assert error["loc"] == ("created_at",)
    assert error["type"] == "timezone_aware"


def test_job_id_is_a_string_never_a_number() -> None:
    (error,) = errors_of(Job, job_json(id=4242137))
    assert error["loc"] == ("id",)
    assert error["type"] == "string_type"
    assert errors_of(Job, job_json(id="4242137"))[0]["type"] == "string_pattern_mismatch"
    # Slurm's id is the integer, in its own field.
    assert Job.model_validate(job_json(slurm_job_id=None)).slurm_job_id is None


def test_the_brokers_job_ids_fit_the_wire_type() -> None:
    """The broker mints ids; the wire type must accept every one of them (a drift check across the two)."""
    ids = pytest.importorskip("broker.jobs.ids")
    for _ in range(200):
        job_id = ids.new_job_id()
        assert Job.model_validate(job_json(id=job_id)).id == job_id
    assert ids.is_job_id(_JOB_EXAMPLE["id"])


def test_links_point_at_the_job() -> None:
    links = JobLinks.for_job("job_abc")
    assert links.model_dump() == {
        "self": "/v1/jobs/job_abc",
        "events": "/v1/jobs/job_abc/events",
        "output": "/v1/jobs/job_abc/output",
        "cancel": "/v1/jobs/job_abc/cancel",
    }
    assert JobLinks.for_job("job_abc", root="/conveyor/v1/").self == "/conveyor/v1/jobs/job_abc"


def test_event_and_dry_run_round_trip() -> None:
    event = JobEvent(
        id=3,
        job_id="job_abc",
        at=datetime(2026, 3, 2, 9, 14, 9, tzinfo=UTC),
        kind="dispatch_attempt",
        to_state=None,
        actor="dispatcher",
        detail={"factory": "it4lia", "attempt": 1, "nested": {"ok": [True, None, 1.5]}},
    )
    assert JobEvent.model_validate_json(event.model_dump_json()) == event
    dry = DryRun.model_validate(
        {
            "factory": "it4lia",
            "partition": "boost_usr_prod",
            "time_limit_min": 30,
            "reason": "only Factory with a100",
            "rendering": {
                "adapter": "cli",
                "site_user": "a08trc01",
                "script": "#!/bin/bash\npython train.py\n",
                "payload": ["sbatch", "--parsable", "--time=30"],
            },
            "candidates": [{"factory": "lumi", "eligible": False, "reasons": ["no a100"]}],
        }
    )
    assert DryRun.model_validate_json(dry.model_dump_json()) == dry
    assert dry.candidates[0].score is None


@pytest.mark.parametrize("model", [Job, JobEvent, FactoryView, JobSpec, Problem])
def test_schema_examples_are_valid(model: type[BaseModel]) -> None:
    """The examples shown in the OpenAPI docs must be answers the models accept."""
    schema = model.model_json_schema()
    assert schema["examples"]
    for example in schema["examples"]:
        model.model_validate(example)


def test_answer_fields_are_described_for_openapi() -> None:
    props = Job.model_json_schema()["properties"]
    undescribed = [name for name, prop in props.items() if "description" not in prop and name != "links"]
    assert undescribed == []


async def test_models_serve_as_fastapi_request_and_response_models() -> None:
    """The server builds its OpenAPI schema from these models; query models refuse unknown parameters."""
    app = FastAPI()

    @app.get("/v1/jobs")
    def list_jobs(query: Annotated[JobQuery, Query()]) -> JobList:
        assert query.state == [JobState.QUEUED, JobState.RUNNING]
        return JobList(items=[Job.model_validate(job_json())])

    @app.post("/v1/jobs", status_code=201)
    def submit(spec: JobSpec) -> Job:
        return Job.model_validate(job_json(spec=spec.model_dump()))

    @app.get("/v1/factories")
    def factories() -> list[FactoryView]:
        return []

    @app.post("/v1/jobs/dry-run")
    def dry_run(spec: JobSpec) -> DryRun:
        raise NotImplementedError

    schemas = app.openapi()["components"]["schemas"]
    assert {"Job", "JobSpec", "JobList", "FactoryView", "DryRun", "JobState"} <= set(schemas)
    assert schemas["Job"]["properties"]["id"]["type"] == "string"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://conveyor") as client:
        params = {"state": ["queued", "running"], "label": "team=nlp"}
        listed = await client.get("/v1/jobs", params=params)
        assert listed.status_code == 200
        assert JobList.model_validate_json(listed.text).items[0].created_at.tzinfo is UTC
        assert (await client.get("/v1/jobs", params={"stat": "queued"})).status_code == 422
        created = await client.post("/v1/jobs", json=spec(labels={"team": "nlp"}))
        assert created.status_code == 201
        assert created.json()["created_at"] == "2026-03-02T09:14:07Z"


# ---------------------------------------------------------------------------------------------------
# What the client sends is strict
# ---------------------------------------------------------------------------------------------------


def test_unknown_spec_fields_are_refused_by_name() -> None:
    (error,) = errors_of(JobSpec, spec(gpus=4))
    assert error["loc"] == ("gpus",)
    assert error["type"] == "extra_forbidden"
    (error,) = errors_of(JobSpec, spec(resources={"gpus": 4}))
    assert error["loc"] == ("resources", "gpus")


@pytest.mark.parametrize("field", ["array", "dependency"])
def test_planned_features_are_refused_by_name(field: str) -> None:
    (error,) = errors_of(JobSpec, spec(**{field: "x"}))
    assert repr(field) in error["msg"]
    assert "not supported yet" in error["msg"]


@pytest.mark.parametrize("field", ["image", "container_image"])
def test_an_image_outside_container_is_refused_with_where_it_goes(field: str) -> None:
    (error,) = errors_of(JobSpec, spec(**{field: "/opt/images/pytorch.sif"}))
    assert error["msg"] == f"Value error, {field!r} is not a field of the job spec: use container.image"


@pytest.mark.parametrize(
    "payload", [{}, {"script": "#!/bin/bash\necho hi\n", "command": ["echo", "hi"]}], ids=["neither", "both"]
)
def test_exactly_one_of_script_or_command(payload: dict[str, Any]) -> None:
    data = {"name": "train", "project": "P1", **payload}
    (error,) = errors_of(JobSpec, data)
    assert "exactly one of 'script' or 'command'" in error["msg"]
    assert JobSpec.model_validate({"name": "t", "project": "P1", "script": "#!/bin/bash\necho hi\n"}).command is None


@pytest.mark.parametrize("name", ["SLURM_JOB_ID", "slurm_cpus", "SBATCH_TIMELIMIT", "SRUN_CPUS_PER_TASK"])
def test_slurm_environment_is_refused(name: str) -> None:
    (error,) = errors_of(JobSpec, spec(environment={name: "1"}))
    assert "reserved for Slurm" in error["msg"]
    assert name in error["msg"]


@pytest.mark.parametrize("key", ["Team", "-team", "team-", "a b", "x" * 64, "", "ünï"])
def test_bad_label_keys_are_refused(key: str) -> None:
    errors = errors_of(JobSpec, spec(labels={key: "v"}))
    assert errors[0]["loc"][0] == "labels"
    assert JobSpec.model_validate(spec(labels={"team": "nlp", "ci.run/id": "42"})).labels["ci.run/id"] == "42"


def test_queries_are_strict() -> None:
    assert errors_of(JobQuery, {"stat": ["queued"]})[0]["loc"] == ("stat",)
    assert errors_of(JobQuery, {"label": ["Team=nlp"]})[0]["loc"] == ("label", 0)
    assert errors_of(JobQuery, {"limit": 501})[0]["loc"] == ("limit",)
    query = JobQuery.model_validate({"state": ["queued", "running"], "label": ["team=nlp"]})
    assert query.state == [JobState.QUEUED, JobState.RUNNING]
    assert "not both" in errors_of(EventQuery, {"after": 3, "cursor": "abc"})[0]["msg"]
    assert EventQuery(after=3).limit == 50


# ---------------------------------------------------------------------------------------------------
# What the server answers is tolerant
# ---------------------------------------------------------------------------------------------------


def test_answers_ignore_fields_a_newer_server_adds() -> None:
    data = job_json(priority=7, links={**_JOB_EXAMPLE["links"], "stream": "/v1/jobs/x/stream"})
    data["spec"] = {
        **data["spec"],
        "image": "docker://pytorch:25.01",  # refused when sent, tolerated when a newer server echoes it
        "retries": 2,
        "resources": {**data["spec"]["resources"], "gpu_memory_gb": 80},
        "placement": {"countries": ["IT"], "prefer": "cheapest"},
    }
    job = Job.model_validate_json(json.dumps(data))
    assert job.id == data["id"]
    assert "priority" not in job.model_dump()
    assert job.spec.resources.gpus_per_node == 4
    assert job.spec.placement.countries == ["IT"]
    # The same spec sent by a client is refused: strictness is only relaxed for answers.
    assert "'image'" in errors_of(JobSpec, data["spec"])[0]["msg"]
    del data["spec"]["image"]
    refused = {e["loc"] for e in errors_of(JobSpec, data["spec"])}
    assert refused == {("retries",), ("resources", "gpu_memory_gb"), ("placement", "prefer")}


def test_events_of_unknown_kinds_are_read() -> None:
    event = JobEvent.model_validate(
        {"id": 9, "job_id": "job_abc", "at": "2026-03-02T09:14:07Z", "kind": "migrated", "new": {"x": 1}}
    )
    assert event.kind == "migrated"
    assert event.detail == {}


def test_factory_view_tolerates_new_fields_and_unknown_counts() -> None:
    view = FactoryView.model_validate(
        {"id": "lumi", "name": "LUMI AI Factory", "country": "FI", "healthy": False, "energy_mix": {"hydro": 0.9}}
    )
    assert view.total_gpus is None
    assert view.free_gpus is None
    assert view.partitions == []
    assert view.queue_depth == 0


# ---------------------------------------------------------------------------------------------------
# Pages
# ---------------------------------------------------------------------------------------------------


def test_page_is_generic() -> None:
    page = JobList.model_validate({"items": [job_json(), job_json(id="job_second")], "next_cursor": "b3Blbg"})
    assert isinstance(page, Page)
    assert all(isinstance(item, Job) for item in page.items)
    assert page.items[1].id == "job_second"
    assert JobList.model_validate_json(page.model_dump_json()) == page
    assert EventList.model_validate({"items": []}).next_cursor is None
    ints = Page[int].model_validate({"items": ["1", 2], "total": 2})
    assert ints.items == [1, 2]
    assert errors_of(JobList, {"items": [{"id": "job_x"}]})[0]["loc"][:2] == ("items", 0)
    assert JobList.model_json_schema()["title"] == "JobList"


# ---------------------------------------------------------------------------------------------------
# Problems and the typed exceptions
# ---------------------------------------------------------------------------------------------------


def test_problem_types_have_stable_uris_and_defaults() -> None:
    for code, kind in PROBLEM_TYPES.items():
        assert kind.uri == PROBLEM_BASE_URI + code
        assert 400 <= kind.status <= 599
    problem = NOT_FOUND.problem("no job job_abc", instance="/v1/jobs/job_abc")
    assert problem.body() == {
        "type": "https://conveyor.eu/problems/not_found",
        "title": "Not found",
        "status": 404,
        "detail": "no job job_abc",
        "instance": "/v1/jobs/job_abc",
        "code": "not_found",
    }
    with pytest.raises(ValueError, match="does not belong"):
        NOT_FOUND.problem(code="placement_failed.no_match")


def test_problem_round_trips_and_keeps_extension_members() -> None:
    problem = PLACEMENT_FAILED.problem(
        "no Factory offers 8 x h100 for 96 h",
        code=PlacementCode.TIME_LIMIT_EXCEEDED,
        candidates=[{"factory": "bsc", "eligible": False, "reasons": ["MaxTime 72 h < 96 h"]}],
    )
    again = Problem.model_validate_json(json.dumps(problem.body()))
    assert again == problem
    assert again.model_extra == {
        "candidates": [{"factory": "bsc", "eligible": False, "reasons": ["MaxTime 72 h < 96 h"]}]
    }


@pytest.mark.parametrize(
    ("problem", "expected"),
    [
        (VALIDATION_ERROR.problem(), ValidationFailed),
        (NOT_FOUND.problem(), NotFound),
        (IDEMPOTENCY_CONFLICT.problem(), IdempotencyConflict),
        (CANCEL_NOT_POSSIBLE.problem(), CancelNotPossible),
        (PLACEMENT_FAILED.problem(code=PlacementCode.NO_MATCH), PlacementFailed),
        (RATE_LIMITED.problem(retry_after_s=3), RateLimited),
        (UNAVAILABLE.problem(), Unavailable),
        (PROBLEM_TYPES["unauthorized"].problem(), AuthError),
        (PROBLEM_TYPES["forbidden"].problem(), AuthError),
        (PROBLEM_TYPES["internal_error"].problem(), ConveyorError),
        (PROBLEM_TYPES["payload_too_large"].problem(), ValidationFailed),
        (PROBLEM_TYPES["headers_too_large"].problem(code="headers_too_large.field"), ValidationFailed),
        (PROBLEM_TYPES["malformed_request"].problem(code="malformed_request.http"), ValidationFailed),
        (PROBLEM_TYPES["unsupported_media_type"].problem(code="unsupported_media_type.charset"), ValidationFailed),
        # no code we know: the status family decides
        (Problem(status=400), ValidationFailed),
        (Problem(status=409, code="some_future_code"), Conflict),
        (Problem(status=410), NotFound),
        (Problem(status=413), ValidationFailed),
        (Problem(status=415), ValidationFailed),
        (Problem(status=431), ValidationFailed),
        (Problem.from_status(502), Unavailable),
        (Problem.from_status(504), Unavailable),
        (Problem(status=418), ConveyorError),
        (Problem(), ConveyorError),
    ],
)
def test_problems_map_to_typed_exceptions(problem: Problem, expected: type[ConveyorError]) -> None:
    error = error_from_problem(problem)
    assert type(error) is expected
    assert error.problem is problem


def test_code_wins_over_status() -> None:
    # placement_failed is a 422, yet not a validation error: the request was valid, no Factory fits it
    error = error_from_problem(PLACEMENT_FAILED.problem())
    assert error.status == 422
    assert isinstance(error, PlacementFailed)
    assert not isinstance(error, ValidationFailed)
    conflict = error_from_problem(IDEMPOTENCY_CONFLICT.problem())
    assert conflict.status == 409
    assert isinstance(conflict, IdempotencyConflict)


def test_retry_information() -> None:
    limited = error_from_problem(RATE_LIMITED.problem("slow down", retry_after_s=7))
    assert limited.retryable
    assert limited.retry_after == 7
    assert error_from_problem(UNAVAILABLE.problem()).retryable
    assert not error_from_problem(NOT_FOUND.problem()).retryable
    assert not error_from_problem(PLACEMENT_FAILED.problem()).retryable


def test_exception_messages_say_what_and_where() -> None:
    error = error_from_problem(NOT_FOUND.problem("no job job_abc", instance="/v1/jobs/job_abc"))
    assert str(error) == "404 not_found: no job job_abc (/v1/jobs/job_abc)"
    assert str(error_from_problem(Problem())) == "error"
    assert str(error_from_problem(Problem.from_status(502))) == "502: Bad Gateway"


def test_exceptions_pickle() -> None:
    error = error_from_problem(RATE_LIMITED.problem("slow down", retry_after_s=7))
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is RateLimited
    assert again.problem == error.problem
    assert str(again) == str(error)


def test_validation_failures_name_fields_without_echoing_inputs() -> None:
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(spec(gpus=4, environment={"SLURM_TOKEN": "s3cret"}))
    problem = VALIDATION_ERROR.problem("2 fields are invalid", errors=field_errors(caught.value.errors()))
    body = json.dumps(problem.body())
    assert "s3cret" not in body
    error = error_from_problem(Problem.model_validate_json(body))
    assert isinstance(error, ValidationFailed)
    assert sorted(tuple(e.loc) for e in error.errors) == [("environment",), ("gpus",)]
    assert {e.type for e in error.errors} == {"extra_forbidden", "value_error"}


def test_placement_failures_carry_sub_codes_and_candidates() -> None:
    problem = PLACEMENT_FAILED.problem(
        "no Factory offers a100 in FR",
        code=PlacementCode.COUNTRY_EXCLUDED,
        candidates=[
            {"factory": "it4lia", "eligible": False, "reasons": ["country IT not allowed"]},
            {"factory": "lumi", "eligible": False, "reasons": ["no a100"], "future": 1},
        ],
    )
    error = error_from_problem(Problem.model_validate_json(json.dumps(problem.body())))
    assert isinstance(error, PlacementFailed)
    assert error.code == "placement_failed.country_excluded"
    assert error.status == 422
    assert [c.factory for c in error.candidates] == ["it4lia", "lumi"]
    unreadable = error_from_problem(PLACEMENT_FAILED.problem(candidates="oops"))
    assert isinstance(unreadable, PlacementFailed)
    assert unreadable.candidates == []
    assert all(code.startswith("placement_failed.") for code in PlacementCode)


# ---------------------------------------------------------------------------------------------------
# The SDK stands alone
# ---------------------------------------------------------------------------------------------------

_PROBE = """
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
sys.path.append(sys.argv[2])
for name in sys.argv[3].split(","):
    importlib.import_module(name)
print(json.dumps({"modules": sorted(sys.modules), "file": getattr(sys.modules.get("conveyor"), "__file__", None)}))
"""


def _imported(*names: str) -> tuple[set[str], str | None]:
    """The top-level modules loaded by importing ``names`` in an interpreter started with ``-I -S``: no user
    site, no current directory, no .pth files (so no editable install of the broker); the path is the
    standard library, the SDK's source and site-packages, where pydantic and httpx live."""
    site_packages = sysconfig.get_paths()["purelib"]
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _PROBE, str(SDK_DIR), site_packages, ",".join(names)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    seen = json.loads(done.stdout)
    return {name.split(".")[0] for name in seen["modules"]}, seen["file"]


def test_sdk_imports_nothing_beyond_httpx_and_pydantic() -> None:
    """Whatever httpx and pydantic load themselves (httpx loads its optional CLI's packages where they are
    installed) is theirs; the SDK, client and CLI included, adds nothing to it but itself. A venv holding
    only the SDK is tested live in tests/sdk/test_standalone_install.py."""
    baseline, _ = _imported("httpx", "pydantic")
    loaded, file = _imported("conveyor", "conveyor.models", "conveyor.problems", "conveyor.client", "conveyor.cli")
    assert file is not None
    assert Path(file).is_relative_to(SDK_DIR)
    added = {name for name in loaded - baseline - set(sys.stdlib_module_names) if not name.startswith("_")}
    # pydantic's own dependencies, which it imports lazily once a model uses constrained fields
    assert added - {"annotated_types", "typing_extensions", "typing_inspection"} == {"conveyor"}, added
    assert not loaded & {"fastapi", "starlette", "sqlalchemy", "broker", "app", "slurm_adapters", "yaml"}


def test_sdk_declares_only_httpx_and_pydantic() -> None:
    project = tomllib.loads((SDK_DIR / "pyproject.toml").read_text())["project"]
    names = {dep.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip() for dep in project["dependencies"]}
    assert names == {"httpx", "pydantic"}


def test_output_unavailable_and_drain_requests_are_typed() -> None:
    from conveyor import DrainRequest, OutputUnavailable
    from conveyor.problems import OUTPUT_UNAVAILABLE, error_from_problem

    error = error_from_problem(OUTPUT_UNAVAILABLE.problem("pending", code="output_unavailable.not_started"))
    assert isinstance(error, OutputUnavailable)
    assert error.status == 409
    with pytest.raises(ValidationError):
        DrainRequest.model_validate({"reason": "a\nb"})
