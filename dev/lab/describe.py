"""The machine-readable lab description (see dev/LAB-DESCRIPTION.md): lab.json, host and chroot views."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dev.lab.layout import ClusterLayout, lab_root
from dev.lab.topology import LAB_ACCOUNTS, SUBMIT_USERS


def cluster_entry(site: ClusterLayout, release: str, *, inside_view: bool) -> dict[str, Any]:
    """One cluster as seen from the host, or (``inside_view``) from inside its own chroot."""
    c = site.cluster

    def host_or_inside(inside: Path) -> str:
        return str(inside if inside_view else site.host(inside))

    gpus_by_node = {n.name: ({n.gpu_type: n.gpus} if n.gpu_type else {}) for n in c.nodes}
    return {
        "name": c.name,
        "purpose": c.purpose,
        "release": release,
        "suite": site.suite,
        "chroot": None if inside_view or site.chroot is None else str(site.chroot),
        "fs_root": "/" if inside_view else str(site.fs_root),
        "exec_prefix": [] if inside_view else site.exec_prefix,
        "slurm_conf": str(site.slurm_conf),
        "cluster_dir": str(site.inside_dir),
        "scratch_dir": str(site.scratch),
        "slurm_user": "root",
        "operator_user": "root",
        "slurmctld": {
            "host": "127.0.0.1",
            "port": c.ctld_port,
            "pid_file": host_or_inside(site.inside_pid_file("slurmctld")),
        },
        "rest": {
            "url": f"http://127.0.0.1:{c.rest_port}",
            "pid_file": host_or_inside(site.inside_pid_file("slurmrestd")),
        },
        "jwt_key_file": host_or_inside(site.jwt_key),
        "enforce_part_limits": "ALL" if c.enforce_part_limits else "NO",
        "accounting": c.accounting,
        # Accounts Slurm knows and enforces; empty where any account string is accepted (no slurmdbd).
        "accounts": list(LAB_ACCOUNTS) if c.accounting else [],
        "qos": ["normal"] if c.accounting else [],
        "private_data": list(c.private_data),
        "min_job_age_s": c.min_job_age_s,
        "message_timeout_s": c.message_timeout_s,  # slurm.conf's MessageTimeout
        # A chroot's own view marks its clusters expendable: the run inside it is their only user meanwhile.
        "expendable": c.expendable or inside_view,
        "country": c.country,
        "partitions": [
            {
                "name": p.name,
                "default": p.default,
                "max_time_min": p.max_time_min,
                "default_time_min": p.default_time_min,
                "nodes": list(p.nodes),
                "gpus": _sum_gpus(gpus_by_node[n] for n in p.nodes),
            }
            for p in c.partitions
        ],
        "nodes": [
            {"name": n.name, "cpus": n.cpus, "memory_mb": n.memory_mb, "gpus": gpus_by_node[n.name], "port": n.port}
            for n in c.nodes
        ],
        "gpu_types": list(c.gpu_types),
    }


def _sum_gpus(per_node: Any) -> dict[str, int]:
    total: dict[str, int] = {}
    for gpus in per_node:
        for gpu_type, count in gpus.items():
            total[gpu_type] = total.get(gpu_type, 0) + count
    return total


def write(sites: list[tuple[ClusterLayout, str]], host_suite: str) -> Path:
    """Write lab.json (host view) and, in each chroot, the view of its own clusters."""
    base = {"schema": 1, "lab_root": str(lab_root()), "host_suite": host_suite, "submit_users": SUBMIT_USERS}
    path = lab_root() / "lab.json"
    doc = {**base, "clusters": {s.cluster.name: cluster_entry(s, r, inside_view=False) for s, r in sites}}
    _write_json(path, doc)
    for chroot in {s.chroot for s, _ in sites if s.chroot is not None}:
        inside = {s.cluster.name: cluster_entry(s, r, inside_view=True) for s, r in sites if s.chroot == chroot}
        _write_json(chroot / "slurmlab/lab.json", {**base, "clusters": inside})
    return path


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)
