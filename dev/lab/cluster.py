"""Bring one lab cluster up (keys, configs, munged, slurmctld, one slurmd per node, slurmrestd) and down."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
from pathlib import Path

from dev.lab import accounting, commands, procs, slurmconf
from dev.lab.commands import READY_TIMEOUT_S, Slurmd, client_env, launch_ctld, munged_argv, passwd_ids
from dev.lab.layout import ClusterLayout
from dev.lab.topology import REST_USER


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def prepare(site: ClusterLayout, release: str, *, fresh: bool) -> None:
    """Directories, keys, fake GPU devices and config files; ``fresh`` wipes Slurm's state and logs."""
    host_dir = site.host_dir
    if fresh:
        for sub in ("state", "spool", "log"):
            shutil.rmtree(host_dir / sub, ignore_errors=True)
    for sub in ("state", "spool", "log", "dev"):
        (host_dir / sub).mkdir(parents=True, exist_ok=True)
    scratch = site.host(site.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    scratch.chmod(0o1777)

    munge_dir = site.host(site.munge_socket.parent)
    munge_dir.mkdir(parents=True, exist_ok=True)
    munge_uid, munge_gid = passwd_ids(site.fs_root, "munge")
    os.chown(munge_dir, munge_uid, munge_gid)
    munge_dir.chmod(0o755)
    key = munge_dir / "munge.key"
    if not key.exists():
        key.write_bytes(secrets.token_bytes(1024))
    os.chown(key, munge_uid, munge_gid)
    key.chmod(0o600)

    jwt_key = site.host(site.jwt_key)
    if not jwt_key.exists():
        jwt_key.write_bytes(secrets.token_bytes(32))
    jwt_key.chmod(0o600)

    for device in slurmconf.gpu_device_names(site):
        path = host_dir / "dev" / device
        if not path.exists():
            os.mknod(path, 0o666 | 0o020000, os.makedev(1, 3))  # a character device that acts as /dev/null

    _write(host_dir / "slurm.conf", slurmconf.slurm_conf(site, release))
    _write(host_dir / "gres.conf", slurmconf.gres_conf(site))
    cgroup = slurmconf.cgroup_conf(release)
    if cgroup:
        _write(host_dir / "cgroup.conf", cgroup)


def _munged(site: ClusterLayout) -> None:
    sock = site.munge_socket
    argv = munged_argv(site.exec_prefix, sock, num_threads=4)
    site.host(sock).unlink(missing_ok=True)
    procs.spawn(site.pid_file("munged"), argv, site.host_dir / "log/munged.out")
    if not procs.wait_ready(site.pid_file("munged"), lambda: site.host(sock).exists(), READY_TIMEOUT_S):
        raise SystemExit(f"{site.cluster.name}: munged did not create {sock}")


def start_ctld(site: ClusterLayout, *, fresh: bool) -> None:
    log = site.host_dir / "log/slurmctld.out"
    launch_ctld(site.exec_prefix, site.slurm_conf, site.pid_file("slurmctld"), log, fresh=fresh)


def restart_ctld(site: ClusterLayout) -> None:
    """slurmctld back on its saved state after it died, with fresh slurmds (see :func:`commands.restart_ctld`)."""
    log = site.host_dir / "log/slurmctld.out"
    commands.restart_ctld(site.exec_prefix, site.slurm_conf, site.pid_file("slurmctld"), log, _slurmd_entries(site))


def _slurmd_entries(site: ClusterLayout) -> list[Slurmd]:
    return [
        Slurmd(n.name, site.pid_file(f"slurmd-{n.name}"), site.host_dir / f"log/slurmd-{n.name}.out")
        for n in site.cluster.nodes
    ]


def _slurmds(site: ClusterLayout) -> float:
    return commands.launch_slurmds(site.exec_prefix, site.slurm_conf, _slurmd_entries(site))


def nodes_registered_since(site: ClusterLayout, since: float) -> bool:
    """Every node's slurmd registered after ``since``: sinfo's "idle" can come from saved state."""
    return commands.nodes_registered_since(site.exec_prefix, site.slurm_conf, len(site.cluster.nodes), since)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _slurmrestd(site: ClusterLayout, release: str) -> None:
    port = site.cluster.rest_port
    argv = _slurmrestd_argv(site, release)
    (site.host_dir / "slurmrestd.argv").write_text(" ".join(argv) + "\n")
    env = {**client_env(site), "SLURM_JWT": "daemon"}
    procs.spawn(site.pid_file("slurmrestd"), argv, site.host_dir / "log/slurmrestd.out", env)
    if not procs.wait_ready(site.pid_file("slurmrestd"), lambda: _port_open(port), READY_TIMEOUT_S):
        raise SystemExit(f"{site.cluster.name}: slurmrestd is not listening on 127.0.0.1:{port}")


def _slurmrestd_argv(site: ClusterLayout, release: str) -> list[str]:
    plugins = slurmconf.rest_plugins(release, accounting=site.cluster.accounting)
    return [
        *site.exec_prefix,
        "setpriv", f"--reuid={REST_USER}", f"--regid={REST_USER}", "--init-groups",
        "slurmrestd", "-a", "rest_auth/jwt", "-s", plugins, f"127.0.0.1:{site.cluster.rest_port}",
    ]  # fmt: skip


def daemon_names(site: ClusterLayout) -> list[str]:
    return ["slurmrestd", *(f"slurmd-{n.name}" for n in site.cluster.nodes), "slurmctld", "munged"]


def is_up(site: ClusterLayout) -> bool:
    return all(procs.recorded_pid(site.pid_file(d)) is not None for d in daemon_names(site))


def is_current(site: ClusterLayout, release: str) -> bool:
    """Up, and running the configuration this checkout would write (else a start must restart it)."""
    try:
        written = (site.host_dir / "slurm.conf").read_text()
        rest_argv = (site.host_dir / "slurmrestd.argv").read_text()
    except OSError:
        return False
    return (
        is_up(site)
        and written == slurmconf.slurm_conf(site, release)
        and rest_argv == " ".join(_slurmrestd_argv(site, release)) + "\n"
        and (not site.cluster.accounting or accounting.slurmdbd_conf_is_current(site))
    )


def start(site: ClusterLayout, release: str) -> None:
    """A fresh cluster: wiped state, then every daemon, ready when every slurmd has registered."""
    stop(site)
    prepare(site, release, fresh=True)
    _munged(site)
    if site.cluster.accounting:
        accounting.start_slurmdbd(site)
    start_ctld(site, fresh=True)
    since = _slurmds(site)
    if not procs.wait_for(lambda: nodes_registered_since(site, since), READY_TIMEOUT_S):
        raise SystemExit(f"{site.cluster.name}: not every slurmd registered; see {site.host_dir}/log")
    _slurmrestd(site, release)


def stop(site: ClusterLayout) -> None:
    for daemon in daemon_names(site):
        procs.stop(site.pid_file(daemon))
    if site.cluster.accounting:
        accounting.stop_slurmdbd(site)
