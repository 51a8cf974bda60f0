"""slurmrestd codecs and error mapping, on real bodies.

The fixtures in data/rest/ are real: the samples from /work/shared/slurmrestd-openapi/samples and answers
captured from the lab's 22.05.8 (v0.0.38), 24.11.5 and 26.05.5 (v0.0.42) daemons, including their error
bodies. submit-schema-keys.json lists the property names of each version's submit schema, taken from the
OpenAPI specs those daemons served.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from slurm_adapters.base import (
    AuthenticationError,
    ClusterUnavailable,
    InvalidRequest,
    JobNotFound,
    JobSpec,
    JobState,
    SiteError,
    SlurmError,
)
from slurm_adapters.rest.codec import SlurmMessage, default_partition_names, errors_of
from slurm_adapters.rest.errors import AMBIGUOUS_SLOW_S, Operation, classify
from slurm_adapters.rest.v0038 import V0038
from slurm_adapters.rest.v0042 import V0042, number
from slurm_adapters.safety import DIRECTIVE_FENCE, fenced_script, job_environment

DATA = Path(__file__).parent / "data" / "rest"
V38 = V0038()
V42 = V0042()


@cache
def _load(name: str) -> Any:
    return json.loads((DATA / name).read_text())


def body(name: str) -> dict[str, Any]:
    """A captured answer's body (captures are {"status", "body"}; shared samples are the body itself)."""
    doc = _load(name)
    return dict(doc["body"]) if "status" in doc else dict(doc)


def status(name: str) -> int:
    return int(_load(name)["status"])


def full_spec(**overrides: Any) -> JobSpec:
    values: dict[str, Any] = {
        "name": "train",
        "script": "#!/bin/bash\n#SBATCH --hold\nsrun python train.py\n",
        "working_directory": "/scratch/alice/run1",
        "tag": "cvy-0001",
        "stdout": "/scratch/alice/run1/out.txt",
        "stderr": "/scratch/alice/run1/err.txt",
        "environment": {"FOO": "foo value with spaces", "BAR": "b=a=r"},
        "partition": "gpu",
        "account": "ehpc-aif",
        "qos": "normal",
        "nodes": 2,
        "tasks": 8,
        "cpus_per_task": 4,
        "memory_mb": 6000,
        "gpus_per_node": 2,
        "gpu_type": "a100",
        "time_limit_min": 90,
    }
    values.update(overrides)
    return JobSpec(**values)


def render(codec: V0038 | V0042, spec: JobSpec) -> dict[str, Any]:
    return codec.render_submit(spec, fenced_script(spec.script), job_environment(spec))


# --- rendering ------------------------------------------------------------------------------------


def test_v0038_body_carries_every_spec_field() -> None:
    spec = full_spec()
    rendered = render(V38, spec)
    assert set(rendered) == {"job", "script"}
    assert rendered["script"].splitlines()[:2] == ["#!/bin/bash", DIRECTIVE_FENCE]
    assert rendered["job"] == {
        "name": "train",
        "comment": "cvy-0001",
        "current_working_directory": "/scratch/alice/run1",
        "standard_output": "/scratch/alice/run1/out.txt",
        "standard_error": "/scratch/alice/run1/err.txt",
        "environment": {"PATH": "/usr/local/bin:/usr/bin:/bin", "FOO": "foo value with spaces", "BAR": "b=a=r"},
        "partition": "gpu",
        "account": "ehpc-aif",
        "qos": "normal",
        "nodes": 2,
        "tasks": 8,
        "cpus_per_task": 4,
        "memory_per_node": 6000,
        "gres": "gpu:a100:2",
        "time_limit": 90,
    }


def test_v0042_body_carries_every_spec_field() -> None:
    spec = full_spec()
    rendered = render(V42, spec)
    assert set(rendered) == {"job"}  # the script lives inside job on v0.0.42
    job = rendered["job"]
    assert job["script"].splitlines()[:2] == ["#!/bin/bash", DIRECTIVE_FENCE]
    assert job["environment"] == [
        "PATH=/usr/local/bin:/usr/bin:/bin",
        "FOO=foo value with spaces",
        "BAR=b=a=r",
    ]
    assert job["minimum_nodes"] == job["maximum_nodes"] == 2
    assert job["tres_per_node"] == "gres/gpu:a100:2"
    assert job["memory_per_node"] == {"set": True, "infinite": False, "number": 6000}
    assert job["time_limit"] == {"set": True, "infinite": False, "number": 90}
    expected_plain = {
        "name": "train",
        "comment": "cvy-0001",
        "current_working_directory": "/scratch/alice/run1",
        "standard_output": "/scratch/alice/run1/out.txt",
        "standard_error": "/scratch/alice/run1/err.txt",
        "partition": "gpu",
        "account": "ehpc-aif",
        "qos": "normal",
        "tasks": 8,
        "cpus_per_task": 4,
    }
    assert {key: job[key] for key in expected_plain} == expected_plain


@pytest.mark.parametrize("codec", [V38, V42], ids=lambda c: c.version)
def test_rendered_keys_are_declared_by_the_version_schema(codec: V0038 | V0042) -> None:
    keys = _load("submit-schema-keys.json")[codec.version]
    rendered = render(codec, full_spec())
    assert set(rendered) <= set(keys["submission"])
    assert set(rendered["job"]) <= set(keys["job"])


def test_rendering_follows_the_shape_of_the_real_samples() -> None:
    sample38, sample42 = body("submit-v0.0.38.json"), body("submit-v0.0.42.json")
    ours38, ours42 = render(V38, full_spec()), render(V42, full_spec())
    assert set(ours38) == set(sample38)
    assert type(ours38["job"]["environment"]) is type(sample38["job"]["environment"]) is dict
    assert set(ours42) == set(sample42)
    assert type(ours42["job"]["environment"]) is type(sample42["job"]["environment"]) is list


@pytest.mark.parametrize("codec", [V38, V42], ids=lambda c: c.version)
def test_unset_options_are_left_to_slurm(codec: V0038 | V0042) -> None:
    spec = JobSpec(name="n", script="true", working_directory="/w", tag="t")
    job = render(codec, spec)["job"]
    for absent in ("partition", "account", "qos", "memory_per_node", "time_limit", "standard_output"):
        assert absent not in job
    assert "gres" not in job
    assert "tres_per_node" not in job


def test_untyped_gpu_request() -> None:
    spec = full_spec(gpu_type=None, gpus_per_node=1)
    assert render(V38, spec)["job"]["gres"] == "gpu:1"
    assert render(V42, spec)["job"]["tres_per_node"] == "gres/gpu:1"


# --- jobs -----------------------------------------------------------------------------------------


def test_parse_v0038_sample_job() -> None:
    (record,) = V38.parse_jobs(body("job-get-v0.0.38.json"))
    assert record.job_id == 2065
    assert record.state is JobState.COMPLETED
    assert record.raw_state == "COMPLETED"
    assert (record.exit_code, record.signal) == (0, 0)
    assert record.reason is None
    assert record.tag is None  # empty comment
    assert record.user == "alice"
    assert record.name == "rest-hello"
    assert record.partition == "debug"
    assert record.nodes == "HOSTNAME"
    assert record.time_limit_min == 5
    assert record.submit_time == datetime.fromtimestamp(1795624694, UTC)
    assert record.end_time == datetime.fromtimestamp(1795624695, UTC)
    # 22.05 leaves %j unexpanded and stderr empty (= stdout)
    assert record.stdout == "/tmp/slurmlab/c1/jobs/rest-2065.out"
    assert record.stderr == record.stdout
    assert dict(record.allocated_tres) == {"cpu": "1", "node": "1", "billing": "1"}


def test_parse_v0042_sample_job() -> None:
    (record,) = V42.parse_jobs(body("job-get-v0.0.42.json"))
    assert record.job_id == 2
    assert record.state is JobState.COMPLETED
    assert record.raw_state == "COMPLETED"
    assert (record.exit_code, record.signal) == (0, 0)
    assert record.user == "alice"
    assert record.time_limit_min is None  # {"infinite": true}
    assert record.start_time == datetime.fromtimestamp(1795625312, UTC)
    assert record.stdout == record.stderr == "/slurmlab/c4/jobs/rest-2.out"
    assert dict(record.allocated_tres) == {"cpu": "1", "node": "1", "billing": "1"}


def test_parse_v0042_cancelled_job_reports_the_signal() -> None:
    (record,) = V42.parse_jobs(body("v0042-job-cancelled.json"))
    assert record.state is JobState.CANCELLED
    assert (record.exit_code, record.signal) == (0, 15)
    assert (record.tag or "").startswith("adhoc-")


def _v38_job(**fields: Any) -> dict[str, Any]:
    raw = dict(body("job-get-v0.0.38.json")["jobs"][0])
    raw.update(fields)
    return raw


@pytest.mark.parametrize(
    ("state", "raw_status", "expected"),
    [
        ("FAILED", 3 << 8, (3, 0)),  # exit 3, as scontrol's ExitCode=3:0
        ("CANCELLED", 15, (0, 15)),  # killed by SIGTERM: ExitCode=0:15
        ("TIMEOUT", (1 << 8) | 9, (1, 9)),
        ("RUNNING", 0, (None, None)),  # no exit code before the end
        ("PENDING", 0, (None, None)),
    ],
)
def test_v0038_exit_code_is_a_wait_status(state: str, raw_status: int, expected: tuple[int | None, ...]) -> None:
    record = V38.parse_job(_v38_job(job_state=state, exit_code=raw_status))
    assert record.state is JobState[state]
    assert (record.exit_code, record.signal) == expected


def test_v0038_pending_job_and_defaults() -> None:
    record = V38.parse_job(
        _v38_job(
            job_state="PENDING",
            state_reason="PartitionTimeLimit",
            start_time=0,
            end_time=0,
            comment="cvy-9",
            nodes="",
            standard_output="",
            time_limit=None,
            batch_host="",
        )
    )
    assert record.never_starts
    assert record.start_time is None
    assert record.end_time is None
    assert record.nodes is None
    assert record.tag == "cvy-9"
    assert record.time_limit_min is None
    # sbatch's default output file, in the job's working directory
    assert record.stdout == record.stderr == "/tmp/slurmlab/c1/jobs/slurm-2065.out"


def test_v0042_state_flags_and_wrapped_numbers() -> None:
    raw = dict(body("job-get-v0.0.42.json")["jobs"][0])
    raw["job_state"] = ["CANCELLED", "COMPLETING"]
    raw["time_limit"] = {"set": True, "infinite": False, "number": 30}
    raw["end_time"] = {"set": False, "infinite": False, "number": 0}
    record = V42.parse_job(raw)
    assert record.state is JobState.COMPLETING  # as scontrol says: the exit code is not final yet
    assert record.exit_code is None
    assert record.raw_state == "CANCELLED,COMPLETING"
    raw["job_state"] = ["CANCELLED"]
    record = V42.parse_job(raw)
    assert record.state is JobState.CANCELLED
    assert record.time_limit_min == 30
    assert record.end_time is None
    raw["job_state"] = ["RUNNING"]
    assert V42.parse_job(raw).exit_code is None
    assert number({"set": True, "infinite": True, "number": 5}) is None
    assert number(7) == 7
    assert number(True) is None


def test_submit_responses() -> None:
    assert V38.parse_submit(body("submit-response-v0.0.38.json")) == 2065
    assert V42.parse_submit(body("submit-response-v0.0.42.json")) == 2
    assert V38.parse_submit(body("v0038-submit-bad-partition.json")) is None
    assert V42.parse_submit({"job_id": 0}) is None


def test_release_from_meta() -> None:
    assert V38.release(body("job-get-v0.0.38.json")) == "22.05.8"
    assert V42.release(body("job-get-v0.0.42.json")) == "24.11.5"
    assert V42.release(body("v0045-partitions-2605.json")) == "26.05.5"
    assert V42.release({}) is None


# --- cluster description --------------------------------------------------------------------------


def test_v0038_nodes_and_partitions() -> None:
    nodes = V38.parse_nodes(body("v0038-nodes.json"))
    by_name = {n.name: n for n in nodes}
    assert set(by_name) == {"cn1", "cn2", "gn1", "gn2"}
    assert dict(by_name["gn1"].gpus) == {"a100": 4}
    assert dict(by_name["gn1"].gpus_used) == {"a100": 0}
    assert dict(by_name["cn1"].gpus_used) == {}  # Slurm prints "gpu:0" for nodes without GPUs
    assert by_name["cn1"].partitions == ("cpu",)
    assert by_name["gn1"].memory_mb == 16000
    partitions = {p.name: p for p in V38.parse_partitions(body("v0038-partitions.json"), nodes)}
    cpu, gpu = partitions["cpu"], partitions["gpu"]
    assert (cpu.default, cpu.max_time_min, cpu.default_time_min) == (True, 60, 10)
    assert (gpu.default, gpu.max_time_min, gpu.default_time_min) == (False, 120, 30)
    assert sorted(gpu.nodes) == ["gn1", "gn2"]
    assert dict(gpu.total_gpus) == {"a100": 8}
    assert gpu.total_cpus == 16
    assert gpu.state == "UP"


def test_v0038_infinite_max_time() -> None:
    raw = body("v0038-partitions.json")
    raw["partitions"] = [dict(raw["partitions"][0], max_time_limit=-1)]
    (part,) = V38.parse_partitions(raw, [])
    assert part.max_time_min is None


def test_v0042_nodes_and_partitions() -> None:
    nodes = V42.parse_nodes(body("v0042-nodes.json"))
    by_name = {n.name: n for n in nodes}
    assert dict(by_name["gn1"].gpus) == {"h100": 2}
    assert by_name["gn1"].state == "IDLE"
    assert by_name["cn1"].cpus == 4
    partitions = {p.name: p for p in V42.parse_partitions(body("v0042-partitions.json"), nodes)}
    assert (partitions["cpu"].max_time_min, partitions["cpu"].default_time_min) == (45, 10)
    assert (partitions["gpu"].max_time_min, partitions["gpu"].default_time_min) == (90, 15)
    assert dict(partitions["gpu"].total_gpus) == {"h100": 2}
    assert partitions["gpu"].nodes == ("gn1",)
    assert not any(p.default for p in partitions.values())  # v0.0.42 has no such flag
    assert V42.partition_flags_path is not None


def test_default_partition_from_newer_flags() -> None:
    assert default_partition_names(body("v0045-partitions-2605.json")) == {"cpu"}
    assert default_partition_names(body("v0038-partitions.json")) == {"cpu"}
    assert default_partition_names(body("v0042-partitions.json")) == set()


# --- errors ---------------------------------------------------------------------------------------


def classify_capture(name: str, operation: Operation, elapsed_s: float = 0.02) -> SlurmError | None:
    doc = body(name)
    codec = V42 if name.startswith("v0042") else V38
    messages = errors_of(doc) + (codec.signal_errors(doc) if operation == "cancel" else [])
    return classify(cluster="c", operation=operation, status=status(name), messages=messages, elapsed_s=elapsed_s)


@pytest.mark.parametrize(
    ("capture", "operation", "expected", "words"),
    [
        ("v0038-submit-bad-partition.json", "submit", InvalidRequest, "Invalid partition name specified"),
        ("v0042-submit-bad-partition-2605.json", "submit", InvalidRequest, "Invalid partition name specified"),
        ("v0038-get-unknown-job.json", "get", JobNotFound, "Invalid job id specified"),
        ("v0042-get-unknown-job.json", "get", JobNotFound, "Invalid job id specified"),
        ("v0038-delete-unknown-job.json", "cancel", JobNotFound, "Invalid job id"),
        ("v0042-delete-unknown-job-in-range.json", "cancel", JobNotFound, "Invalid job id"),  # HTTP 200!
        ("v0038-delete-denied.json", "cancel", InvalidRequest, "Access/permission denied"),
        ("v0042-jobs-bad-token.json", "list", AuthenticationError, "Protocol authentication error"),
        # 22.05 hides a rejected token behind -1 / 5005; a fast answer is a rejection
        ("v0038-jobs-bad-token.json", "list", AuthenticationError, "Failed while looking for jobs"),
        ("v0038-ping-bad-token.json", "probe", AuthenticationError, "slurmctld config is unable to load"),
        ("v0038-submit-bad-token.json", "submit", AuthenticationError, "Zero Bytes"),
    ],
)
def test_captured_errors_map_to_typed_errors(
    capture: str, operation: Operation, expected: type[SlurmError], words: str
) -> None:
    error = classify_capture(capture, operation)
    assert type(error) is expected, error
    assert words in error.message
    assert error.errors
    assert error.cluster == "c"


def test_statuses_do_not_decide_alone() -> None:
    assert status("v0038-submit-bad-partition.json") == status("v0038-get-unknown-job.json") == 500
    assert status("v0042-delete-unknown-job-in-range.json") == 200


def test_cancelling_a_finished_job_is_fine() -> None:
    assert status("v0042-delete-finished-job.json") == 200
    assert classify_capture("v0042-delete-finished-job.json", "cancel") is None
    already_done = [SlurmMessage(2021, "Job/step already completing or completed")]
    assert classify(cluster="c", operation="cancel", status=500, messages=already_done) is None


def test_ambiguous_22_05_answers_that_took_long_mean_unreachable() -> None:
    slow = AMBIGUOUS_SLOW_S + 6
    listed = classify_capture("v0038-jobs-bad-token.json", "list", elapsed_s=slow)
    assert isinstance(listed, ClusterUnavailable)
    assert not listed.maybe_applied
    submitted = classify_capture("v0038-submit-bad-token.json", "submit", elapsed_s=slow)
    assert isinstance(submitted, ClusterUnavailable)
    assert submitted.maybe_applied  # slurmctld may have taken the job before the line went quiet


@pytest.mark.parametrize(
    ("number", "text", "maybe_applied"),
    [
        (1800, "Unable to contact slurm controller (connect failure)", False),
        (1001, "Communication connection failure", False),
        (5004, "Socket timed out on send/recv operation", True),
        (1802, "Communication receive failure", True),
        (None, "Connection refused", False),
    ],
)
def test_unreachable_controller(number: int | None, text: str, maybe_applied: bool) -> None:
    messages = [SlurmMessage(number, text, "Batch job submission failed")]
    error = classify(cluster="c", operation="submit", status=500, messages=messages)
    assert isinstance(error, ClusterUnavailable)
    assert error.maybe_applied is maybe_applied
    read = classify(cluster="c", operation="get", status=500, messages=messages)
    assert isinstance(read, ClusterUnavailable)
    assert not read.maybe_applied  # only a state-changing request can have been applied


@pytest.mark.parametrize(
    ("status_code", "operation", "expected"),
    [
        (200, "get", None),
        (401, "health", AuthenticationError),
        (511, "submit", AuthenticationError),
        (404, "get", ClusterUnavailable),  # no Slurm error: the path itself is not served
        (502, "list", ClusterUnavailable),
        (400, "submit", InvalidRequest),
        (400, "list", SiteError),
    ],
)
def test_status_without_slurm_errors(status_code: int, operation: Operation, expected: type[SlurmError] | None) -> None:
    error = classify(cluster="c", operation=operation, status=status_code, messages=[])
    if expected is None:
        assert error is None
    else:
        assert type(error) is expected


def test_submit_server_error_without_body_may_have_been_applied() -> None:
    error = classify(cluster="c", operation="submit", status=500, messages=[])
    assert isinstance(error, ClusterUnavailable)
    assert error.maybe_applied


def test_operator_denied_is_a_credential_problem_not_the_jobs() -> None:
    messages = [SlurmMessage(2002, "Access/permission denied")]
    assert type(classify(cluster="c", operation="list", status=500, messages=messages)) is AuthenticationError
    assert type(classify(cluster="c", operation="cancel", status=500, messages=messages)) is InvalidRequest


def test_errors_of_reads_every_number_key() -> None:
    doc = {
        "errors": [
            {"error_code": 2051, "error": "Requested time limit is invalid"},
            {"errno": 2000, "error": "Invalid partition name specified"},
            {"error_number": 1007, "error": "Protocol authentication error", "description": "Unable to query"},
            {"error_number": 0},  # empty entries are noise
            "not a dict",
        ]
    }
    messages = errors_of(doc)
    assert [m.number for m in messages] == [2051, 2000, 1007]
    assert messages[2].text == "Protocol authentication error (Unable to query)"
    assert errors_of({"errors": None}) == []
