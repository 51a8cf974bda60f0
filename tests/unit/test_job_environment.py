"""The environment every adapter gives a batch job: sbatch's variables for the spec, the user's login, the
spec's variables, and nothing of the broker's own (compared with real sbatch in tests/adapters)."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import httpx

from slurm_adapters.environment import (
    MPI_LAUNCHER_HINTS,
    Login,
    batch_environment,
    sbatch_variables,
)
from slurm_adapters.records import SlurmJobSpec
from slurm_adapters.rest import RestAdapter
from slurm_adapters.safety import SitePolicy, passwd_lookup
from tests.unit.sites import policy_of
from tests.unit.test_rest_client import V38_PING, FakeRest, key_file, ok  # noqa: F401 (key_file is a fixture)

SPEC = SlurmJobSpec(
    name="train",
    script="true\n",
    working_directory="/scratch/alice/run",
    tag="cvy-1",
    environment={"FOO": "bar", "HOME": "/scratch/alice"},
    nodes=2,
    tasks=8,
    tasks_per_node=4,
    cpus_per_task=3,
)
ALICE = Login(user="alice", home="/home/alice", shell="/bin/bash")


def test_sbatch_of_22_05_exports_the_options_and_where_it_ran() -> None:
    assert sbatch_variables(SPEC, release=(22, 5), submit_host="login1") == {
        "SLURM_JOB_NAME": "train",
        "SLURM_CPUS_PER_TASK": "3",
        "SLURM_NTASKS_PER_NODE": "4",
        "SLURM_SUBMIT_DIR": "/scratch/alice/run",
        "SLURM_SUBMIT_HOST": "login1",
        "SLURM_PRIO_PROCESS": "0",
    }


def test_sbatch_from_24_05_also_exports_cpus_as_tres_and_launcher_hints() -> None:
    exported = sbatch_variables(SPEC, release=(24, 11), submit_host="login1")
    assert exported["SLURM_TRES_PER_TASK"] == "cpu=3"
    environment = batch_environment(SPEC, ALICE, sbatch=exported, release=(24, 11))
    assert {name: environment[name] for name in MPI_LAUNCHER_HINTS} == dict(MPI_LAUNCHER_HINTS)
    assert not set(MPI_LAUNCHER_HINTS) & set(batch_environment(SPEC, ALICE, release=(22, 5)))


def test_the_spec_wins_over_the_login_and_sbatch_over_both() -> None:
    environment = batch_environment(SPEC, ALICE, sbatch={"SLURM_JOB_NAME": "train"})
    assert environment == {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/scratch/alice",  # the spec's
        "USER": "alice",
        "LOGNAME": "alice",
        "SHELL": "/bin/bash",
        "FOO": "bar",
        "SLURM_JOB_NAME": "train",
    }


def test_logins_come_from_the_clusters_passwd_and_else_only_the_name_is_known(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\nalice:x:1001:1001::/home/alice:/bin/zsh\n")
    policy = SitePolicy(lookup=passwd_lookup(tmp_path), login_defs=None)
    assert policy.login("alice") == Login(user="alice", home="/home/alice", shell="/bin/zsh")
    assert policy.login("bob").variables() == {"USER": "bob", "LOGNAME": "bob"}
    remote = SitePolicy(lookup=None, allowed_users=re.compile("bob"))
    assert remote.login("bob").variables() == {"USER": "bob", "LOGNAME": "bob"}


async def test_the_rest_adapter_sends_sbatchs_environment_for_each_version(key_file: Path) -> None:  # noqa: F811
    policy = policy_of({"alice": 1001})  # alice: bash, /home/alice, as ALICE
    fake = FakeRest({V38_PING: ok(), ("GET", "/slurm/v0.0.38/diag"): ok()})
    rest = RestAdapter("alpha", "http://slurmrestd.test", key_file, "root", policy, transport=httpx.MockTransport(fake))
    v42 = dict(item.split("=", 1) for item in rest.render(SPEC, "alice").payload["job"]["environment"])
    assert v42 == batch_environment(
        SPEC,
        ALICE,
        sbatch=sbatch_variables(SPEC, release=(24, 11), submit_host=socket.gethostname()),
        release=(24, 11),
    )
    await rest.health()  # negotiates v0.0.38 (22.05)
    v38 = rest.render(SPEC, "alice").payload["job"]["environment"]
    assert v38 == batch_environment(
        SPEC, ALICE, sbatch=sbatch_variables(SPEC, release=(22, 5), submit_host=socket.gethostname())
    )
    assert v38["SLURM_CPUS_PER_TASK"] == "3"
    assert "SLURM_TRES_PER_TASK" not in v38
    await rest.aclose()
