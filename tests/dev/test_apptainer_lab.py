"""Apptainer in batch jobs on the lab's sid-root cluster (delta), as an unprivileged lab user.

One batch job on the GPU partition runs the lab's test image (dev/lab/images.py, a sandbox directory with an
os-release of its own) with ``apptainer exec --nv``, binding the directory of the fake GPU device files that
Slurm's gres.conf names, and again with ``--containall``. What it prints outside and inside the container is
compared: the image's own files are seen (not the root's), CUDA_VISIBLE_DEVICES reaches the container as Slurm set
it (``--containall`` drops it unless passed with ``--env``), and the GPU device files are there. What was measured
around it is in docs/containers-lab.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from dev.lab.images import TEST_IMAGE, TEST_IMAGE_ID, host_path
from slurm_adapters.records import SlurmJobState
from tests.lab import SUBMIT_USER, Cluster, clusters, job_dir, new_tag, wait_until

pytestmark = pytest.mark.lab

JOB_TIMEOUT_S = 120.0
OS_RELEASE_ID = re.compile(r"^ID=(.*)$", re.MULTILINE)


@dataclass(frozen=True)
class JobRun:
    """One finished job: its id, Slurm's record of it, and its output split at the script's ``== name`` lines."""

    job_id: int
    record: dict[str, str]
    sections: dict[str, str]


def _apptainer_cluster() -> Cluster:
    """The lab cluster of the root Apptainer is installed in (sid's), with a GPU partition."""
    for cluster in clusters():
        if cluster.raw.get("suite") == "sid" and cluster.gpu_partition is not None:
            return cluster
    pytest.skip("the lab has no cluster in a sid root with a GPU partition")


def gres_files(gres_conf: str, node: str) -> list[str]:
    """The device files gres.conf names for ``node`` (``File=/dir/name[0-1]`` expanded)."""
    files: list[str] = []
    for line in gres_conf.splitlines():
        fields = dict(field.split("=", 1) for field in line.split() if "=" in field)
        if fields.get("NodeName") != node or "File" not in fields:
            continue
        ranged = re.fullmatch(r"(.*)\[(\d+)-(\d+)\]", fields["File"])
        if ranged is None:
            files.append(fields["File"])
        else:
            prefix, first, last = ranged[1], int(ranged[2]), int(ranged[3])
            files.extend(f"{prefix}{index}" for index in range(first, last + 1))
    return files


def batch_script(image: str, devices: list[str]) -> str:
    """The job: what Slurm gave it outside, then the same seen from inside the image, three ways."""
    bind = sorted({str(Path(device).parent) for device in devices})
    binds = " ".join(f"--bind {directory}:{directory}:ro" for directory in bind)
    listing = " ".join(devices)
    plain = "cat /etc/os-release; echo CVD=${CUDA_VISIBLE_DEVICES-unset}; echo PWD=$(pwd)"
    inside = f"{plain}; ls -l {listing}"
    return f"""#!/bin/sh
echo "== outside"
cat /etc/os-release
echo "CVD=${{CUDA_VISIBLE_DEVICES-unset}}"
echo "NODE=$SLURMD_NODENAME"
echo "== nv"
apptainer exec --nv {binds} {image} sh -c '{inside}' 2>&1
echo "RC=$?"
echo "== containall"
apptainer exec --nv --containall {image} sh -c '{plain}' 2>&1
echo "RC=$?"
echo "== containall-env"
apptainer exec --nv --containall --env CUDA_VISIBLE_DEVICES="$CUDA_VISIBLE_DEVICES" {image} sh -c '{plain}' 2>&1
echo "RC=$?"
"""


def _sections(output: str) -> dict[str, str]:
    sections: dict[str, str] = {}
    name = ""
    for line in output.splitlines():
        if line.startswith("== "):
            name = line[3:].strip()
            sections[name] = ""
        elif name:
            sections[name] += line + "\n"
    return sections


def _value(section: str, key: str) -> str:
    found: list[str] = re.findall(rf"^{key}=(.*)$", section, re.MULTILINE)
    assert len(found) == 1, f"{key}= printed {len(found)} times in:\n{section}"
    return found[0]


def run_job(cluster: Cluster, image: str) -> JobRun:
    """Submit the batch script as the lab user to the GPU partition (one GPU) and wait for Slurm to end it."""
    partition = cluster.gpu_partition
    assert partition is not None
    gpu_type = next(iter(partition["gpus"]))
    node = partition["nodes"][0]
    gres = cluster.host_path(f"{cluster.raw['cluster_dir']}/gres.conf").read_text()
    devices = gres_files(gres, node)
    assert devices, f"gres.conf names no device file for {node}:\n{gres}"
    directory = job_dir(cluster, new_tag("apptainer"))
    cluster.host_path(f"{directory}/job.sh").write_text(batch_script(image, devices))
    out = cluster.slurm(
        "sbatch", "--parsable", f"--uid={SUBMIT_USER}", f"--gid={SUBMIT_USER}", f"--chdir={directory}",
        f"--partition={partition['name']}", f"--nodelist={node}", f"--gres=gpu:{gpu_type}:1", "--time=2",
        "--mem=100", "--output=job.out", "--job-name=cvy-test-apptainer", f"{directory}/job.sh",
    )  # fmt: skip
    job_id = int(out.strip().split(";")[0])
    record: dict[str, str] = {}

    def ended() -> bool:
        record.update(cluster.show_job(job_id))
        return SlurmJobState.parse(record.get("JobState")).is_terminal

    wait_until(ended, JOB_TIMEOUT_S, f"job {job_id} on {cluster.name} to end")
    output = cluster.host_path(f"{directory}/job.out").read_text()
    assert record["JobState"] == "COMPLETED", f"{record}\n{output}"
    assert record["ExitCode"] == "0:0", f"{record}\n{output}"
    return JobRun(job_id, record, _sections(output))


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    found = _apptainer_cluster()
    image = host_path(found.fs_root)
    assert (image / "etc/os-release").is_file(), f"no test image at {image}: run `python3 -m dev.lab start`"
    return found


@pytest.fixture(scope="module")
def job(cluster: Cluster) -> JobRun:
    return run_job(cluster, TEST_IMAGE)


def os_release_id(text: str) -> str:
    found: list[str] = OS_RELEASE_ID.findall(text)
    assert len(found) == 1, f"not one os-release ID in:\n{text}"
    return found[0].strip('"')


def test_nv_job_sees_the_images_files_slurms_gpus_and_the_bound_device_files(cluster: Cluster, job: JobRun) -> None:
    outside, inside = job.sections["outside"], job.sections["nv"]
    assert _value(inside, "RC") == "0", inside
    # the image's own os-release, not the sid root's the batch script printed outside
    assert os_release_id(outside) == "debian", outside
    assert os_release_id(inside) == TEST_IMAGE_ID, inside
    # CUDA_VISIBLE_DEVICES as Slurm set it for the job's one GPU
    slurm_cvd = _value(outside, "CVD")
    assert slurm_cvd not in {"unset", ""}, outside
    assert _value(inside, "CVD") == slurm_cvd, inside
    assert _value(inside, "PWD") == job.record["WorkDir"], inside  # the job's directory is bound and current
    # every GPU device file gres.conf names for the node, as character devices (no device cgroup hides any)
    gres = cluster.host_path(f"{cluster.raw['cluster_dir']}/gres.conf").read_text()
    devices = gres_files(gres, _value(outside, "NODE"))
    assert devices
    for device in devices:
        assert re.search(rf"^c\S+ .* {re.escape(device)}$", inside, re.MULTILINE), f"{device} missing:\n{inside}"


def test_containall_drops_cuda_visible_devices_unless_passed_with_env(job: JobRun) -> None:
    outside, bare, passed = job.sections["outside"], job.sections["containall"], job.sections["containall-env"]
    for inside in (bare, passed):
        # delta's daemons predate the lab's /dev/pts mount in the root: restart the lab (docs/containers-lab.md)
        assert "multiple devpts instances unsupported" not in inside, inside
        assert _value(inside, "RC") == "0", inside
        assert os_release_id(inside) == TEST_IMAGE_ID, inside
        assert _value(inside, "PWD") == f"/home/{SUBMIT_USER}", inside  # not the job's directory
    assert _value(bare, "CVD") == "unset", bare
    assert _value(passed, "CVD") == _value(outside, "CVD"), passed
