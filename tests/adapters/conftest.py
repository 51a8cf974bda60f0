"""Fixtures shared by the adapter tests: the agent fleet (see tests/adapters/agent_fleet.py).

The fleet's module is imported only when the fixture is used: the conformance module also runs inside the sid
chroot (tests/adapters/test_pyslurm_in_chroot.py), whose venv has pyslurm but not the broker's dependencies.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.lab import cli_agent_clusters, clusters, pyslurm_agent_clusters

if TYPE_CHECKING:
    from tests.adapters.agent_fleet import AgentFleet


@pytest.fixture(scope="session")
def agent_fleet() -> Iterator[AgentFleet]:
    """A broker (as nobody), one agent with slurmrestd inside per lab cluster, one with the CLI inside per
    cluster of :func:`~tests.lab.cli_agent_clusters` and one with pyslurm inside per cluster of
    :func:`~tests.lab.pyslurm_agent_clusters`, started on first use and stopped by PID at the end of the
    session; its files (logs, database, keys) are removed then."""
    from tests.adapters.agent_fleet import remove_fleet, start_fleet

    fleet = start_fleet(clusters(), cli_agent_clusters(), pyslurm_agent_clusters())
    try:
        yield fleet
    finally:
        fleet.stop()
        remove_fleet(fleet)
