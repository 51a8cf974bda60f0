"""The broker of the agent tests cannot read any Slurm key: it runs as an unprivileged user, and from inside its
identity every lab cluster's slurmrestd JWT key and munge key (and the agents' own private keys) refuse to open.

The broker is the agent fleet's (tests/adapters/agent_fleet.py); the probe is a ``python -c`` started under the
same ``setpriv`` wrapper, and it reports its identity so the test checks it is the broker's, as /proc says.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.adapters.agent_fleet import UNPRIVILEGED, AgentFleet
from tests.lab import Cluster, clusters

pytestmark = pytest.mark.lab

_PROBE = """
import json, os, sys
outcomes = {}
for path in sys.argv[1:]:
    try:
        with open(path, "rb") as handle:
            handle.read(1)
        outcomes[path] = "read"
    except OSError as exc:
        outcomes[path] = type(exc).__name__
print(json.dumps({"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
                  "outcomes": outcomes}))
"""


def slurm_keys(cluster: Cluster) -> list[Path]:
    """The cluster's slurmrestd JWT signing key and its munge key, as seen from the host."""
    munge_key = cluster.host_path(f"{cluster.raw['cluster_dir']}/munge/munge.key")
    return [Path(cluster.raw["jwt_key_file"]), munge_key]


def probe(paths: list[Path], wrapper: tuple[str, ...]) -> dict[str, Any]:
    result = subprocess.run(
        [*wrapper, sys.executable, "-c", _PROBE, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def proc_ids(pid: int) -> dict[str, list[int]]:
    """The Uid, Gid and Groups lines of /proc/<pid>/status."""
    fields: dict[str, list[int]] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("Uid", "Gid", "Groups"):
            fields[name] = [int(part) for part in value.split()]
    return fields


def test_the_broker_of_the_agent_tests_cannot_read_any_slurm_key(agent_fleet: AgentFleet) -> None:
    keys = [key for cluster in clusters() for key in slurm_keys(cluster)]
    agent_keys = [agent.key_file for agent in agent_fleet.agents.values()]
    assert len(keys) == 2 * len(clusters())
    assert agent_keys

    broker = proc_ids(agent_fleet.broker.pid)
    assert agent_fleet.broker.process is not None
    assert agent_fleet.broker.process.poll() is None
    assert 0 not in broker["Uid"], broker  # real, effective, saved and filesystem uid
    assert 0 not in broker["Gid"], broker
    assert broker["Groups"] == [], broker

    as_root = probe(keys + agent_keys, ())  # the files are there and readable: what fails below is the identity
    assert set(as_root["outcomes"].values()) == {"read"}, as_root

    as_broker = probe(keys + agent_keys, UNPRIVILEGED)
    assert [as_broker["uid"], as_broker["euid"]] == broker["Uid"][:2]
    assert as_broker["gid"] == broker["Gid"][0]
    assert as_broker["groups"] == broker["Groups"]
    assert as_broker["outcomes"] == {str(path): "PermissionError" for path in keys + agent_keys}
