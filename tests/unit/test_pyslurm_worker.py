"""The pyslurm worker's operations against a fake pyslurm module, in-process: runs anywhere, no libslurm.

Requests go in and answers come out exactly as on the wire (``Operations.handle`` on encoded lines), so
these tests pin what the worker does with pyslurm: the description it submits, the mapping of pyslurm's
objects and errors, the owner checks on cancel and on output files, and that it keeps serving after errors.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from slurm_adapters.codec import (
    cluster_info_from_json,
    health_from_json,
    output_chunk_from_json,
    record_from_json,
    records_from_json,
)
from slurm_adapters.environment import Login
from slurm_adapters.errors import (
    AuthenticationError,
    ClusterUnavailable,
    InvalidRequest,
    JobNotFound,
    OutputUnavailable,
    SiteError,
    UnsafeRequest,
)
from slurm_adapters.pyslurm.mapping import submit_kwargs
from slurm_adapters.pyslurm.protocol import decode_response, encode_request
from slurm_adapters.pyslurm.worker import PROFILE_NOT_SET, Operations, load_pyslurm, profile_unset_as_sbatch
from slurm_adapters.records import SlurmJobSpec, SlurmJobState

NOW = 1_795_600_000


class FakeRPCError(Exception):
    def __init__(self, msg: str, errno: int = -1) -> None:
        super().__init__(msg)
        self.msg = msg
        self.errno = errno


def fake_job(job_id: int, **overrides: Any) -> SimpleNamespace:
    fields: dict[str, Any] = {
        "id": job_id,
        "name": f"job{job_id}",
        "state": "COMPLETED",
        "state_reason": "None",
        "comment": f"tag-{job_id}",
        "exit_code": 0,
        "exit_code_signal": 0,
        "submit_time": NOW,
        "start_time": NOW + 1,
        "end_time": NOW + 2,
        "allocated_nodes": "cn1",
        "user_name": "alice",
        "user_id": os.getuid(),
        "partition": "cpu",
        "time_limit": 10,
        "standard_output": f"/scratch/out-{job_id}.txt",
        "standard_error": "",
        "allocated_tres": None,
        "gres_per_node": {},
    }
    fields.update(overrides)
    return SimpleNamespace(**fields)


class FakePyslurm:
    """Just the pyslurm 25.11 surface the worker uses."""

    PyslurmError = FakeRPCError
    RPCError = FakeRPCError
    __version__ = "25.11.2-fake"

    def __init__(self) -> None:
        self.jobs: dict[int, SimpleNamespace] = {}
        self.submitted: list[dict[str, Any]] = []
        self.cancelled: list[int] = []
        self.jobs_loads = 0
        self.submit_error: Exception | None = None
        fake = self

        class JobSubmitDescription:
            def __init__(self, **kwargs: Any) -> None:
                self.kwargs = kwargs

            def submit(self) -> int:
                if fake.submit_error is not None:
                    raise fake.submit_error
                fake.submitted.append(self.kwargs)
                return 100 + len(fake.submitted)

        class Job:
            def __init__(self, job_id: int) -> None:
                self.job_id = job_id

            @staticmethod
            def load(job_id: int) -> SimpleNamespace:
                if job_id not in fake.jobs:
                    raise FakeRPCError("Invalid job id specified", 2017)
                return fake.jobs[job_id]

            def cancel(self) -> None:
                fake.cancelled.append(self.job_id)

        class Jobs:
            @staticmethod
            def load(preload_passwd_info: bool = False) -> dict[int, SimpleNamespace]:
                fake.jobs_loads += 1
                return dict(fake.jobs)

        config = SimpleNamespace(cluster_name="delta", version="26.05.5")
        nodes = {
            "gn1": SimpleNamespace(
                name="gn1",
                state="MIXED",
                total_cpus=8,
                allocated_cpus=2,
                real_memory=16000,
                partitions=["gpu"],
                configured_gres={"gpu:a100": 2},
                allocated_gres={},
            ),
            "cn1": SimpleNamespace(
                name="cn1",
                state="IDLE",
                total_cpus=4,
                allocated_cpus=0,
                real_memory=8000,
                partitions=["cpu"],
                configured_gres={},
                allocated_gres={},
            ),
        }
        partitions = {
            "cpu": SimpleNamespace(name="cpu", is_default=True, state="UP", max_time=60, default_time=10, total_cpus=4),
            "gpu": SimpleNamespace(
                name="gpu", is_default=False, state="UP", max_time="UNLIMITED", default_time=None, total_cpus=8
            ),
        }
        self.JobSubmitDescription = JobSubmitDescription
        self.Job = Job
        self.Jobs = Jobs
        self.Nodes = SimpleNamespace(load=lambda: dict(nodes))
        self.Partitions = SimpleNamespace(load=lambda: dict(partitions))
        statistics = SimpleNamespace(data_since=1795967710, dbd_agent_queue_size=0)  # from 26.05.5's diag()
        self.slurmctld = SimpleNamespace(Config=SimpleNamespace(load=lambda: config), diag=lambda: statistics)
        self.utils = SimpleNamespace(nodelist_from_range_str=lambda text: text.split(","))


@pytest.fixture
def fake() -> FakePyslurm:
    return FakePyslurm()


def ops(fake: FakePyslurm, fs_root: Path | str = "/") -> Operations:
    return Operations(fake, cluster="delta", fs_root=fs_root)


def call(operations: Operations, op: str, **args: Any) -> Any:
    """One request through the worker's line handler; typed errors are raised as the parent raises them."""
    return decode_response(operations.handle(encode_request(op, args)), cluster="parent-view")


SPEC = SlurmJobSpec(name="train", script="echo hi\n", working_directory="/scratch", tag="conveyor-42", time_limit_min=5)
DESCRIPTION = submit_kwargs(SPEC, Login(user="alice", home="/home/alice", shell="/bin/bash"), 1001, "login1")


def test_submit_passes_the_description_unchanged(fake: FakePyslurm) -> None:
    assert call(ops(fake), "submit", description=DESCRIPTION) == 101
    assert fake.submitted == [DESCRIPTION]


@pytest.mark.parametrize("user_id", [None, "root", 0, ""])
def test_submit_refuses_a_description_that_would_run_as_root(fake: FakePyslurm, user_id: object) -> None:
    description = {**DESCRIPTION, "user_id": user_id}
    if user_id is None:
        del description["user_id"]
    with pytest.raises(UnsafeRequest, match="user_id"):
        call(ops(fake), "submit", description=description)
    assert fake.submitted == []


def test_submit_refuses_a_description_without_an_environment(fake: FakePyslurm) -> None:
    description = {key: value for key, value in DESCRIPTION.items() if key != "environment"}
    with pytest.raises(UnsafeRequest, match="environment"):
        call(ops(fake), "submit", description=description)
    with pytest.raises(UnsafeRequest, match="environment"):
        call(ops(fake), "submit", description={**DESCRIPTION, "environment": "ALL"})
    assert fake.submitted == []


SUBMIT_ERRORS: list[tuple[str, int, type[Exception], bool | None]] = [
    ("Invalid partition name specified", 2000, InvalidRequest, None),
    ("Requested node configuration is not available", 2014, InvalidRequest, None),
    ("Unable to contact slurm controller (connect failure)", 1800, ClusterUnavailable, False),
    ("Socket timed out on send/recv operation", 5004, ClusterUnavailable, True),
    ("Connection reset by peer", 104, ClusterUnavailable, True),
    ("Protocol authentication error", 1007, AuthenticationError, None),
]


@pytest.mark.parametrize("case", SUBMIT_ERRORS, ids=[case[0] for case in SUBMIT_ERRORS])
def test_submit_errors_are_typed(fake: FakePyslurm, case: tuple[str, int, type[Exception], bool | None]) -> None:
    message, errno, expected, maybe_applied = case
    fake.submit_error = FakeRPCError(message, errno)
    with pytest.raises(expected) as caught:
        call(ops(fake), "submit", description=DESCRIPTION)
    assert type(caught.value) is expected
    assert message in str(caught.value)
    if maybe_applied is not None:
        assert isinstance(caught.value, ClusterUnavailable)
        assert caught.value.maybe_applied is maybe_applied


def test_pyslurm_value_error_is_invalid_request(fake: FakePyslurm) -> None:
    fake.submit_error = ValueError("Invalid Time Specification: 5")
    with pytest.raises(InvalidRequest, match="Invalid Time Specification"):
        call(ops(fake), "submit", description=DESCRIPTION)


def test_get_job_maps_a_record(fake: FakePyslurm) -> None:
    fake.jobs[7] = fake_job(
        7, state="PENDING", state_reason="Resources", start_time=None, end_time=None, allocated_nodes=None
    )
    record = record_from_json(call(ops(fake), "get_job", job_id=7))
    assert record.state is SlurmJobState.PENDING
    assert record.reason == "Resources"
    assert (record.exit_code, record.signal, record.start_time) == (None, None, None)
    assert record.tag == "tag-7"
    fake.jobs[8] = fake_job(8, state="FAILED", exit_code=3, standard_output="/s/%x-%j.out", standard_error="")
    record = record_from_json(call(ops(fake), "get_job", job_id=8))
    assert (record.state, record.exit_code, record.reason) == (SlurmJobState.FAILED, 3, None)
    assert record.stdout == "/s/job8-8.out"
    assert record.stderr is None
    assert record.submit_time is not None
    assert record.submit_time.timestamp() == NOW
    with pytest.raises(JobNotFound) as caught:
        call(ops(fake), "get_job", job_id=9)
    assert caught.value.cluster == "parent-view"


def test_list_jobs_is_one_call_sorted_and_filters_on_tags(fake: FakePyslurm) -> None:
    fake.jobs = {3: fake_job(3, comment="conveyor-a"), 1: fake_job(1, comment="conveyor-b"), 2: fake_job(2, comment="")}
    worker = ops(fake)

    def ids(**args: Any) -> list[int]:
        return [record.job_id for record in records_from_json(call(worker, "list_jobs", **args))]

    assert ids(tags=None, tag_prefix=None) == [1, 2, 3]
    assert ids(tags=None, tag_prefix="conveyor-") == [1, 3]
    assert ids(tags=["conveyor-a", "x"], tag_prefix=None) == [3]
    assert ids(tags=[], tag_prefix=None) == []
    assert fake.jobs_loads == 4


def test_cancel_checks_owner_and_existence(fake: FakePyslurm) -> None:
    fake.jobs = {1: fake_job(1, state="RUNNING"), 2: fake_job(2, state="COMPLETED")}
    worker = ops(fake)
    with pytest.raises(InvalidRequest, match="permission denied"):
        call(worker, "cancel", job_id=1, user="bob")
    call(worker, "cancel", job_id=2, user="alice")  # already ended: nothing to do
    assert fake.cancelled == []
    assert call(worker, "cancel", job_id=1, user="alice") is None
    assert fake.cancelled == [1]
    with pytest.raises(JobNotFound):
        call(worker, "cancel", job_id=99, user="alice")


def test_cancel_by_tag_cancels_only_the_job_that_still_carries_it_and_says_what_differed(fake: FakePyslurm) -> None:
    fake.jobs = {1: fake_job(1, state="RUNNING", comment="conveyor-a")}  # a re-issued id: another job now
    worker = ops(fake)
    with pytest.raises(JobNotFound, match="its tag is 'conveyor-a', not 'conveyor-b'"):
        call(worker, "cancel", job_id=1, user="alice", tag="conveyor-b")
    with pytest.raises(JobNotFound, match="its user is 'alice', not 'bob'"):
        call(worker, "cancel", job_id=1, user="bob", tag="conveyor-a")
    assert fake.cancelled == []
    assert call(worker, "cancel", job_id=1, user="alice", tag="conveyor-a") is None
    assert fake.cancelled == [1]
    with pytest.raises(JobNotFound):
        call(worker, "cancel", job_id=99, user="alice", tag="conveyor-a")


JOB_UID = 4242


def test_read_output_under_fs_root_and_only_the_jobs_own_files(fake: FakePyslurm, tmp_path: Path) -> None:
    (tmp_path / "scratch").mkdir()
    (tmp_path / "scratch/out-1.txt").write_text("hello\nworld\n")
    owner = JOB_UID if os.geteuid() == 0 else os.getuid()  # never root's file: root's files are never read
    os.chown(tmp_path / "scratch/out-1.txt", owner, owner)
    fake.jobs = {1: fake_job(1, user_id=owner), 2: fake_job(2, user_id=owner)}
    worker = ops(fake, tmp_path)
    assert call(worker, "read_output", job_id=1, stream="stdout", max_bytes=65536) == "hello\nworld\n"
    assert call(worker, "read_output", job_id=1, stream="stdout", max_bytes=6) == "world\n"
    # no --error: stderr is in the stdout file
    assert call(worker, "read_output", job_id=1, stream="stderr", max_bytes=65536) == "hello\nworld\n"
    with pytest.raises(OutputUnavailable, match="does not exist"):
        call(worker, "read_output", job_id=2, stream="stdout", max_bytes=10)
    fake.jobs[3] = fake_job(3, user_id=owner + 1, standard_output="/scratch/out-1.txt")
    with pytest.raises(OutputUnavailable, match="owned by"):
        call(worker, "read_output", job_id=3, stream="stdout", max_bytes=10)
    with pytest.raises(SiteError, match="bad read_output request"):
        call(worker, "read_output", job_id=1, stream="../etc", max_bytes=10)


def test_read_output_chunk_by_range_from_slurms_path_only(fake: FakePyslurm, tmp_path: Path) -> None:
    (tmp_path / "scratch").mkdir()
    (tmp_path / "scratch/out-1.txt").write_bytes(b"hello\nworld\n")
    owner = JOB_UID if os.geteuid() == 0 else os.getuid()
    os.chown(tmp_path / "scratch/out-1.txt", owner, owner)
    fake.jobs = {1: fake_job(1, user_id=owner)}
    worker = ops(fake, tmp_path)
    chunk = output_chunk_from_json(call(worker, "read_output_chunk", job_id=1, stream="stdout", offset=6, max_bytes=3))
    assert (chunk.data, chunk.offset, chunk.size, chunk.eof) == (b"wor", 6, 12, False)
    past = output_chunk_from_json(call(worker, "read_output_chunk", job_id=1, stream="stdout", offset=99, max_bytes=3))
    assert (past.data, past.eof) == (b"", True)
    for bad in ({"offset": -1, "max_bytes": 3}, {"offset": 0, "max_bytes": 0}, {"offset": 0, "max_bytes": 2**21}):
        with pytest.raises(SiteError, match="bad read_output_chunk request"):
            call(worker, "read_output_chunk", job_id=1, stream="stdout", **bad)
    # The path is Slurm's record of the job, never an argument.
    named = call(worker, "read_output_chunk", job_id=1, stream="stdout", offset=0, max_bytes=5, path="/etc/shadow")
    assert output_chunk_from_json(named).data == b"hello"


def test_cluster_info_counts_gpus_from_running_jobs(fake: FakePyslurm) -> None:
    fake.jobs = {
        1: fake_job(1, state="RUNNING", allocated_nodes="gn1", gres_per_node={"gres/gpu:a100": 1}),
        2: fake_job(2, state="COMPLETED", allocated_nodes="gn1", gres_per_node={"gres/gpu:a100": 1}),
    }
    info = cluster_info_from_json(call(ops(fake), "cluster_info"))
    assert (info.cluster, info.release) == ("delta", "26.05.5")
    assert info.gpu_totals() == {"a100": (2, 1)}
    parts = {p.name: p for p in info.partitions}
    assert parts["cpu"].default
    assert parts["cpu"].max_time_min == 60
    assert parts["cpu"].nodes == ("cn1",)
    assert parts["gpu"].max_time_min is None
    assert parts["gpu"].total_gpus == {"a100": 2}


def test_health(fake: FakePyslurm) -> None:
    health = health_from_json(call(ops(fake), "health"))
    assert health.ok
    assert health.release == "26.05.5"
    assert "delta" in health.detail
    assert health.up_since == datetime.fromtimestamp(1795967710, UTC)
    assert health.accounting_backlog == 0


def test_bad_requests_and_bugs_are_answered_and_the_worker_keeps_serving(fake: FakePyslurm) -> None:
    worker = ops(fake)
    with pytest.raises(SiteError, match="bad request"):
        decode_response(worker.handle(b"not json\n"))
    with pytest.raises(SiteError, match="must be an integer"):
        call(worker, "get_job", job_id="7; rm -rf /")
    fake.Nodes = SimpleNamespace(load=lambda: 1 / 0)
    with pytest.raises(SiteError, match="ZeroDivisionError") as caught:
        call(worker, "cluster_info")
    assert type(caught.value) is SiteError
    assert health_from_json(call(worker, "health")).ok


def test_load_pyslurm_refuses_a_missing_config_and_drops_slurm_variables(tmp_path: Path) -> None:
    with pytest.raises(ClusterUnavailable, match="not a readable file"):
        load_pyslurm({"SLURM_CONF": str(tmp_path / "missing.conf")})
    with pytest.raises(ClusterUnavailable):
        load_pyslurm({})
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=delta\n")
    environ = {"SLURM_CONF": str(conf), "SLURM_JOB_ID": "7", "PATH": "/bin"}
    module = load_pyslurm(environ, module_name="json")  # any importable module stands in for pyslurm
    assert module.__name__ == "json"
    assert environ == {"PATH": "/bin"}
    with pytest.raises(SiteError, match="cannot be imported"):
        load_pyslurm({"SLURM_CONF": str(conf)}, module_name="no_such_module_for_conveyor")


def test_no_profile_types_are_sent_as_not_set_where_pyslurm_would_send_no_val(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in of pyslurm's layout with its converter (unset -> NO_VAL) is corrected; named types are kept."""
    package = tmp_path / "fake_pyslurm_profile"
    (package / "core" / "job").mkdir(parents=True)
    for directory in (package, package / "core", package / "core" / "job"):
        (directory / "__init__.py").write_text("")
    (package / "core" / "job" / "submission.py").write_text(
        "def acctg_profile_list_to_int(types):\n"
        "    return 0xFFFFFFFE if not types else {'task': 4, 'energy': 2}[types]\n"
        "def submitted_profile(types):\n"
        "    return acctg_profile_list_to_int(types)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert profile_unset_as_sbatch("fake_pyslurm_profile")
    from fake_pyslurm_profile.core.job import submission  # type: ignore[import-not-found]

    assert submission.submitted_profile(None) == PROFILE_NOT_SET
    assert submission.submitted_profile([]) == PROFILE_NOT_SET
    assert submission.submitted_profile("task") == 4
    assert not profile_unset_as_sbatch("fake_pyslurm_profile"), "corrected once, then left alone"
    assert not profile_unset_as_sbatch("json"), "a module without pyslurm's layout is left alone"
