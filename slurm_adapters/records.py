"""What crosses the adapter boundary: the Slurm job an adapter submits and what Slurm says back.

Release-independent: every adapter renders a :class:`SlurmJobSpec` and parses Slurm's answers into these records,
so the broker and the agent never see a release's own shapes.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class SlurmJobSpec:
    """What to run and on what, in Slurm's vocabulary but independent of any Slurm release.

    Paths are as seen by the cluster's compute nodes. ``memory_mb`` is per node; ``time_limit_min``
    is Slurm's minutes. ``tasks`` is the job's total; ``tasks_per_node`` (None: Slurm lays the tasks out as
    it likes) fixes how many of them each node runs, as sbatch's ``--ntasks-per-node``. ``tag`` is the
    broker's own job id: it travels in Slurm's comment field so that a job can be found again after a crash
    without Slurm knowing about idempotency. ``requeue`` is sbatch's ``--requeue`` (True) or ``--no-requeue``
    (False); None leaves it to the cluster's JobRequeue.
    """

    name: str
    script: str
    working_directory: str
    tag: str
    stdout: str | None = None
    stderr: str | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: int = 1
    tasks: int = 1
    tasks_per_node: int | None = None
    cpus_per_task: int = 1
    memory_mb: int | None = None
    gpus_per_node: int = 0
    gpu_type: str | None = None
    time_limit_min: int | None = None
    requeue: bool | None = None


@dataclass(frozen=True, slots=True)
class SubmitContext:
    """What a submit is part of: the broker's attempt, until when its call may still be running, and for whom.

    ``not_after`` is the attempt's hand-out window's end: no adapter starts a submit whose own deadline would
    end after it (it raises :class:`~slurm_adapters.errors.ClusterUnavailable`, not applied), so once it has
    passed (plus Slurm's MessageTimeout and the clock skew) the attempt can be looked up and settled.
    ``attempt`` is ``"<job id>/<attempt number>"``; the requester fields say on whose behalf (a site's agent
    may decide by them). ``secret_names``: the entries of the spec's environment whose values are secrets, which
    whoever stores the submit on its way (the broker's order to a Factory agent) keeps encrypted.
    """

    attempt: str
    not_after: datetime
    requester_user: str
    requester_project: str
    requester_antenna: str | None = None
    secret_names: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Rendering:
    """What :meth:`SlurmAdapter.submit` would send, for dry runs and for tests of the renderers.

    ``payload`` is the adapter's own wire form: the JSON body for slurmrestd, the argv list for the CLI,
    the description dict for pyslurm. ``script`` is the batch script exactly as Slurm receives it.
    """

    adapter: str
    user: str
    script: str
    payload: Any


# ---------------------------------------------------------------------------------------------------
# The normalized job record
# ---------------------------------------------------------------------------------------------------


class SlurmJobState(enum.StrEnum):
    """Slurm's base job states (``JOB_STATE_BASE`` plus the flags that matter to a broker)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUSPENDED = "SUSPENDED"
    COMPLETING = "COMPLETING"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"
    PREEMPTED = "PREEMPTED"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    REQUEUED = "REQUEUED"
    UNKNOWN = "UNKNOWN"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL_STATES

    @classmethod
    def parse(cls, raw: str | Collection[str] | None) -> SlurmJobState:
        """Map Slurm's state, a string on 22.05 and a list of flags on 24.11+, to one base state.

        A COMPLETING flag wins over the base state beside it (["CANCELLED", "COMPLETING"]), as scontrol and
        22.05 report it: the exit code is not final until the job's processes are gone.
        """
        if raw is None:
            return cls.UNKNOWN
        # "CANCELLED by 1001" (squeue text) reduces to its first token.
        heads = [word.split()[0].upper() for word in ([raw] if isinstance(raw, str) else raw) if word.strip()]
        if "COMPLETING" in heads:
            return cls.COMPLETING
        return next((cls[head] for head in heads if head in cls.__members__), cls.UNKNOWN)


_TERMINAL_STATES = frozenset(
    {
        SlurmJobState.COMPLETED,
        SlurmJobState.CANCELLED,
        SlurmJobState.FAILED,
        SlurmJobState.TIMEOUT,
        SlurmJobState.NODE_FAIL,
        SlurmJobState.PREEMPTED,
        SlurmJobState.BOOT_FAIL,
        SlurmJobState.DEADLINE,
        SlurmJobState.OUT_OF_MEMORY,
    }
)

# Pending reasons that no amount of waiting will clear: the job can never start as submitted.
# (Slurm's own names, as squeue and slurmrestd print them.)
NEVER_CLEARING_REASONS = frozenset(
    {
        "PartitionTimeLimit",
        "PartitionNodeLimit",
        "PartitionConfig",
        "PartitionDown",  # an operator may bring it up, but the broker must not wait silently on it
        "InvalidAccount",
        "InvalidQOS",
        "QOSMaxWallDurationPerJobLimit",
        "QOSMaxGRESPerJob",
        "AccountNotAllowed",
        "QOSNotAllowed",
        "BadConstraints",
        "DependencyNeverSatisfied",
    }
)


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One Slurm job as the broker needs to see it, whatever adapter or release produced it."""

    job_id: int
    tag: str | None
    state: SlurmJobState
    raw_state: str
    reason: str | None
    exit_code: int | None
    signal: int | None
    submit_time: datetime | None
    start_time: datetime | None
    end_time: datetime | None
    nodes: str | None
    user: str | None
    name: str | None = None
    partition: str | None = None
    time_limit_min: int | None = None
    stdout: str | None = None
    stderr: str | None = None
    allocated_tres: Mapping[str, str] = field(default_factory=dict)
    elapsed_s: int | None = None  # run time as Slurm accounts it (slurmdbd records carry it)

    def observed(self) -> JobRecord:
        """This record without Slurm's projections: no start while pending, no end before the job ended,
        no TRES before it has any. A record says when things happened, whichever adapter made it."""
        changes: dict[str, Any] = {}
        if self.state in {SlurmJobState.PENDING, SlurmJobState.UNKNOWN}:
            changes["start_time"] = None
        if not self.state.is_terminal:
            changes["end_time"] = None
        if self.state is SlurmJobState.PENDING:
            changes["allocated_tres"] = {}
        return replace(self, **changes) if changes else self

    @property
    def never_starts(self) -> bool:
        """A pending job whose reason can never clear (e.g. over the partition's MaxTime)."""
        return self.state is SlurmJobState.PENDING and self.reason in NEVER_CLEARING_REASONS


# ---------------------------------------------------------------------------------------------------
# Cluster description
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    name: str
    default: bool | None  # None: this API cannot tell (slurmrestd's v0.0.40-42 partitions carry no such flag)
    state: str
    max_time_min: int | None  # None = INFINITE
    default_time_min: int | None
    nodes: tuple[str, ...]
    total_cpus: int
    total_gpus: Mapping[str, int]  # GPU type -> count over the partition's nodes


@dataclass(frozen=True, slots=True)
class NodeInfo:
    name: str
    state: str
    cpus: int
    alloc_cpus: int
    memory_mb: int
    partitions: tuple[str, ...]
    gpus: Mapping[str, int]  # GPU type -> configured count
    gpus_used: Mapping[str, int]  # GPU type -> allocated count


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    cluster: str
    release: str | None
    partitions: tuple[PartitionInfo, ...]
    nodes: tuple[NodeInfo, ...]

    def gpu_totals(self) -> dict[str, tuple[int, int]]:
        """GPU type -> (total, free) over all nodes."""
        totals: dict[str, tuple[int, int]] = {}
        for node in self.nodes:
            for gpu_type, count in node.gpus.items():
                total, free = totals.get(gpu_type, (0, 0))
                used = node.gpus_used.get(gpu_type, 0)
                totals[gpu_type] = (total + count, free + max(count - used, 0))
        return totals


@dataclass(frozen=True, slots=True)
class Health:
    """An authenticated round trip's outcome, with what it told about the controller.

    ``up_since`` is a time since which slurmctld has certainly run without a restart: its boot time where the
    adapter can read it (cli: ``scontrol show config``; pyslurm: its config), else the start of its statistics
    (rest: slurmrestd serves no boot time), which Slurm also resets daily at midnight UTC and on ``sdiag
    --reset``, so it is never before the last start but may be well after it. None where the adapter cannot
    tell, which includes the first second or two after slurmctld starts (its statistics start is still 0
    then, measured on 22.05). ``accounting_backlog`` is how many messages slurmctld still holds for slurmdbd
    (0 where there is none; None: unknown): until it is 0, slurmdbd may miss recent jobs.
    """

    ok: bool
    detail: str
    release: str | None = None
    up_since: datetime | None = None
    accounting_backlog: int | None = None


OutputStream = Literal["stdout", "stderr"]

# The most one ranged read of a job's output returns, whatever it asks for.
MAX_OUTPUT_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class OutputChunk:
    """Bytes of a job's output file from ``offset``: ``size`` is the file's size when read (``data`` never
    reaches past it) and ``eof`` whether ``offset + len(data)`` reached that size. An offset at or past the
    end gives no data and ``eof``."""

    data: bytes
    offset: int
    size: int
    eof: bool


# ---------------------------------------------------------------------------------------------------
