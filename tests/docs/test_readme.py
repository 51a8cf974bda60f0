"""The README promises only what the code and Slurm keep: its guarantees and its layout are checked here."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_defect_19_readme_promises_at_most_once_per_attempt_and_says_what_slurm_may_do() -> None:
    """Slurm itself may run a job again under one id (a controller crash, a requeue): the broker can promise only
    that each attempt is submitted at most once, and must say what Slurm may still do."""
    assert not re.search(r"never (be )?(run|submit)s? twice|never run twice", README, re.IGNORECASE)
    assert "at most once per attempt" in README
    assert re.search(r"Slurm (itself )?may (still )?(run|start|re-?run)", README)
