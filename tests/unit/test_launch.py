"""The compiled batch script: containers, launchers and output paths, run by a real bash over recording stubs.

The stubs stand in for srun, apptainer, sinfo and scontrol (this is pure logic: the lab tests run the real
ones). Each records the argv it received, so a test sees exactly the words the shell made of the script.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from broker.factories.containers import ContainerRuntime
from broker.factories.placement import FactoryStatus, PlacementError, place
from broker.factories.registry import FactoryConfigError, FactoryRegistry, parse_factories
from broker.jobs.launch import MASTER_PORT_BASE, MASTER_PORT_SPAN, batch_script
from broker.jobs.translate import TranslationError, output_file, to_slurm_spec
from conveyor.problems import PlacementCode
from conveyor.spec import JobSpec

NASTY = ["a b", "$(touch pwned)", "it's", "; rm -rf /", "`id`", "\\n", "*", "$HOME", "x\ny"]
APPTAINER = ContainerRuntime(runtime="apptainer", images=("/opt/images/*",), containall=True)
RECORDER = """#!/usr/bin/env python3
import json, os, sys
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\\n")
"""
# apptainer's stub runs what follows the image, as the real one does inside it, with each APPTAINERENV_ value
# evaluated inside double quotes by a shell, as Apptainer's injection script does (measured: it escapes only
# double quotes, so $(...) runs and a trailing backslash breaks it, docs/containers-lab.md).
APPTAINER_STUB = (
    RECORDER
    + """
import subprocess
for key, value in list(os.environ.items()):
    if key.startswith("APPTAINERENV_") and key != "APPTAINERENV_CUDA_VISIBLE_DEVICES":
        quoted = '"' + value.replace('"', '\\\\"') + '"'  # it escapes double quotes, nothing else
        shell = subprocess.run(["bash", "-c", "printf %s " + quoted], capture_output=True, text=True, check=True)
        os.environ[key.removeprefix("APPTAINERENV_")] = shell.stdout
args, takes_value = sys.argv[2:], {"--bind", "--pwd"}
gpus = os.environ.get("APPTAINERENV_CUDA_VISIBLE_DEVICES", "unset")
print("APPTAINERENV_CUDA_VISIBLE_DEVICES=" + gpus, file=sys.stderr)
while args[0].startswith("--"):
    args = args[2:] if args[0] in takes_value else args[1:]
os.execvp(args[1], args[1:])
"""
)


def spec(**fields: Any) -> JobSpec:
    return JobSpec.model_validate({"name": "t", "project": "p", "command": ["python", "t.py"], **fields})


def run(script: str, tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    """Run ``script`` with bash, the stubs first on PATH; returns the result and the stubs' argv, in order."""
    stubs = tmp_path / "stubs"
    stubs.mkdir(exist_ok=True)
    for name, text in {
        "srun": RECORDER,
        "apptainer": APPTAINER_STUB,
        "sinfo": RECORDER + "print('10.1.2.3')\n",
        "scontrol": RECORDER + "print('gn7')\nprint('gn8')\n",
    }.items():
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    log = tmp_path / "stubs.log"
    environment = {"PATH": f"{stubs}:{os.environ['PATH']}", "STUB_LOG": str(log), "SLURM_JOB_ID": "4242", **env}
    result = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path, env=environment, check=False
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return result, calls


def test_torchrun_in_a_container_reaches_srun_with_every_word_as_written(tmp_path: Path) -> None:
    job = spec(
        command=["train.py", *NASTY],
        resources={"nodes": 2, "tasks_per_node": 2, "cpus_per_task": 3, "gpus_per_node": 2, "gpu_type": "a100"},
        launcher="torchrun",
        container={
            "image": "/opt/images/pytorch-24.sif",
            "mounts": [{"source": "/scratch/data", "target": "/data", "read_only": True}],
            "env": {"NCCL_DEBUG": "INFO $(id) 'q'"},
        },
    )
    result, calls = run(batch_script(job, APPTAINER, "/scratch/w"), tmp_path, SLURM_JOB_NODELIST="gn[7-8]")
    assert result.returncode == 0, result.stderr
    port = MASTER_PORT_BASE + 4242 % MASTER_PORT_SPAN
    srun = calls[-1]
    assert srun == [
        "srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--cpus-per-task=6",
        "/bin/sh", "-c", 'export APPTAINERENV_CUDA_VISIBLE_DEVICES="$CUDA_VISIBLE_DEVICES"; exec "$@"',
        "conveyor-gpus", "apptainer", "exec", "--nv", "--containall", "--bind", "/scratch/w", "--pwd", "/scratch/w",
        "--bind", "/scratch/data:/data:ro", "/opt/images/pytorch-24.sif",
        "torchrun", "--nnodes", "2", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
        f"--rdzv-endpoint=10.1.2.3:{port}", "--rdzv-id=4242", "train.py", *NASTY,
    ]  # fmt: skip
    # The first node is the first of the job's node list, and its address is what Slurm records (sinfo %o).
    assert ["scontrol", "show", "hostnames", "gn[7-8]"] in calls
    assert ["sinfo", "-h", "-N", "-o", "%o", "-n", "gn7"] in calls
    assert not (tmp_path / "pwned").exists()


def test_a_container_env_value_reaches_the_container_unchanged(tmp_path: Path) -> None:
    value = "INFO $(touch pwned) 'q' \"dq\" `id` \\$HOME ${PATH} trailing \\"
    job = spec(command=["printenv", "NCCL_DEBUG"], container={"image": "/opt/images/x", "env": {"NCCL_DEBUG": value}})
    result, _ = run(batch_script(job, APPTAINER, str(tmp_path)), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == value + "\n"
    assert not (tmp_path / "pwned").exists()


def test_a_script_in_a_container_runs_whole_even_with_a_line_equal_to_the_delimiter(tmp_path: Path) -> None:
    body = "CONVEYOR_SCRIPT() { echo called; }\necho one\nCONVEYOR_SCRIPT\necho \"two $((1 + 1))\"\necho 'three'\n"
    job = spec(command=None, script="#!/bin/bash\n" + body, container={"image": "/opt/images/x"})
    result, calls = run(batch_script(job, APPTAINER, str(tmp_path)), tmp_path)
    assert calls[0][:2] == ["apptainer", "exec"]
    assert calls[0][-3:] == ["/opt/images/x", "/bin/bash", "-s"]
    assert result.stdout == "one\ncalled\ntwo 2\nthree\n", result.stderr


def test_a_secret_is_never_in_the_script_and_a_clean_container_gets_it_by_reference(tmp_path: Path) -> None:
    job = spec(
        command=["printenv", "HF_TOKEN"],
        container={"image": "/opt/images/x"},
        secret_environment={"HF_TOKEN": "hf_s3cr3t"},
    )
    script = batch_script(job, APPTAINER, str(tmp_path))
    assert "hf_s3cr3t" not in script
    assert 'conveyor_apptainer_env HF_TOKEN "$HF_TOKEN"' in script
    secret = "hf_s3cr3t$(touch pwned)`id`\\"
    result, _ = run(script, tmp_path, HF_TOKEN=secret)  # Slurm puts it in the job's environment
    assert result.stdout == secret + "\n"
    assert not (tmp_path / "pwned").exists()


def test_pyxis_options_travel_on_srun_because_they_cannot_through_slurmrestd(tmp_path: Path) -> None:
    pyxis = ContainerRuntime(runtime="pyxis", images=("/opt/squash/*",))
    job = spec(
        container={"image": "/opt/squash/pt.sqsh", "mounts": [{"source": "/data"}], "env": {"A": "1"}},
        secret_environment={"HF_TOKEN": "x"},
    )
    result, calls = run(batch_script(job, pyxis, "/scratch/w"), tmp_path)
    assert result.returncode == 0, result.stderr
    assert calls == [
        [
            "srun", "--nodes=1", "--ntasks=1", "--container-image=/opt/squash/pt.sqsh",
            "--container-workdir=/scratch/w", "--container-mounts=/data:/data", "--container-env=A,HF_TOKEN",
            "python", "t.py",
        ]
    ]  # fmt: skip


def test_srun_as_launcher_starts_the_command_once_per_task(tmp_path: Path) -> None:
    _, calls = run(batch_script(spec(launcher="srun", command=["hostname"]), None, "/w"), tmp_path)
    assert calls == [["srun", "hostname"]]


def test_a_container_on_a_factory_without_a_runtime_cannot_be_compiled() -> None:
    with pytest.raises(ValueError, match="declares no container runtime"):
        batch_script(spec(container={"image": "/opt/images/x"}), None, "/w")


@pytest.mark.parametrize(
    ("pattern", "slurm"),
    [
        ("/scratch/runs/train-{job_id}.out", "/scratch/runs/train-%j.out"),
        ("/scratch/runs/s{segment}-{job_id}.log", "/scratch/runs/s0-%j.log"),
        ("/scratch/runs/plain.out", "/scratch/runs/plain.out"),
    ],
)
def test_output_patterns_become_slurms_filename_patterns(pattern: str, slurm: str) -> None:
    assert output_file(spec(stdout=pattern).stdout or "") == slurm


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("stdout", "/a/{job_id}/x.out", "only in the file name"),
        ("stdout", "/a/x-{user}.out", "unknown placeholder"),
        ("stdout", "/a/x-%j.out", "should match pattern"),
        ("stderr", "/a/../x.err", "'..'"),
        ("stdout", "relative.out", "should match pattern"),
        ("stdout", "/a/x-{array_index}.out", "job array"),
    ],
)
def test_bad_output_patterns_are_refused_with_the_reason(field: str, value: str, words: str) -> None:
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        spec(**{field: value})


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"image": "/opt/images/x.sif"}, "use container.image"),
        ({"container": {"image": "pytorch.sif"}}, "absolute path"),
        ({"container": {"image": "/opt/a b.sif"}}, "absolute path"),
        ({"container": {"image": "/opt/x;id"}}, "absolute path"),
        ({"container": {"image": "http://x/y"}}, "absolute path"),
        ({"container": {"image": "/x", "mounts": [{"source": "/a,b"}]}}, "should match pattern"),
        ({"container": {"image": "/x", "mounts": [{"source": "/a:b"}]}}, "should match pattern"),
        ({"container": {"image": "/x", "mounts": [{"source": "/a"}, {"source": "/b", "target": "/a"}]}}, "target"),
        ({"container": {"image": "/x", "env": {"APPTAINER_BIND": "/"}}}, "reserved"),
        ({"launcher": "torchrun", "command": None, "script": "train"}, "give 'command'"),
        ({"container": {"image": "/x"}, "command": None, "script": "#!/usr/bin/python3\nprint()"}, "/bin/bash"),
        ({"environment": {"A": "1"}, "secret_environment": {"A": "2"}}, "both"),
        ({"secret_environment": {"SLURM_X": "1"}}, "reserved"),
    ],
)
def test_bad_workload_fields_are_refused_with_the_reason(fields: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        spec(**fields)


# --- the Factory's declaration, placement and translation -------------------------------------------------


def registry(**containers: Any) -> FactoryRegistry:
    def factory(factory_id: str, runtime: dict[str, Any] | None) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "id": factory_id,
            "name": factory_id,
            "country": "DE",
            "site": "lab",
            "adapter": {"kind": "agent", "cluster": factory_id},
            "mapping": {"default_user": "alice"},
            "job_root": "/scratch/jobs",
            "working_roots": ["/scratch", "/home/{user}"],
            "partitions": [
                {"name": "gpu", "default": True, "max_time_min": 60, "default_time_min": 10, "nodes": 2,
                 "cpus_per_node": 8, "memory_mb_per_node": 16000, "gpus_per_node": {"a100": 2}}
            ],
        }  # fmt: skip
        if runtime is not None:
            entry["containers"] = runtime
        return entry

    return parse_factories(
        {"factories": [factory("plain", None), *(factory(name, runtime) for name, runtime in containers.items())]}
    )


def placed_on(job: JobSpec, factories: FactoryRegistry) -> str:
    statuses = {factory_id: FactoryStatus(healthy=True) for factory_id in factories.ids}
    return place(job, factories, statuses).factory.id


def refusal(job: JobSpec, factories: FactoryRegistry) -> PlacementError:
    with pytest.raises(PlacementError) as caught:
        placed_on(job, factories)
    return caught.value


SITE = {"runtime": "apptainer", "images": ["/opt/images/*"], "bind_roots": ["/scratch/datasets"]}


def test_a_container_job_skips_factories_that_run_no_containers_or_not_its_image() -> None:
    factories = registry(other={**SITE, "images": ["/opt/other/*"]}, site=SITE)
    job = spec(container={"image": "/opt/images/pt.sif"})
    assert placed_on(job, factories) == "site"
    assert placed_on(spec(), factories) == "plain"  # a job without a container goes anywhere


@pytest.mark.parametrize(
    ("container", "words"),
    [
        ({"image": "/opt/elsewhere/pt.sif"}, "does not list image /opt/elsewhere/pt.sif"),
        ({"image": "docker://nvcr.io/nvidia/pytorch:24.01-py3"}, "pulls no registry images"),
        ({"image": "/opt/images/pt.sif", "mounts": [{"source": "/etc"}]}, "not /etc"),
    ],
)
def test_a_container_no_factory_can_run_is_refused_naming_each_factorys_reason(
    container: dict[str, Any], words: str
) -> None:
    error = refusal(spec(container=container), registry(site=SITE))
    assert error.code is PlacementCode.CONTAINER_NOT_ALLOWED
    assert "Factory plain runs no containers" in error.message
    assert words in error.message
    assert not error.transient


def test_registry_images_go_only_where_the_site_pulls_them() -> None:
    pulling = {**SITE, "images": ["docker://nvcr.io/nvidia/*"], "pulls": True}
    job = spec(container={"image": "docker://nvcr.io/nvidia/pytorch:24.01-py3"})
    assert placed_on(job, registry(site=SITE, puller=pulling)) == "puller"


def test_a_mount_below_a_bind_root_is_allowed_and_the_working_roots_are_the_default() -> None:
    job = spec(container={"image": "/opt/images/pt", "mounts": [{"source": "/scratch/datasets/imagenet"}]})
    assert placed_on(job, registry(site=SITE)) == "site"
    home = spec(container={"image": "/opt/images/pt", "mounts": [{"source": "/home/alice/data"}]})
    assert placed_on(home, registry(site={"runtime": "apptainer", "images": ["/opt/images/*"]})) == "site"


def test_translation_checks_the_user_the_job_runs_as_and_compiles_the_script() -> None:
    factories = registry(site={"runtime": "apptainer", "images": ["/opt/images/*"]})
    job = spec(
        container={"image": "/opt/images/pt", "mounts": [{"source": "/home/alice/data"}]},
        stdout="/scratch/runs/out-{job_id}.txt",
    )
    placement = place(job, factories, {"site": FactoryStatus(healthy=True), "plain": FactoryStatus(healthy=True)})
    slurm = to_slurm_spec("job-1", job, placement, factories["site"], user="alice")
    assert slurm.stdout == "/scratch/runs/out-%j.txt"
    assert slurm.stderr == "/scratch/jobs/conveyor-job-1.err"
    assert "apptainer exec --containall" in slurm.script
    with pytest.raises(TranslationError, match="not /home/alice/data"):
        to_slurm_spec("job-1", job, placement, factories["site"], user="bob")
    outside = spec(stdout="/tmp/x.out")
    placement = place(outside, factories, {"site": FactoryStatus(healthy=True), "plain": FactoryStatus(healthy=True)})
    with pytest.raises(TranslationError, match=r"stdout /tmp/x\.out is outside"):
        to_slurm_spec("job-1", outside, placement, factories["plain"])


@pytest.mark.parametrize(
    ("runtime", "words"),
    [
        ({"runtime": "docker", "images": ["/x"]}, "runtime"),
        ({"runtime": "apptainer", "images": []}, "images"),
        ({"runtime": "apptainer", "images": ["/x;y"]}, "images.0"),
        ({"runtime": "apptainer", "images": ["/x"], "bind_roots": ["/"]}, "bind_roots.0"),
        ({"runtime": "apptainer", "images": ["/x"], "executable": "apptainer --x"}, "executable"),
    ],
)
def test_a_bad_container_declaration_is_reported_at_its_field(runtime: dict[str, Any], words: str) -> None:
    with pytest.raises(FactoryConfigError, match=f"containers.{words}"):
        registry(site=runtime)


def test_each_task_hands_its_own_gpus_into_a_clean_container(tmp_path: Path) -> None:
    runtime = ContainerRuntime(runtime="apptainer", images=("/opt/images/*",), binds=("/site/dev",))
    job = spec(
        command=["true"],
        resources={"gpus_per_node": 1, "gpu_type": "a100"},
        container={"image": "/opt/images/x"},
    )
    script = batch_script(job, runtime, str(tmp_path))
    result, calls = run(script, tmp_path, CUDA_VISIBLE_DEVICES="1")
    assert result.stderr == "APPTAINERENV_CUDA_VISIBLE_DEVICES=1\n"
    assert calls[0][calls[0].index("--pwd") + 2 :][:2] == ["--bind", "/site/dev:/site/dev:ro"]
    unclean = runtime.model_copy(update={"containall": False})
    result, _ = run(batch_script(job, unclean, str(tmp_path)), tmp_path, CUDA_VISIBLE_DEVICES="1")
    assert result.stderr == "APPTAINERENV_CUDA_VISIBLE_DEVICES=unset\n"  # the job's environment passes as is
