"""A broker job as the Slurm job dispatch submits: every field from the spec, the placement or the Factory."""

from __future__ import annotations

import shlex
import subprocess
from typing import Any

import pytest

from broker.factories.placement import FactoryStatus, place
from broker.factories.registry import Factory, parse_factories
from broker.jobs.launch import batch_script
from broker.jobs.translate import TranslationError, site_user, to_slurm_spec
from conveyor.spec import JobSpec

JOB_ID = "job_abcdefghijklmnopqrst"


def _factory(**extra: Any) -> Factory:
    document = {
        "factories": [
            {
                "id": "alpha",
                "name": "Alpha",
                "country": "IT",
                "site": "lab",
                "adapter": {
                    "kind": "rest",
                    "cluster": "alpha",
                    "url": "http://127.0.0.1:6820",
                    "jwt_key_file": "/k",
                    "operator_user": "root",
                    "allowed_users": "alice|bob",
                },
                "mapping": {"default_user": "alice", "default_account": "ehpc-aif-test"},
                "partitions": [
                    {"name": "cpu", "default": True, "max_time_min": 60, "default_time_min": 10, "nodes": 2,
                     "cpus_per_node": 4, "memory_mb_per_node": 8000},
                    {"name": "gpu", "max_time_min": 120, "default_time_min": 30, "nodes": 2, "cpus_per_node": 8,
                     "memory_mb_per_node": 16000, "gpus_per_node": {"a100": 4}},
                ],
                **extra,
            }
        ]
    }  # fmt: skip
    return parse_factories(document)["alpha"]


def _spec(**fields: Any) -> JobSpec:
    data: dict[str, Any] = {"name": "train", "project": "EHPC-AIF-2026PG01-1147", "command": ["python", "t.py"]}
    data.update(fields)
    return JobSpec.model_validate(data)


def _translate(spec: JobSpec, factory: Factory, user: str | None = None) -> Any:
    registry = parse_factories({"factories": [factory.model_dump(mode="json", exclude_none=True)]})
    factory = registry["alpha"]
    placement = place(spec, registry, {"alpha": FactoryStatus(healthy=True)})
    return to_slurm_spec(JOB_ID, spec, placement, factory, user=user)


def test_a_gpu_job_carries_every_field_from_spec_placement_and_factory() -> None:
    spec = _spec(
        resources={"nodes": 2, "tasks_per_node": 4, "cpus_per_task": 2, "gpus_per_node": 4, "gpu_type": "a100",
                   "memory_mb": 12000, "time_limit_min": 90},
        environment={"WANDB_MODE": "offline"},
    )  # fmt: skip
    slurm = _translate(spec, _factory(job_root="/scratch/conveyor"))
    assert slurm.tag == JOB_ID
    assert slurm.name == "train"
    assert (slurm.partition, slurm.time_limit_min, slurm.account) == ("gpu", 90, "ehpc-aif-test")
    assert (slurm.nodes, slurm.tasks, slurm.cpus_per_task, slurm.memory_mb) == (2, 8, 2, 12000)
    assert slurm.tasks_per_node == 4  # per node, as sbatch's --ntasks-per-node: not only the total
    assert (slurm.gpus_per_node, slurm.gpu_type) == (4, "a100")
    assert dict(slurm.environment) == {"WANDB_MODE": "offline"}
    assert slurm.working_directory == "/scratch/conveyor"
    assert slurm.stdout == f"/scratch/conveyor/conveyor-{JOB_ID}.out"
    assert slurm.stderr == f"/scratch/conveyor/conveyor-{JOB_ID}.err"


def test_the_spec_working_directory_wins_and_the_default_time_comes_from_the_partition() -> None:
    factory = _factory(job_root="/scratch", working_roots=["/scratch", "/home/{user}"])
    slurm = _translate(_spec(working_directory="/home/alice/run"), factory)
    assert slurm.working_directory == "/home/alice/run"
    assert slurm.stdout == f"/home/alice/run/conveyor-{JOB_ID}.out"
    assert (slurm.partition, slurm.time_limit_min) == ("cpu", 10)


def test_a_home_root_is_the_home_of_the_site_user_the_job_runs_as() -> None:
    factory = _factory(job_root="/scratch", working_roots=["/scratch", "/home/{user}"])
    assert _translate(_spec(working_directory="/home/bob/x"), factory, "bob").working_directory == "/home/bob/x"
    # The default user is alice: bob's home is not hers, whatever placement matched for some user.
    with pytest.raises(TranslationError, match=r"outside .* site user alice work in: /scratch, /home/\{user\}"):
        _translate(_spec(working_directory="/home/bob/x"), factory)
    with pytest.raises(TranslationError, match="site user carol"):
        _translate(_spec(working_directory="/home/bob/x"), factory, "carol")


def test_without_any_working_directory_the_job_cannot_be_translated() -> None:
    with pytest.raises(TranslationError, match="working_directory"):
        _translate(_spec(), _factory())


def test_a_command_becomes_an_exec_line_whose_arguments_the_shell_never_interprets(tmp_path: Any) -> None:
    argv = ["printf", "%s|", "a b", "$(touch pwned)", "it's", "; rm -rf /", "`id`", "\\n"]
    script = batch_script(_spec(command=argv), None, "/tmp")
    assert script.startswith("#!/bin/bash\n")
    assert f"exec {shlex.join(argv)}" in script
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert result.stdout == "".join(f"{arg}|" for arg in argv[2:])
    assert not (tmp_path / "pwned").exists()


def test_a_script_keeps_its_interpreter_and_gets_bash_when_it_has_none() -> None:
    assert batch_script(_spec(command=None, script="#!/usr/bin/env python3\nprint(1)"), None, "/tmp") == (
        "#!/usr/bin/env python3\nprint(1)\n"
    )
    assert batch_script(_spec(command=None, script="srun hostname\n"), None, "/tmp") == "#!/bin/bash\nsrun hostname\n"


def test_jobs_run_as_the_factorys_mapped_user() -> None:
    assert site_user(_factory()) == "alice"
