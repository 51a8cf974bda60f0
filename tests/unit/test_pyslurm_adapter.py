"""PyslurmAdapter, the parent side: real worker processes, no libslurm.

Two kinds of worker stand in for the real one: the real worker module with a fake ``pyslurm`` module on its
path (so the whole chain parent -> process -> protocol -> worker -> "pyslurm" runs), and tiny scripted
workers that hang, die, send garbage or ignore end of input, which is how the deadline, the kill and the
restart are tested. The worker's own logic is in test_pyslurm_worker.py, the wire format in
test_pyslurm_protocol.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from slurm_adapters.convert import gpu_counts
from slurm_adapters.environment import MPI_LAUNCHER_HINTS
from slurm_adapters.errors import (
    AuthenticationError,
    ClusterUnavailable,
    InvalidRequest,
    JobNotFound,
    SiteError,
    SubmitWindowClosed,
    UnsafeRequest,
)
from slurm_adapters.pyslurm import adapter as pyslurm_adapter
from slurm_adapters.pyslurm.adapter import PyslurmAdapter, package_root, worker_environment
from slurm_adapters.pyslurm.mapping import map_error, tres_mapping
from slurm_adapters.records import SlurmJobSpec, SlurmJobState, SubmitContext
from slurm_adapters.safety import DIRECTIVE_FENCE, SitePolicy
from tests.unit.sites import policy_of

# ---------------------------------------------------------------------------------------------------
# Stand-ins for the worker's pyslurm and for the worker itself
# ---------------------------------------------------------------------------------------------------

# Imported as ``pyslurm`` inside the real worker process. The job name steers submit(): "rpc-error:ERRNO:MSG",
# "sleep:SECONDS", "die", "noisy"; each job's comment records the environment the worker had.
FAKE_PYSLURM = """
import json, os, sys, time
from types import SimpleNamespace

__version__ = "25.11.2-fake"
STARTUP_ENV = dict(os.environ)
JOBS = {}


class PyslurmError(Exception):
    pass


class RPCError(PyslurmError):
    def __init__(self, msg="", errno=-1):
        super().__init__(msg)
        self.msg, self.errno = msg, errno


def _job(job_id, name, comment):
    return SimpleNamespace(
        id=job_id, name=name, state="PENDING", state_reason="Priority", comment=comment, exit_code=0,
        exit_code_signal=0, submit_time=1795600000, start_time=0, end_time=0, allocated_nodes=None,
        user_name="alice", user_id=os.getuid(), partition="cpu", time_limit=5, standard_output="/tmp/o",
        standard_error="", allocated_tres=None, gres_per_node={},
    )


class JobSubmitDescription:
    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def submit(self):
        name = self.kwargs["name"]
        if name.startswith("rpc-error:"):
            _, errno, msg = name.split(":", 2)
            raise RPCError(msg, int(errno))
        if name.startswith("sleep:"):
            time.sleep(float(name.split(":")[1]))
        if name == "die":
            sys.stderr.write("fatal: libslurm pretends to crash\\n")
            sys.stderr.flush()
            os._exit(3)
        if name == "noisy":
            print("noise from print()")
            sys.stdout.flush()
            os.write(1, b"noise on fd 1\\n")
        job_id = 100 + len(JOBS) + 1
        seen = {
            "startup_env": STARTUP_ENV,
            "slurm_vars_at_submit": sorted(k for k in os.environ if k.startswith("SLURM_")),
            "job_environment": self.kwargs["environment"],
        }
        JOBS[job_id] = _job(job_id, name, json.dumps(seen))
        return job_id


class Job:
    def __init__(self, job_id):
        self.id = job_id

    @staticmethod
    def load(job_id):
        if job_id not in JOBS:
            raise RPCError("Invalid job id specified", 2017)
        return JOBS[job_id]

    def cancel(self):
        JOBS[self.id].state = "CANCELLED"


class Jobs:
    @staticmethod
    def load(preload_passwd_info=False):
        return dict(JOBS)


CONFIG = SimpleNamespace(cluster_name="delta", version="26.05.5")
STATISTICS = SimpleNamespace(data_since=1795967710, dbd_agent_queue_size=0)
slurmctld = SimpleNamespace(Config=SimpleNamespace(load=lambda: CONFIG), diag=lambda: STATISTICS)
Nodes = SimpleNamespace(load=dict)
Partitions = SimpleNamespace(load=dict)
utils = SimpleNamespace(nodelist_from_range_str=lambda text: text.split(","))
"""

BROKEN_PYSLURM = 'raise ImportError("libslurmfull.so: cannot open shared object file")\n'

# Scripted workers: the same greeting as the real one, then misbehaviour. Each appends its pid to NAME.pids.
PRELUDE = """
import json, os, sys, time
from pathlib import Path
HERE = Path(__file__)
with HERE.with_suffix(".pids").open("a") as pids:
    pids.write(f"{os.getpid()}\\n")

def send(document):
    sys.stdout.write(json.dumps(document) + "\\n")
    sys.stdout.flush()

def hello(protocol=1):
    send({"ok": True, "result": {"protocol": protocol, "pyslurm": "scripted", "pid": os.getpid()}})
"""

SCRIPTS = {
    # hangs on the first request it ever gets (any process), answers health afterwards
    "hang_once": """
hello()
for line in sys.stdin:
    marker = HERE.with_suffix(".hung")
    if not marker.exists():
        marker.touch()
        time.sleep(60)
    health = {"ok": True, "detail": f"fresh worker {os.getpid()}", "release": None}
    send({"ok": True, "result": {**health, "up_since": None, "accounting_backlog": None}})
""",
    "hang_always": "hello()\nfor line in sys.stdin:\n    time.sleep(60)\n",
    "mute": "time.sleep(60)\n",
    "garbage": """
hello()
for line in sys.stdin:
    sys.stdout.write("this is not json\\n")
    sys.stdout.flush()
""",
    "wrong_shape": """
hello()
for line in sys.stdin:
    send({"ok": True, "result": {"job_id": "not a record"}})
""",
    "future_protocol": "hello(protocol=99)\ntime.sleep(60)\n",
    "deaf": "hello()\ntime.sleep(60)\n",
}


def _policy() -> SitePolicy:
    return policy_of({"alice": 1001, "bob": 1002}, slurm_user="root")


BASE_AND_LOGIN = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/home/alice",
    "USER": "alice",
    "LOGNAME": "alice",
    "SHELL": "/bin/bash",
    **MPI_LAUNCHER_HINTS,
}


def sbatchs(spec: SlurmJobSpec) -> dict[str, str]:
    """What sbatch 25.11 exports for ``spec`` run in its working directory on this host."""
    exported = {
        "SLURM_JOB_NAME": spec.name,
        "SLURM_CPUS_PER_TASK": str(spec.cpus_per_task),
        "SLURM_SUBMIT_DIR": spec.working_directory,
        "SLURM_SUBMIT_HOST": socket.gethostname(),
        "SLURM_PRIO_PROCESS": "0",
        "SLURM_TRES_PER_TASK": f"cpu={spec.cpus_per_task}",
    }
    if spec.tasks_per_node is not None:
        exported["SLURM_NTASKS_PER_NODE"] = str(spec.tasks_per_node)
    return exported


class FakeLibAdapter(PyslurmAdapter):
    """The real worker, with ``pyslurm`` taken from ``fake_dir``."""

    def __init__(self, *args: Any, fake_dir: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fake_dir = fake_dir

    def worker_env(self) -> dict[str, str]:
        env = super().worker_env()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.fake_dir), env.get("PYTHONPATH")]))
        return env


class ScriptedAdapter(PyslurmAdapter):
    """A scripted worker instead of the real one."""

    def __init__(self, *args: Any, script: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.script = script

    def worker_argv(self) -> list[str]:
        return [sys.executable, str(self.script)]


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "slurm.conf"
    path.write_text("ClusterName=delta\n")
    return path


@pytest.fixture
async def closing() -> AsyncIterator[list[PyslurmAdapter]]:
    """Adapters to aclose at teardown, so that no test leaves a worker behind."""
    adapters: list[PyslurmAdapter] = []
    yield adapters
    for adapter in adapters:
        await adapter.aclose()


@pytest.fixture
def real(tmp_path: Path, conf: Path, closing: list[PyslurmAdapter]) -> Callable[..., PyslurmAdapter]:
    fake_dir = tmp_path / "fake-pyslurm"
    fake_dir.mkdir()
    (fake_dir / "pyslurm.py").write_text(FAKE_PYSLURM)

    def make(**kwargs: Any) -> PyslurmAdapter:
        kwargs.setdefault("fake_dir", fake_dir)
        adapter = FakeLibAdapter("delta", conf, policy=_policy(), **kwargs)
        closing.append(adapter)
        return adapter

    return make


@pytest.fixture
def scripted(tmp_path: Path, conf: Path, closing: list[PyslurmAdapter]) -> Callable[..., ScriptedAdapter]:
    def make(name: str, **kwargs: Any) -> ScriptedAdapter:
        script = tmp_path / f"{name}.py"
        script.write_text(PRELUDE + SCRIPTS[name])
        adapter = ScriptedAdapter("delta", conf, policy=_policy(), script=script, **kwargs)
        closing.append(adapter)
        return adapter

    return make


def pids(adapter: ScriptedAdapter) -> list[int]:
    path = adapter.script.with_suffix(".pids")
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def gone(pid: int) -> bool:
    """True once ``pid`` is no longer a live (or zombie) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return
        assert time.monotonic() < deadline, f"condition not met within {timeout_s} s"
        await asyncio.sleep(0.01)


def spec(name: str = "train", **overrides: Any) -> SlurmJobSpec:
    fields: dict[str, Any] = {"name": name, "script": "echo hi\n", "working_directory": "/scratch", "tag": "t-1"}
    fields.update(overrides)
    return SlurmJobSpec(**fields)


# ---------------------------------------------------------------------------------------------------
# Rendering, in the parent and without a worker
# ---------------------------------------------------------------------------------------------------

FULL_SPEC = SlurmJobSpec(
    name="train",
    script="#!/bin/sh\n#SBATCH --partition=evil\necho hi\n",
    working_directory="/scratch",
    tag="conveyor-42",
    stdout="/scratch/%j.out",
    stderr="/scratch/%j.err",
    environment={"FOO": "bar"},
    partition="gpu",
    account="proj",
    qos="high",
    nodes=2,
    tasks=4,
    tasks_per_node=2,
    cpus_per_task=3,
    memory_mb=2000,
    gpus_per_node=2,
    gpu_type="a100",
    time_limit_min=30,
)


def test_importing_the_adapter_imports_no_pyslurm() -> None:
    code = "import sys, slurm_adapters.pyslurm.adapter; sys.exit('pyslurm' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_constructor_checks_the_config_and_starts_nothing(conf: Path, tmp_path: Path) -> None:
    adapter = PyslurmAdapter("delta", conf, policy=_policy())
    assert adapter.worker_pid is None
    assert adapter.timeout_s == 8.0
    other = tmp_path / "other.conf"
    other.write_text("ClusterName=other\n")
    PyslurmAdapter("other", other)  # any number of clusters per process
    with pytest.raises(ClusterUnavailable):
        PyslurmAdapter("delta", tmp_path / "missing.conf")
    with pytest.raises(ValueError, match="timeout_s"):
        PyslurmAdapter("delta", conf, timeout_s=0)


def test_render_carries_every_field_without_a_worker(conf: Path) -> None:
    adapter = PyslurmAdapter("delta", conf, policy=_policy())
    rendering = adapter.render(FULL_SPEC, "alice")
    payload = rendering.payload
    assert rendering.adapter == "pyslurm"
    assert payload == {
        "name": "train",
        "script": rendering.script,
        "working_directory": "/scratch",
        "environment": {**BASE_AND_LOGIN, "FOO": "bar", **sbatchs(FULL_SPEC)},
        "comment": "conveyor-42",
        "nodes": 2,
        "ntasks": 4,
        "cpus_per_task": 3,
        "user_id": "alice",
        "group_id": payload.get("group_id"),
        "standard_output": "/scratch/%j.out",
        "standard_error": "/scratch/%j.err",
        "partitions": "gpu",
        "account": "proj",
        "qos": "high",
        "ntasks_per_node": 2,
        "memory_per_node": 2000,
        "gres_per_node": {"gpu:a100": 2},
        "time_limit": 30,
    }
    assert isinstance(payload["time_limit"], int)
    assert rendering.script.splitlines()[:2] == ["#!/bin/sh", DIRECTIVE_FENCE]
    assert adapter.worker_pid is None


def test_render_minimal_spec_still_sets_environment(conf: Path) -> None:
    minimal = SlurmJobSpec(name="x", script="true", working_directory="/tmp", tag="t", gpus_per_node=1)
    payload = PyslurmAdapter("delta", conf, policy=_policy()).render(minimal, "alice").payload
    assert payload["environment"] == {**BASE_AND_LOGIN, **sbatchs(minimal)}
    assert payload["gres_per_node"] == {"gpu": 1}
    for absent in ("partitions", "account", "qos", "time_limit", "memory_per_node", "standard_error"):
        assert absent not in payload


@pytest.mark.parametrize("user", ["root", "daemon", "nobody-here"])
async def test_unsafe_users_are_refused_before_any_worker(conf: Path, user: str) -> None:
    adapter = PyslurmAdapter("delta", conf, policy=_policy())
    with pytest.raises(UnsafeRequest):
        adapter.render(FULL_SPEC, user)
    with pytest.raises(UnsafeRequest):
        await adapter.submit(FULL_SPEC, user)
    with pytest.raises(UnsafeRequest):
        await adapter.cancel(1, user)
    assert adapter.worker_pid is None


async def test_a_submit_whose_deadline_would_pass_not_after_never_reaches_a_worker(conf: Path) -> None:
    adapter = PyslurmAdapter("delta", conf, policy=_policy(), timeout_s=8.0)
    late = SubmitContext("job_x/1", datetime.now(UTC) + timedelta(seconds=7), "user:1", "EHPC-AIF-2026PG01-1147")
    with pytest.raises(SubmitWindowClosed) as caught:
        await adapter.submit(FULL_SPEC, "alice", late)
    assert not caught.value.maybe_applied
    assert adapter.worker_pid is None  # checked in this process, before any worker was started or asked


def test_worker_environment_is_clean(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_CONF", "/parent/slurm.conf")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    env = worker_environment("/etc/slurm-delta/slurm.conf")
    assert env["SLURM_CONF"] == "/etc/slurm-delta/slurm.conf"
    assert set(env) <= {"PATH", "SLURM_CONF", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE"}
    assert env.get("PYTHONPATH", package_root()) == package_root()


# ---------------------------------------------------------------------------------------------------
# The real worker with a fake pyslurm
# ---------------------------------------------------------------------------------------------------


async def test_submit_and_read_back_through_the_worker(real: Callable[..., PyslurmAdapter], conf: Path) -> None:
    adapter = real()
    job_id = await adapter.submit(spec(environment={"FOO": "bar"}), "alice")
    assert job_id == 101
    pid = adapter.worker_pid
    assert pid is not None
    assert pid != os.getpid()
    record = await adapter.get_job(job_id)
    assert (record.job_id, record.state, record.user) == (101, SlurmJobState.PENDING, "alice")
    assert [r.job_id for r in await adapter.list_jobs()] == [101]
    health = await adapter.health()
    assert health.ok
    assert health.release == "26.05.5"
    assert adapter.worker_pid == pid  # one worker serves every call
    await adapter.cancel(job_id, "alice")
    assert (await adapter.get_job(job_id)).state is SlurmJobState.CANCELLED


async def test_jobs_see_none_of_the_parents_environment(
    real: Callable[..., PyslurmAdapter], conf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_CONF", "/the/parents/own/slurm.conf")
    monkeypatch.setenv("CONVEYOR_PARENT_ONLY", "secret")
    adapter = real()
    record = await adapter.get_job(await adapter.submit(spec(environment={"FOO": "bar"}), "alice"))
    seen = json.loads(record.tag or "{}")
    startup = seen["startup_env"]
    assert startup["SLURM_CONF"] == str(conf)  # the adapter's cluster, not the parent's variable
    assert "CONVEYOR_PARENT_ONLY" not in startup
    assert not {name for name in startup if name.startswith("SLURM_")} - {"SLURM_CONF"}
    assert seen["slurm_vars_at_submit"] == []  # dropped once libslurm had read SLURM_CONF
    submitted = spec(environment={"FOO": "bar"})
    assert seen["job_environment"] == {**BASE_AND_LOGIN, "FOO": "bar", **sbatchs(submitted)}


SUBMIT_ERRORS: list[tuple[int, str, type[Exception], bool | None]] = [
    (2000, "Invalid partition name specified", InvalidRequest, None),
    (1800, "Unable to contact slurm controller (connect failure)", ClusterUnavailable, False),
    (5004, "Socket timed out on send/recv operation", ClusterUnavailable, True),
    (1007, "Protocol authentication error", AuthenticationError, None),
]


@pytest.mark.parametrize("case", SUBMIT_ERRORS, ids=[case[1] for case in SUBMIT_ERRORS])
async def test_typed_errors_cross_the_process_boundary(
    real: Callable[..., PyslurmAdapter], case: tuple[int, str, type[Exception], bool | None]
) -> None:
    errno, message, expected, maybe_applied = case
    adapter = real()
    with pytest.raises(expected) as caught:
        await adapter.submit(spec(f"rpc-error:{errno}:{message}"), "alice")
    error = caught.value
    assert type(error) is expected
    assert message in str(error)
    assert getattr(error, "cluster", None) == "delta"
    if maybe_applied is not None:
        assert isinstance(error, ClusterUnavailable)
        assert error.maybe_applied is maybe_applied
    pid = adapter.worker_pid
    assert pid is not None  # a typed answer leaves the worker serving
    with pytest.raises(JobNotFound):
        await adapter.get_job(999)
    assert adapter.worker_pid == pid


async def test_stray_output_on_stdout_does_not_corrupt_the_protocol(real: Callable[..., PyslurmAdapter]) -> None:
    adapter = real()
    job_id = await adapter.submit(spec("noisy"), "alice")
    assert (await adapter.get_job(job_id)).name == "noisy"


async def test_calls_are_serialized(real: Callable[..., PyslurmAdapter]) -> None:
    adapter = real()
    job_id = await adapter.submit(spec(), "alice")
    records, health = await asyncio.gather(
        asyncio.gather(*(adapter.get_job(job_id) for _ in range(20))), adapter.health()
    )
    assert {record.job_id for record in records} == {job_id}
    assert health.ok


async def test_a_worker_that_cannot_load_pyslurm_raises_its_typed_error(
    real: Callable[..., PyslurmAdapter], tmp_path: Path
) -> None:
    broken = tmp_path / "broken-pyslurm"
    broken.mkdir()
    (broken / "pyslurm.py").write_text(BROKEN_PYSLURM)
    adapter = real(fake_dir=broken)
    with pytest.raises(SiteError, match=r"pyslurm cannot be imported here: libslurmfull\.so") as caught:
        await adapter.health()
    assert type(caught.value) is SiteError
    assert adapter.worker_pid is None


async def test_a_config_removed_after_construction_is_unavailable(
    real: Callable[..., PyslurmAdapter], conf: Path
) -> None:
    adapter = real()
    await asyncio.to_thread(conf.unlink)
    with pytest.raises(ClusterUnavailable, match="not a readable file"):
        await adapter.health()


async def test_a_worker_that_dies_mid_call_is_unavailable_and_replaced(real: Callable[..., PyslurmAdapter]) -> None:
    adapter = real()
    await adapter.health()
    first = adapter.worker_pid
    assert first is not None
    with pytest.raises(ClusterUnavailable) as caught:
        await adapter.submit(spec("die"), "alice")
    error = caught.value
    assert error.maybe_applied is True  # it died after reading the submit
    assert "exited with status 3" in error.message
    assert "pretends to crash" in error.message
    assert any("pretends to crash" in line for line in error.errors)
    assert gone(first)
    assert (await adapter.health()).ok
    assert adapter.worker_pid not in {None, first}


async def test_a_worker_killed_between_calls_is_replaced_silently(real: Callable[..., PyslurmAdapter]) -> None:
    adapter = real()
    await adapter.health()
    first = adapter.worker_pid
    assert first is not None
    os.kill(first, 9)
    await eventually(lambda: adapter.worker_pid is None)  # the event loop notices the exit
    assert (await adapter.health()).ok
    assert adapter.worker_pid not in {None, first}


# ---------------------------------------------------------------------------------------------------
# Deadlines, kills and broken workers (scripted workers)
# ---------------------------------------------------------------------------------------------------


async def test_a_hung_call_is_killed_on_the_deadline_while_the_loop_keeps_running(
    scripted: Callable[..., ScriptedAdapter],
) -> None:
    adapter = scripted("hang_once", timeout_s=0.5)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    started = time.monotonic()
    try:
        with pytest.raises(ClusterUnavailable) as caught:
            await adapter.submit(spec(), "alice")
    finally:
        task.cancel()
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 2.0, elapsed
    assert ticks >= 20, ticks  # ~50 expected: the loop was never blocked
    error = caught.value
    assert error.maybe_applied is True
    assert "no answer to submit within 0.5 s" in error.message
    [hung] = pids(adapter)
    assert f"pid {hung}" in error.message
    assert gone(hung)  # SIGKILLed and reaped
    assert adapter.worker_pid is None
    health = await adapter.health()  # the next call starts a fresh worker
    [_, fresh] = pids(adapter)
    assert health.detail == f"fresh worker {fresh}"
    assert adapter.worker_pid == fresh


async def test_calls_queued_behind_a_hung_one_fail_on_their_own_deadline(
    scripted: Callable[..., ScriptedAdapter],
) -> None:
    adapter = scripted("hang_always", timeout_s=0.5)
    started = time.monotonic()
    outcomes = await asyncio.gather(
        adapter.submit(spec(), "alice"), adapter.health(), adapter.get_job(1), return_exceptions=True
    )
    elapsed = time.monotonic() - started
    assert elapsed < 1.2, elapsed  # not 3 x 0.5 s one after the other
    assert all(isinstance(outcome, ClusterUnavailable) for outcome in outcomes), outcomes
    first = outcomes[0]
    assert isinstance(first, ClusterUnavailable)
    assert first.maybe_applied is True


async def test_a_worker_that_never_greets_is_unavailable_and_nothing_was_applied(
    scripted: Callable[..., ScriptedAdapter],
) -> None:
    adapter = scripted("mute", timeout_s=0.5)
    with pytest.raises(ClusterUnavailable) as caught:
        await adapter.submit(spec(), "alice")
    assert caught.value.maybe_applied is False  # the submit was never sent
    [pid] = pids(adapter)
    assert gone(pid)


@pytest.mark.parametrize(
    ("script", "expected"),
    [("garbage", "sent garbage as the answer to get_job"), ("wrong_shape", "malformed answer to get_job")],
)
async def test_garbage_is_unavailable_and_the_worker_is_killed(
    scripted: Callable[..., ScriptedAdapter], script: str, expected: str
) -> None:
    adapter = scripted(script)
    with pytest.raises(ClusterUnavailable, match=expected):
        await adapter.get_job(1)
    [pid] = pids(adapter)
    assert gone(pid)
    assert adapter.worker_pid is None


async def test_a_worker_speaking_another_protocol_is_refused(scripted: Callable[..., ScriptedAdapter]) -> None:
    adapter = scripted("future_protocol")
    with pytest.raises(ClusterUnavailable, match="speaks protocol 99"):
        await adapter.health()
    [pid] = pids(adapter)
    assert gone(pid)


async def test_a_cancelled_call_ends_the_worker(scripted: Callable[..., ScriptedAdapter]) -> None:
    adapter = scripted("hang_once", timeout_s=5)
    task = asyncio.create_task(adapter.health())
    await eventually(adapter.script.with_suffix(".hung").exists)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [pid] = pids(adapter)
    assert gone(pid)
    assert (await adapter.health()).ok


async def test_aclose_ends_the_worker(real: Callable[..., PyslurmAdapter]) -> None:
    adapter = real()
    await adapter.health()
    pid = adapter.worker_pid
    assert pid is not None
    started = time.monotonic()
    await adapter.aclose()
    assert time.monotonic() - started < 1.0  # it exits at end of input, no kill needed
    assert gone(pid)
    assert adapter.worker_pid is None
    await adapter.aclose()  # twice is fine


async def test_aclose_kills_a_worker_that_ignores_end_of_input(
    scripted: Callable[..., ScriptedAdapter], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pyslurm_adapter, "CLOSE_GRACE_S", 0.3)
    adapter = scripted("deaf")
    await adapter._running_worker()  # started and greeted; it never reads its input
    [pid] = pids(adapter)
    started = time.monotonic()
    await adapter.aclose()
    assert 0.3 <= time.monotonic() - started < 2.0
    assert gone(pid)


# ---------------------------------------------------------------------------------------------------
# Pure mapping helpers
# ---------------------------------------------------------------------------------------------------


def test_unknown_rpc_error_outside_submit_is_a_site_error() -> None:
    class RPCError(Exception):
        errno = 9999

    error = map_error(RPCError("Something odd"), cluster="delta")
    assert type(error) is SiteError
    assert error.cluster == "delta"


@pytest.mark.parametrize(
    ("gres", "expected"),
    [
        ({"gpu:a100": 2}, {"a100": 2}),
        ({"gres/gpu": "2", "gres/gpu:a100": "2"}, {"a100": 2}),
        ({"gpu": 3, "gpu:a100": 1}, {"a100": 1, "gpu": 2}),
        ({"gpu": 2}, {"gpu": 2}),
        ({"gpu:a100": {"count": 2, "indexes": "0-1"}}, {"a100": 2}),
        ({"nic": 1, "gpu:h100": "x"}, {}),
    ],
)
def test_gpu_counts(gres: dict[str, object], expected: dict[str, int]) -> None:
    assert gpu_counts(gres) == expected


def test_tres_mapping_flattens_pyslurm_objects() -> None:
    class Count:
        def __init__(self, count: int) -> None:
            self.count = count

    class Tres:
        def to_dict(self, flatten_limits: bool = False) -> dict[str, object]:
            assert flatten_limits
            return {"cpu": Count(2), "mem": Count(1000), "energy": None}

    assert tres_mapping(Tres()) == {"cpu": "2", "mem": "1000"}
    assert tres_mapping(None) == {}
