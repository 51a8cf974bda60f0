"""slurm.conf, gres.conf, cgroup.conf and slurmdbd.conf for one lab cluster.

Settings are the ones SLURM-LAB.md measured to work on these machines, plus what the tests need:
batch_sched_delay=0 (jobs start at once), a low KillWait (time-outs end quickly), MaxJobCount far above
10,000, DisableRootJobs, finite MaxTime and a DefaultTime on every partition, and a shorter MessageTimeout on
the expendable cluster only (its Factory entry says the same; see dev/lab/topology.py).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable

from dev.lab.layout import ClusterLayout
from dev.lab.topology import MARIADB_PORT, SLURM_DEFAULT_MESSAGE_TIMEOUT_S, SLURMDBD_PORT, Node


def _release_at_least(release: str, major: int, minor: int) -> bool:
    parts = release.split(".")
    return (int(parts[0]), int(parts[1])) >= (major, minor)


def _node_line(node: Node, hostname: str) -> str:
    gres = f" Gres=gpu:{node.gpu_type}:{node.gpus}" if node.gpu_type else ""
    return (
        f"NodeName={node.name} NodeHostname={hostname} NodeAddr=127.0.0.1 Port={node.port} "
        f"CPUs={node.cpus} Boards=1 SocketsPerBoard=1 CoresPerSocket={node.cpus} ThreadsPerCore=1 "
        f"RealMemory={node.memory_mb}{gres} State=UNKNOWN"
    )


def slurm_conf(site: ClusterLayout, release: str) -> str:
    c = site.cluster
    d = site.inside_dir
    hostname = socket.gethostname()
    lines = [
        f"# Conveyor lab cluster {c.name}: {c.purpose}",
        "# Written by `python3 -m dev.lab start`; edits are overwritten.",
        f"ClusterName={c.name}",
        f"SlurmctldHost={hostname}(127.0.0.1)",
        f"SlurmctldPort={c.ctld_port}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={site.munge_socket}",
        "AuthAltTypes=auth/jwt",
        f"AuthAltParameters=jwt_key={site.jwt_key}",
        f"StateSaveLocation={d}/state",
        f"SlurmdSpoolDir={d}/spool/%n",
        f"SlurmctldPidFile={d}/slurmctld.pid",
        f"SlurmdPidFile={d}/slurmd-%n.pid",
        f"SlurmctldLogFile={d}/log/slurmctld.log",
        f"SlurmdLogFile={d}/log/slurmd-%n.log",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobCompType=jobcomp/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "DefMemPerCPU=500",
        "SchedulerType=sched/backfill",
        "SchedulerParameters=batch_sched_delay=0",
        "SlurmdParameters=config_overrides",
        "MpiDefault=none",
        "ReturnToService=2",
        f"MinJobAge={c.min_job_age_s}",
        "MaxJobCount=60000",
        "KillWait=2",
        "OverTimeLimit=0",
        "DisableRootJobs=YES",
        "MailProg=/bin/true",
        "GresTypes=gpu",
    ]
    if c.message_timeout_s != SLURM_DEFAULT_MESSAGE_TIMEOUT_S:
        # Only where it differs: a cluster whose slurm.conf is unchanged is not restarted by `dev.lab start`.
        lines.append(f"MessageTimeout={c.message_timeout_s}")
    if c.enforce_part_limits:
        lines.append("EnforcePartLimits=ALL")
    if c.private_data:
        lines.append(f"PrivateData={','.join(c.private_data)}")
    if c.accounting:
        lines += [
            "AccountingStorageType=accounting_storage/slurmdbd",
            "AccountingStorageHost=127.0.0.1",
            f"AccountingStoragePort={SLURMDBD_PORT}",
            f"AccountingStoragePass={site.munge_socket}",  # munge socket for slurmdbd connections
            "AccountingStorageTRES=gres/gpu",
            "AccountingStorageEnforce=associations,limits,qos",
            "AccountingStoreFlags=job_comment",  # sacct keeps the broker's tag
            "JobAcctGatherType=jobacct_gather/linux",
            "JobAcctGatherFrequency=30",
        ]
    else:
        lines += ["AccountingStorageType=accounting_storage/none", "JobAcctGatherType=jobacct_gather/none"]
    lines += [_node_line(n, hostname) for n in c.nodes]
    for p in c.partitions:
        lines.append(
            f"PartitionName={p.name} Nodes={','.join(p.nodes)} Default={'YES' if p.default else 'NO'} "
            f"MaxTime={p.max_time_min} DefaultTime={p.default_time_min} State=UP"
        )
    return "\n".join(lines) + "\n"


def gres_conf(site: ClusterLayout) -> str:
    lines = ["AutoDetect=off"]
    for node in site.cluster.nodes:
        if node.gpu_type:
            files = f"{site.inside_dir}/dev/{node.name}-nvidia[0-{node.gpus - 1}]"
            lines.append(f"NodeName={node.name} Name=gpu Type={node.gpu_type} File={files}")
    return "\n".join(lines) + "\n"


def cgroup_conf(release: str) -> str | None:
    """24.11+ slurmd refuses to start without cgroups unless the plugin is disabled."""
    if _release_at_least(release, 23, 11):
        return "CgroupPlugin=disabled\n"
    return None


def slurmdbd_conf(site: ClusterLayout, password: str) -> str:
    d = site.inside_dir
    return "\n".join(
        [
            "AuthType=auth/munge",
            f"AuthInfo=socket={site.munge_socket}",
            # slurmrestd forwards each caller's JWT: without this, its /slurmdb routes are refused.
            "AuthAltTypes=auth/jwt",
            f"AuthAltParameters=jwt_key={site.jwt_key}",
            "DbdAddr=127.0.0.1",
            "DbdHost=localhost",
            f"DbdPort={SLURMDBD_PORT}",
            "SlurmUser=root",
            "StorageType=accounting_storage/mysql",
            "StorageHost=127.0.0.1",
            f"StoragePort={MARIADB_PORT}",
            "StorageUser=slurm",
            f"StoragePass={password}",
            "StorageLoc=slurm_acct_db",
            f"LogFile={d}/log/slurmdbd.log",
            f"PidFile={d}/slurmdbd.pid",
            "",
        ]
    )


def gpu_device_names(site: ClusterLayout) -> Iterable[str]:
    for node in site.cluster.nodes:
        for i in range(node.gpus):
            yield f"{node.name}-nvidia{i}"


def rest_plugins(release: str, *, accounting: bool) -> str:
    """The OpenAPI plugins slurmrestd loads: 22.05 must be told (its default needs slurmdbd); a cluster with
    slurmdbd also serves the ``/slurmdb`` routes, where finished jobs stay after slurmctld forgets them."""
    if _release_at_least(release, 23, 11):
        return "openapi/slurmctld,openapi/slurmdbd" if accounting else "openapi/slurmctld"
    return "openapi/v0.0.38,openapi/dbv0.0.38" if accounting else "openapi/v0.0.38"
