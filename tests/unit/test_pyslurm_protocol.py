"""The pyslurm worker protocol: every result type and every typed error survives the trip; garbage does not."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from slurm_adapters.codec import (
    ERROR_TYPES,
    ProtocolError,
    cluster_info_from_json,
    cluster_info_to_json,
    health_from_json,
    health_to_json,
    record_from_json,
    record_to_json,
    records_from_json,
)
from slurm_adapters.errors import (
    AuthenticationError,
    ClusterUnavailable,
    InvalidRequest,
    JobNotFound,
    OutputUnavailable,
    SiteError,
    SlurmError,
    SubmitWindowClosed,
    UnsafeRequest,
)
from slurm_adapters.pyslurm.protocol import (
    PROTOCOL,
    Hello,
    decode_request,
    decode_response,
    encode_error,
    encode_request,
    encode_result,
    hello_from_json,
    hello_to_json,
)
from slurm_adapters.records import ClusterInfo, Health, JobRecord, NodeInfo, PartitionInfo, SlurmJobState

RECORD = JobRecord(
    job_id=42,
    tag="conveyor-42",
    state=SlurmJobState.FAILED,
    raw_state="FAILED",
    reason="NonZeroExitCode",
    exit_code=3,
    signal=0,
    submit_time=datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC),
    start_time=datetime(2026, 11, 24, 10, 0, 1, tzinfo=UTC),
    end_time=None,
    nodes="cn1",
    user="alice",
    name="train \u2028 with a line separator",
    partition="cpu",
    time_limit_min=10,
    stdout="/scratch/42.out",
    stderr=None,
    allocated_tres={"cpu": "2", "gres/gpu:a100": "1"},
    elapsed_s=61,
)

INFO = ClusterInfo(
    cluster="delta",
    release="26.05.5",
    partitions=(
        PartitionInfo(
            name="gpu",
            default=False,
            state="UP",
            max_time_min=None,
            default_time_min=30,
            nodes=("gn1",),
            total_cpus=8,
            total_gpus={"a100": 2},
        ),
    ),
    nodes=(
        NodeInfo(
            name="gn1",
            state="MIXED",
            cpus=8,
            alloc_cpus=2,
            memory_mb=16000,
            partitions=("gpu",),
            gpus={"a100": 2},
            gpus_used={"a100": 1},
        ),
    ),
)


def through_the_wire(result: Any) -> Any:
    """Encode as the worker does, decode as the parent does."""
    line = encode_result(result)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    return decode_response(line)


def test_request_round_trip() -> None:
    request = decode_request(encode_request("get_job", {"job_id": 7}))
    assert (request.op, request.args) == ("get_job", {"job_id": 7})
    assert decode_request(encode_request("health")).args == {}
    with pytest.raises(ValueError, match="unknown operation"):
        encode_request("exec", {})


def test_record_round_trip_is_exact() -> None:
    assert record_from_json(through_the_wire(record_to_json(RECORD))) == RECORD
    assert records_from_json(through_the_wire([record_to_json(RECORD)] * 2)) == [RECORD, RECORD]


def test_a_record_from_a_sender_that_knows_no_elapsed_time_has_none() -> None:
    """elapsed_s came later than the other fields: an older agent's record lacks it, and says nothing of it."""
    older = record_to_json(RECORD)
    del older["elapsed_s"]
    assert record_from_json(through_the_wire(older)) == replace(RECORD, elapsed_s=None)


def test_cluster_info_and_health_round_trip() -> None:
    assert cluster_info_from_json(through_the_wire(cluster_info_to_json(INFO))) == INFO
    health = Health(ok=True, detail="answered", release=None)
    assert health_from_json(through_the_wire(health_to_json(health))) == health
    hello = Hello(protocol=PROTOCOL, pyslurm="25.11.2", pid=123)
    assert hello_from_json(through_the_wire(hello_to_json(hello))) == hello


def test_a_partition_whose_default_flag_the_api_cannot_tell_survives_the_wire() -> None:
    """slurmrestd's v0.0.40-42 (all Slurm 24.11 serves) carry no default flag: None, which the agent reports."""
    unknown = replace(INFO, partitions=tuple(replace(p, default=None) for p in INFO.partitions))
    assert cluster_info_from_json(through_the_wire(cluster_info_to_json(unknown))) == unknown


ERRORS: list[SlurmError] = [
    InvalidRequest("Invalid partition name specified", errors=["Invalid partition name specified"]),
    UnsafeRequest("refusing a submit without a non-root user_id"),
    ClusterUnavailable("Socket timed out on send/recv operation", errors=["x"], maybe_applied=True),
    ClusterUnavailable("Unable to contact slurm controller", maybe_applied=False),
    SubmitWindowClosed("submit of attempt job_x/1 not started: its call deadline would end after not_after"),
    AuthenticationError("Protocol authentication error"),
    JobNotFound("Invalid job id specified"),
    OutputUnavailable("job 1 has no stdout file"),
    SiteError("Something odd"),
]


@pytest.mark.parametrize("error", ERRORS, ids=[type(e).__name__ + "-" + e.message[:20] for e in ERRORS])
def test_typed_errors_are_raised_again_as_themselves(error: SlurmError) -> None:
    with pytest.raises(SlurmError) as caught:
        decode_response(encode_error(error), cluster="delta")
    raised = caught.value
    assert type(raised) is type(error)
    assert raised.message == error.message
    assert raised.errors == error.errors
    assert raised.cluster == "delta"
    if isinstance(error, ClusterUnavailable):
        assert isinstance(raised, ClusterUnavailable)
        assert raised.maybe_applied is error.maybe_applied


def test_every_contract_error_class_is_known() -> None:
    def subclasses(cls: type[SlurmError]) -> set[type[SlurmError]]:
        found = {cls}
        for sub in cls.__subclasses__():
            if sub.__module__ == "slurm_adapters.errors":
                found |= subclasses(sub)
        return found

    assert set(ERROR_TYPES.values()) == subclasses(SlurmError)


def test_a_private_error_subclass_travels_as_its_contract_class() -> None:
    class Refined(JobNotFound):
        pass

    with pytest.raises(JobNotFound) as caught:
        decode_response(encode_error(Refined("gone")))
    assert type(caught.value) is JobNotFound


def test_an_unknown_error_name_is_never_instantiated() -> None:
    line = json.dumps({"ok": False, "error": {"type": "SystemExit", "message": "bye", "errors": []}}) + "\n"
    with pytest.raises(SiteError, match="unknown error type 'SystemExit': bye"):
        decode_response(line.encode())


@pytest.mark.parametrize(
    "line",
    [
        b'{"ok": true, "result": 1}',  # no newline: the worker died mid-line
        b"this is not json\n",
        b"[1, 2]\n",
        b'{"result": 1}\n',
        b'{"ok": "yes", "result": 1}\n',
        b'{"ok": true}\n',
        b'{"ok": false, "error": "boom"}\n',
        b'{"ok": false, "error": {"type": "SiteError", "errors": []}}\n',
        b'{"ok": false, "error": {"type": "SiteError", "message": "m", "errors": [1]}}\n',
    ],
)
def test_garbage_is_a_protocol_error(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_response(line)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("job_id", "42"),
        ("job_id", True),
        ("state", "SLEEPING"),
        ("submit_time", "yesterday"),
        ("allocated_tres", {"cpu": 2}),
        ("tag", 5),
    ],
)
def test_a_malformed_record_is_a_protocol_error(field: str, value: object) -> None:
    data = record_to_json(RECORD)
    data[field] = value
    with pytest.raises(ProtocolError, match=field):
        record_from_json(data)
    del data[field]
    with pytest.raises(ProtocolError, match="missing"):
        record_from_json(data)


def test_a_malformed_cluster_info_is_a_protocol_error() -> None:
    data = cluster_info_to_json(INFO)
    data["nodes"][0]["gpus"] = {"a100": "2"}
    with pytest.raises(ProtocolError, match="gpus"):
        cluster_info_from_json(data)
    with pytest.raises(ProtocolError):
        health_from_json({"ok": 1, "detail": "x", "release": None})


@pytest.mark.parametrize(
    "line",
    [b'{"op": "exec", "args": {}}\n', b'{"op": "health", "args": []}\n', b"\n", b'{"op": "health"}'],
)
def test_bad_requests_are_protocol_errors(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_request(line)
