"""Suite-wide hooks.

dev/test.sh runs the suite in two phases: first the ``exclusive`` tests alone (they stop or restart what the others
use: echo's slurmctld, PostgreSQL) with the ``serial`` ones (items sharing one node id, which xdist's scheduler,
keyed by node id, would run only once: schemathesis' one item per operation), then every other test in two
pytest-xdist workers (``-n 2 --dist loadgroup``), one stream each, in collection order: the fault tests
(tests/faults: brokers, agents and databases of their own, jobs on the expendable cluster echo, mostly waiting out
settle windows) and everything else. Each test keeps the neighbours it has in a serial run within its stream; across
the streams the tests share echo's node and PostgreSQL's server (each test its own database), and nothing in the
second phase stops, kills or restarts either (the pyslurm run in the sid chroot kills delta's slurmctld, which only
the second stream uses).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.adapters.test_pyslurm_in_chroot import INNER_RESULTS

FAULT_TESTS = "tests/faults/"


def stream_of(nodeid: str) -> str:
    """The worker stream a test runs in under ``--dist loadgroup`` (see above)."""
    return "faults" if nodeid.startswith(FAULT_TESTS) else "rest"


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: the sid chroot's venv runs without it
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup``: one work unit per stream (:func:`stream_of`), each on one worker in collection order.

    xdist's own loadgroup reads ``xdist_group`` marks by rewriting node ids, which pytest 9 no longer allows;
    the scope-per-stream scheduler below is the same idea without that."""
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]  # only under xdist

    class StreamScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return stream_of(nodeid)

    return StreamScheduling(config, log)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Show the inner pyslurm run's own counts beside the host's (it is one host test wrapping many)."""
    for report in terminalreporter.getreports("passed") + terminalreporter.getreports("failed"):
        for name, value in report.user_properties:
            if name == INNER_RESULTS and report.when == "call":
                terminalreporter.write_line(str(value))
