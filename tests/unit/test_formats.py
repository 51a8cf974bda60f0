"""Slurm's JSON records, one parser per format, on real output of both slurmrestd and the client tools.

The same format module reads slurmrestd's answers and the tools' ``--json`` output of a release
(see :mod:`slurm_adapters.formats`); data/rest holds the daemons' answers, data/cli the tools' output.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from slurm_adapters.formats import RecordFormat, for_release, v0038, v0042
from slurm_adapters.formats.common import (
    controller_uptime_facts,
    default_partition_names,
    errors_of,
    node_state,
    number,
)
from slurm_adapters.records import SlurmJobState
from slurm_adapters.rest.v0038 import V0038
from slurm_adapters.rest.v0042 import V0042
from tests.unit.captures import cli_json, rest_body

# --- one parser per format ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("release", "fmt"),
    [((22, 5, 8), v0038), ((23, 2, 0), v0042), ((24, 11, 5), v0042), ((26, 5, 5), v0042)],
)
def test_the_tools_and_slurmrestd_share_the_parser(release: tuple[int, int, int], fmt: RecordFormat) -> None:
    assert for_release(release) is fmt
    assert V0038.records is v0038
    assert V0042.records is v0042


# --- jobs -----------------------------------------------------------------------------------------


def test_parse_v0038_sample_job() -> None:
    (record,) = v0038.parse_jobs(rest_body("job-get-v0.0.38.json"))
    assert record.job_id == 2065
    assert record.state is SlurmJobState.COMPLETED
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
    (record,) = v0042.parse_jobs(rest_body("job-get-v0.0.42.json"))
    assert record.job_id == 2
    assert record.state is SlurmJobState.COMPLETED
    assert record.raw_state == "COMPLETED"
    assert (record.exit_code, record.signal) == (0, 0)
    assert record.user == "alice"
    assert record.time_limit_min is None  # {"infinite": true}
    assert record.start_time == datetime.fromtimestamp(1795625312, UTC)
    assert record.stdout == record.stderr == "/slurmlab/c4/jobs/rest-2.out"
    assert dict(record.allocated_tres) == {"cpu": "1", "node": "1", "billing": "1"}


def test_parse_v0042_cancelled_job_reports_the_signal() -> None:
    (record,) = v0042.parse_jobs(rest_body("v0042-job-cancelled.json"))
    assert record.state is SlurmJobState.CANCELLED
    assert (record.exit_code, record.signal) == (0, 15)
    assert (record.tag or "").startswith("adhoc-")


def _v38_job(**fields: Any) -> dict[str, Any]:
    raw = dict(rest_body("job-get-v0.0.38.json")["jobs"][0])
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
    record = v0038.parse_job(_v38_job(job_state=state, exit_code=raw_status))
    assert record.state is SlurmJobState[state]
    assert (record.exit_code, record.signal) == expected


def test_v0038_pending_job_and_defaults() -> None:
    record = v0038.parse_job(
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
    raw = dict(rest_body("job-get-v0.0.42.json")["jobs"][0])
    raw["job_state"] = ["CANCELLED", "COMPLETING"]
    raw["time_limit"] = {"set": True, "infinite": False, "number": 30}
    raw["end_time"] = {"set": False, "infinite": False, "number": 0}
    record = v0042.parse_job(raw)
    assert record.state is SlurmJobState.COMPLETING  # as scontrol says: the exit code is not final yet
    assert record.exit_code is None
    assert record.raw_state == "CANCELLED,COMPLETING"
    raw["job_state"] = ["CANCELLED"]
    record = v0042.parse_job(raw)
    assert record.state is SlurmJobState.CANCELLED
    assert record.time_limit_min == 30
    assert record.end_time is None
    raw["job_state"] = ["RUNNING"]
    assert v0042.parse_job(raw).exit_code is None
    assert number({"set": True, "infinite": True, "number": 5}) is None
    assert number(7) == 7
    assert number(True) is None


def test_release_from_meta() -> None:
    assert v0038.release(rest_body("job-get-v0.0.38.json")) == "22.05.8"
    assert v0042.release(rest_body("job-get-v0.0.42.json")) == "24.11.5"
    assert v0042.release(rest_body("v0045-partitions-2605.json")) == "26.05.5"
    assert v0042.release({}) is None


def test_v0045_output_paths_are_expanded() -> None:
    """26.05's tools print data_parser v0.0.45, which leaves %j in output paths; v0.0.42 answers expand them."""
    jobs = {job.job_id: job for job in v0042.parse_jobs(cli_json("squeue-26.05.json"))}
    assert jobs[59].stdout == "/slurmlab/delta/scratch/fx-59.out"
    assert jobs[59].stderr == "/slurmlab/delta/scratch/fx-59.err"
    assert jobs[58].stdout == jobs[58].stderr == "/slurmlab/delta/scratch/slurm-58.out"  # relative: in the workdir


@pytest.mark.parametrize("fmt", [v0038, v0042], ids=["v0038", "v0042"])
def test_unset_strings_and_entries_without_an_id(fmt: RecordFormat) -> None:
    raw = {"job_id": 7, "job_state": "PENDING", "comment": "N/A", "nodes": "(null)", "partition": ""}
    (record,) = fmt.parse_jobs({"jobs": [raw, {"name": "no id"}, "not a job"]})
    assert (record.tag, record.nodes, record.partition) == (None, None, None)
    assert fmt.parse_jobs({"jobs": None}) == []


def test_v0038_raw_sentinels_are_unset() -> None:
    raw = {"job_id": 7, "job_state": "FAILED", "exit_code": 0xFFFFFFFE, "time_limit": 0xFFFFFFFF, "start_time": -1}
    record = v0038.parse_job(raw)
    assert (record.exit_code, record.signal, record.time_limit_min, record.start_time) == (None, None, None, None)


def test_v0038_nodes_and_partitions() -> None:
    nodes = v0038.parse_nodes(rest_body("v0038-nodes.json"))
    by_name = {n.name: n for n in nodes}
    assert set(by_name) == {"cn1", "cn2", "gn1", "gn2"}
    assert dict(by_name["gn1"].gpus) == {"a100": 4}
    assert dict(by_name["gn1"].gpus_used) == {"a100": 0}
    assert dict(by_name["cn1"].gpus_used) == {}  # Slurm prints "gpu:0" for nodes without GPUs
    assert by_name["cn1"].partitions == ("cpu",)
    assert by_name["gn1"].memory_mb == 16000
    partitions = {p.name: p for p in v0038.parse_partitions(rest_body("v0038-partitions.json"), nodes)}
    cpu, gpu = partitions["cpu"], partitions["gpu"]
    assert (cpu.default, cpu.max_time_min, cpu.default_time_min) == (True, 60, 10)
    assert (gpu.default, gpu.max_time_min, gpu.default_time_min) == (False, 120, 30)
    assert sorted(gpu.nodes) == ["gn1", "gn2"]
    assert dict(gpu.total_gpus) == {"a100": 8}
    assert gpu.total_cpus == 16
    assert gpu.state == "UP"


def test_v0038_infinite_max_time() -> None:
    raw = rest_body("v0038-partitions.json")
    raw["partitions"] = [dict(raw["partitions"][0], max_time_limit=-1)]
    (part,) = v0038.parse_partitions(raw, [])
    assert part.max_time_min is None


def test_v0042_nodes_and_partitions() -> None:
    nodes = v0042.parse_nodes(rest_body("v0042-nodes.json"))
    by_name = {n.name: n for n in nodes}
    assert dict(by_name["gn1"].gpus) == {"h100": 2}
    assert by_name["gn1"].state == "IDLE"
    assert by_name["cn1"].cpus == 4
    partitions = {p.name: p for p in v0042.parse_partitions(rest_body("v0042-partitions.json"), nodes)}
    assert (partitions["cpu"].max_time_min, partitions["cpu"].default_time_min) == (45, 10)
    assert (partitions["gpu"].max_time_min, partitions["gpu"].default_time_min) == (90, 15)
    assert dict(partitions["gpu"].total_gpus) == {"h100": 2}
    assert partitions["gpu"].nodes == ("gn1",)
    assert not any(p.default for p in partitions.values())  # v0.0.42 has no such flag
    assert V0042.partition_flags_path is not None


def test_default_partition_from_newer_flags() -> None:
    assert default_partition_names(rest_body("v0045-partitions-2605.json")) == {"cpu"}
    assert default_partition_names(rest_body("v0038-partitions.json")) == {"cpu"}
    assert default_partition_names(rest_body("v0042-partitions.json")) == set()


def test_nodes_are_read_alike_in_every_format() -> None:
    assert v0038.parse_nodes is v0042.parse_nodes
    nodes = v0038.parse_nodes({"nodes": [{"name": "cn1", "state": "idle", "cpus": 4}, {"state": "down"}, "x"]})
    assert [(node.name, node.state, node.cpus) for node in nodes] == [("cn1", "IDLE", 4)]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (5, 5),
        ({"set": True, "infinite": False, "number": 10}, 10),
        ({"set": False, "infinite": False, "number": 0}, None),
        ({"set": True, "infinite": True, "number": 0}, None),
        (4294967294, None),
        (-1, None),
        (None, None),
        (True, None),
    ],
)
def test_number_unwrapping(value: Any, expected: int | None) -> None:
    assert number(value) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"state": "idle", "state_flags": ["DRAIN"]}, "IDLE+DRAIN"),
        ({"state": ["MIXED", "DRAIN"]}, "MIXED+DRAIN"),
        ({"state": "down", "state_flags": []}, "DOWN"),
        ({}, "UNKNOWN"),
    ],
)
def test_node_state(raw: dict[str, Any], expected: str) -> None:
    assert node_state(raw) == expected


# --- the errors array -----------------------------------------------------------------------------


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


# --- slurmdbd's job records and slurmctld's statistics ------------------------------------------------


def test_sacct_json_of_22_05_is_one_record_per_job_with_its_tag_tres_and_run_time() -> None:
    records = {r.job_id: r for r in v0038.parse_accounted_jobs(cli_json("sacct-22.05.json"))}
    assert sorted(records) == [2, 107]
    requeued = records[2]  # requeued once: sacct shows the job as it ended
    assert (requeued.state, requeued.tag, requeued.user) == (
        SlurmJobState.COMPLETED,
        "job_rvc47u3zcehvzmccbrj3",
        "alice",
    )
    assert requeued.allocated_tres == {"cpu": "1", "mem": "500M", "node": "1", "billing": "1"}
    assert requeued.elapsed_s is not None
    assert requeued.submit_time is not None
    assert requeued.end_time is not None
    assert requeued.start_time is not None
    failed = records[107]  # exited 3; 22.05's JSON says return_code 0, so the code is unknown, never 0
    assert (failed.state, failed.exit_code, failed.signal, failed.tag) == (SlurmJobState.FAILED, None, None, None)


def test_slurmdbd_records_served_by_slurmrestd_keep_every_run_of_a_requeued_job_parsed_once() -> None:
    body = rest_body("v0038-slurmdb-job-requeued.json")
    assert [job["state"]["current"] for job in body["jobs"]] == ["REQUEUED", "COMPLETED"]
    [record] = v0038.parse_accounted_jobs(body)
    assert record.state is SlurmJobState.COMPLETED
    assert v0038.parse_accounted_jobs(rest_body("v0038-slurmdb-job-unknown.json")) == []


def test_diag_tells_since_when_statistics_run_and_the_slurmdbd_backlog() -> None:
    body = rest_body("v0038-diag.json")
    since, backlog = controller_uptime_facts(body)
    assert since == datetime.fromtimestamp(body["statistics"]["req_time_start"], UTC)
    assert backlog == 0
    assert controller_uptime_facts({"statistics": {"req_time_start": 0}}) == (None, None)  # just started
    assert controller_uptime_facts({}) == (None, None)


# --- how a job ended: exit code and signal, as scontrol's ExitCode=exit:signal -------------------------
# Recorded in the lab: a node set DOWN under a running job on 22.05 (scontrol: NODE_FAIL 0:15 once the batch
# step is gone), and scripts killed by SIGKILL and SIGSEGV on 24.11 and 26.05 (scontrol: FAILED 0:9, 0:11).


def test_v0038_node_failure_ends_with_the_signal_scontrol_shows() -> None:
    (record,) = v0038.parse_jobs(cli_json("squeue-node-fail-22.05.json"))
    assert (record.state, record.reason) == (SlurmJobState.NODE_FAIL, "NodeDown")
    assert (record.exit_code, record.signal) == (0, 15)


@pytest.mark.parametrize("release", ["24.11", "26.05"])
def test_v0042_signalled_jobs_end_with_their_signal(release: str) -> None:
    records = v0042.parse_jobs(cli_json(f"squeue-signalled-{release}.json"))
    assert [(r.state, r.exit_code, r.signal) for r in records] == [
        (SlurmJobState.FAILED, 0, 9),
        (SlurmJobState.FAILED, 0, 11),
    ]


# Not producible in the lab: out of memory needs a cgroup or an over-memory kill (the lab's nodes run
# task/none without cgroups), and a node failure on 24.11 and 26.05 needs a node of a shared cluster set DOWN.
# These take a recorded record and change only what Slurm writes for such an end: SIG_OOM (253, slurm.h)
# is the wait status scontrol prints as 0:125; a failed node's batch step ends by SIGTERM (0:15, as recorded
# on 22.05 above).
_SIGNALLED_V42 = "squeue-signalled-26.05.json"


def _v42_signalled(state: str, signal: int) -> dict[str, Any]:
    raw = dict(cli_json(_SIGNALLED_V42)["jobs"][0])
    raw["job_state"] = [state]
    raw["exit_code"] = {
        **raw["exit_code"],
        "signal": {"id": {"set": True, "infinite": False, "number": signal}, "name": str(signal)},
    }
    return raw


@pytest.mark.parametrize(
    ("state", "signal"), [("OUT_OF_MEMORY", 125), ("NODE_FAIL", 15), ("TIMEOUT", 15), ("CANCELLED", 15)]
)
def test_v0042_ends_by_signal_keep_the_signal(state: str, signal: int) -> None:
    record = v0042.parse_job(_v42_signalled(state, signal))
    assert record.state is SlurmJobState[state]
    assert (record.exit_code, record.signal) == (0, signal)


def test_v0038_out_of_memory_is_signal_125() -> None:
    record = v0038.parse_job(_v38_job(job_state="OUT_OF_MEMORY", exit_code=253))  # SIG_OOM
    assert record.state is SlurmJobState.OUT_OF_MEMORY
    assert (record.exit_code, record.signal) == (0, 125)
