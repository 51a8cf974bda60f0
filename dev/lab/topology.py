"""The lab's clusters: what each one is for, and the facts every other lab module derives from.

Each cluster stands for one AI Factory. Together they cover what the adapters must absorb: three Slurm
releases (the host's own plus Debian chroots for the other two), several nodes with fake GPUs of two types,
EnforcePartLimits=ALL on some clusters and Slurm's default on others, one cluster with slurmdbd accounting,
and one cluster of its own that tests may kill.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SUITE_RELEASES = {"bookworm": "22.05", "trixie": "24.11", "sid": "26.05"}
SUITES = tuple(SUITE_RELEASES)

SUBMIT_USERS = {"alice": 1001, "bob": 1002}
# Slurm accounts on the accounting cluster (others take any account string). Site accounts differ from
# EuroHPC project ids in real life too (project_465000123, ehpc123, ...).
LAB_ACCOUNTS = ("ehpc-aif-test", "ehpc-aif-other")
REST_USER = "slurmrest"  # slurmrestd must not run as root or SlurmUser
SLURM_DEFAULT_MESSAGE_TIMEOUT_S = 10  # Slurm's own MessageTimeout when slurm.conf does not set one


@dataclass(frozen=True)
class Node:
    name: str
    port: int
    cpus: int
    memory_mb: int
    gpu_type: str | None = None
    gpus: int = 0


@dataclass(frozen=True)
class Partition:
    name: str
    nodes: tuple[str, ...]
    max_time_min: int
    default_time_min: int
    default: bool = False


@dataclass(frozen=True)
class Cluster:
    """One Factory of the lab. ``placement`` is "host" or "chroot:N" (the N-th suite the host lacks)."""

    name: str
    placement: str
    country: str
    ctld_port: int
    rest_port: int
    nodes: tuple[Node, ...]
    partitions: tuple[Partition, ...]
    enforce_part_limits: bool
    accounting: bool = False
    private_data: tuple[str, ...] = ()
    min_job_age_s: int = 300
    expendable: bool = False  # tests may SIGKILL its slurmctld
    # Slurm's MessageTimeout; its Factory entry says the same (the broker's settle window is built on it).
    message_timeout_s: int = SLURM_DEFAULT_MESSAGE_TIMEOUT_S
    purpose: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def gpu_types(self) -> tuple[str, ...]:
        return tuple(sorted({n.gpu_type for n in self.nodes if n.gpu_type}))


def _gpu_node(name: str, port: int, gpu_type: str, gpus: int) -> Node:
    return Node(name, port, cpus=8, memory_mb=16000, gpu_type=gpu_type, gpus=gpus)


def _cpu_node(name: str, port: int, cpus: int = 4) -> Node:
    return Node(name, port, cpus=cpus, memory_mb=8000)


CLUSTERS: tuple[Cluster, ...] = (
    Cluster(
        name="alpha",
        placement="host",
        country="IT",
        ctld_port=6817,
        rest_port=6820,
        nodes=(
            _gpu_node("gn1", 6841, "a100", 4),
            _gpu_node("gn2", 6842, "a100", 4),
            _cpu_node("cn1", 6843),
            _cpu_node("cn2", 6844),
        ),
        partitions=(
            Partition("cpu", ("cn1", "cn2"), max_time_min=60, default_time_min=10, default=True),
            Partition("gpu", ("gn1", "gn2"), max_time_min=120, default_time_min=30),
        ),
        enforce_part_limits=True,
        accounting=True,
        private_data=("jobs",),
        purpose="multi-node A100 Factory with slurmdbd accounting (associations and QOS enforced), PrivateData=jobs",
    ),
    Cluster(
        name="bravo",
        placement="host",
        country="ES",
        ctld_port=6827,
        rest_port=6830,
        nodes=(_gpu_node("hn1", 6851, "h100", 2), _cpu_node("cn1", 6852)),
        partitions=(
            Partition("cpu", ("cn1",), max_time_min=30, default_time_min=5, default=True),
            Partition("gpu", ("hn1",), max_time_min=90, default_time_min=20),
        ),
        enforce_part_limits=False,
        purpose="H100 Factory with Slurm's default EnforcePartLimits (over-limit jobs pend for ever)",
    ),
    Cluster(
        name="charlie",
        placement="chroot:0",
        country="FI",
        ctld_port=6857,
        rest_port=6860,
        nodes=(_gpu_node("gn1", 6858, "h100", 2), _cpu_node("cn1", 6859)),
        partitions=(
            Partition("cpu", ("cn1",), max_time_min=45, default_time_min=10, default=True),
            Partition("gpu", ("gn1",), max_time_min=90, default_time_min=15),
        ),
        enforce_part_limits=True,
        purpose="the other stable Debian release's Slurm, in a chroot",
    ),
    Cluster(
        name="delta",
        placement="chroot:1",
        country="DE",
        ctld_port=6867,
        rest_port=6870,
        nodes=(_gpu_node("gn1", 6868, "a100", 2), _cpu_node("cn1", 6869)),
        partitions=(
            Partition("cpu", ("cn1",), max_time_min=60, default_time_min=10, default=True),
            Partition("gpu", ("gn1",), max_time_min=120, default_time_min=30),
        ),
        enforce_part_limits=False,
        purpose="Debian sid's Slurm (26.05) in a chroot; the pyslurm adapter runs here",
    ),
    Cluster(
        name="echo",
        placement="host",
        country="LU",
        ctld_port=6877,
        rest_port=6880,
        nodes=(_cpu_node("cn1", 6878, cpus=8),),
        partitions=(Partition("cpu", ("cn1",), max_time_min=30, default_time_min=5, default=True),),
        enforce_part_limits=False,
        expendable=True,
        # Shorter than Slurm's 10 s: every attempt the fault tests leave in doubt is settled this much sooner.
        # Still above AMBIGUOUS_SLOW_S (slurm_adapters/rest/errors.py), which tells a dead slurmctld (slurmrestd
        # retries it about MessageTimeout - 1 s) from a rejected token (at once).
        message_timeout_s=5,
        purpose="a small cluster of its own that fault tests may SIGKILL",
    ),
)

SLURMDBD_PORT = 6919
MARIADB_PORT = 3307


def chroot_suites(host_suite: str) -> tuple[str, ...]:
    """The suites the lab builds chroots for: every supported one but the host's, oldest first.

    sid always comes last, so "chroot:1" is always sid (26.05): the release pyslurm builds against.
    """
    return tuple(s for s in SUITES if s != host_suite)


def cluster_suite(cluster: Cluster, host_suite: str) -> str:
    if cluster.placement == "host":
        return host_suite
    index = int(cluster.placement.split(":", 1)[1])
    return chroot_suites(host_suite)[index]
