"""Suite-wide hooks."""

from __future__ import annotations

import pytest

from tests.adapters.test_pyslurm_in_chroot import INNER_RESULTS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Show the inner pyslurm run's own counts beside the host's (it is one host test wrapping many)."""
    for line in INNER_RESULTS:
        terminalreporter.write_line(line)
