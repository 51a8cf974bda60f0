"""slurmrestd codecs (request bodies, submit and cancel answers) and error mapping, on real bodies.

The records in the answers (jobs, nodes, partitions) are the format modules' and tested in test_formats.py.

The fixtures in data/rest/ are real: the samples from /work/shared/slurmrestd-openapi/samples and answers
captured from the lab's 22.05.8 (v0.0.38), 24.11.5 and 26.05.5 (v0.0.42) daemons, including their error
bodies. submit-schema-keys.json lists the property names of each version's submit schema, taken from the
OpenAPI specs those daemons served.
"""

from __future__ import annotations

from typing import Any

import pytest

from slurm_adapters.environment import BASE_ENVIRONMENT
from slurm_adapters.errors import (
    AuthenticationError,
    ClusterUnavailable,
    InvalidRequest,
    JobNotFound,
    SiteError,
    SlurmError,
)
from slurm_adapters.formats.common import SlurmMessage, errors_of
from slurm_adapters.records import SlurmJobSpec
from slurm_adapters.rest.errors import AMBIGUOUS_SLOW_S, Operation, classify
from slurm_adapters.rest.v0038 import V0038
from slurm_adapters.rest.v0042 import V0042
from slurm_adapters.safety import DIRECTIVE_FENCE, fenced_script
from tests.unit.captures import rest_body, rest_capture, rest_status

V38 = V0038()
V42 = V0042()


def full_spec(**overrides: Any) -> SlurmJobSpec:
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
        "tasks_per_node": 4,
        "cpus_per_task": 4,
        "memory_mb": 6000,
        "gpus_per_node": 2,
        "gpu_type": "a100",
        "time_limit_min": 90,
        "requeue": False,
    }
    values.update(overrides)
    return SlurmJobSpec(**values)


def render(codec: V0038 | V0042, spec: SlurmJobSpec) -> dict[str, Any]:
    return codec.render_submit(spec, fenced_script(spec.script), {**BASE_ENVIRONMENT, **spec.environment})


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
        "tasks_per_node": 4,
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
    assert job["tres_per_task"] == "cpu=4"  # as sbatch sends --cpus-per-task from 24.05 on
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
        "tasks_per_node": 4,
        "cpus_per_task": 4,
        "requeue": False,
    }
    assert {key: job[key] for key in expected_plain} == expected_plain


@pytest.mark.parametrize("requeue", [True, False, None])
def test_requeue_is_sent_only_when_the_spec_says_and_never_to_22_05(requeue: bool | None) -> None:
    assert render(V42, full_spec(requeue=requeue))["job"].get("requeue", "absent") == (
        "absent" if requeue is None else requeue
    )
    assert "requeue" not in render(V38, full_spec(requeue=requeue))["job"]  # v0.0.38 ignores it


@pytest.mark.parametrize("codec", [V38, V42], ids=lambda c: c.version)
def test_rendered_keys_are_declared_by_the_version_schema(codec: V0038 | V0042) -> None:
    keys = rest_capture("submit-schema-keys.json")[codec.version]
    rendered = render(codec, full_spec())
    assert set(rendered) <= set(keys["submission"])
    assert set(rendered["job"]) <= set(keys["job"])


def test_rendering_follows_the_shape_of_the_real_samples() -> None:
    sample38, sample42 = rest_body("submit-v0.0.38.json"), rest_body("submit-v0.0.42.json")
    ours38, ours42 = render(V38, full_spec()), render(V42, full_spec())
    assert set(ours38) == set(sample38)
    assert type(ours38["job"]["environment"]) is type(sample38["job"]["environment"]) is dict
    assert set(ours42) == set(sample42)
    assert type(ours42["job"]["environment"]) is type(sample42["job"]["environment"]) is list


@pytest.mark.parametrize("codec", [V38, V42], ids=lambda c: c.version)
def test_unset_options_are_left_to_slurm(codec: V0038 | V0042) -> None:
    spec = SlurmJobSpec(name="n", script="true", working_directory="/w", tag="t")
    job = render(codec, spec)["job"]
    for absent in ("partition", "account", "qos", "memory_per_node", "time_limit", "standard_output"):
        assert absent not in job
    assert "gres" not in job
    assert "tres_per_node" not in job


def test_untyped_gpu_request() -> None:
    spec = full_spec(gpu_type=None, gpus_per_node=1)
    assert render(V38, spec)["job"]["gres"] == "gpu:1"
    assert render(V42, spec)["job"]["tres_per_node"] == "gres/gpu:1"


# --- answers to requests (the records in them: test_formats.py) -----------------------------------


def test_submit_responses() -> None:
    assert V38.parse_submit(rest_body("submit-response-v0.0.38.json")) == 2065
    assert V42.parse_submit(rest_body("submit-response-v0.0.42.json")) == 2
    assert V38.parse_submit(rest_body("v0038-submit-bad-partition.json")) is None
    assert V42.parse_submit({"job_id": 0}) is None


# --- errors ---------------------------------------------------------------------------------------


def classify_capture(name: str, operation: Operation, elapsed_s: float = 0.02) -> SlurmError | None:
    doc = rest_body(name)
    codec = V42 if name.startswith("v0042") else V38
    messages = errors_of(doc) + (codec.signal_errors(doc) if operation == "cancel" else [])
    return classify(cluster="c", operation=operation, status=rest_status(name), messages=messages, elapsed_s=elapsed_s)


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
    assert rest_status("v0038-submit-bad-partition.json") == rest_status("v0038-get-unknown-job.json") == 500
    assert rest_status("v0042-delete-unknown-job-in-range.json") == 200


def test_cancelling_a_finished_job_is_fine() -> None:
    assert rest_status("v0042-delete-finished-job.json") == 200
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
        (111, "Connection refused", False),
        # slurmctld killed while it held the request (seen in the fault tests): it may have taken the job.
        (104, "Connection reset by peer", True),
        (None, "Connection reset by peer", True),
        (32, "Broken pipe", True),
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
