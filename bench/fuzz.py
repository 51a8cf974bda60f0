"""The long fuzz run: schemathesis with ``--examples`` per operation and phase against a broker of its own.

The same run as the suite's tests/fuzz/test_fuzz.py (25 examples), only longer: a real broker process with
its loops on, a fresh SQLite file, the lab's expendable Factory echo, its first admin made by
``python -m broker create-admin``, every phase and every check but those excluded (with their reasons) in
tests/fuzz/runner.py. One run per principal, each on a broker of its own.

    .venv/bin/python -m bench.fuzz --examples 200
    .venv/bin/python -m bench.fuzz --examples 200 --principals admin --seed 7

Prints each run's summary and every failure schemathesis found (with its curl to reproduce); the reports stay
in ``--workdir``. Exits 1 if any run found a 5xx or an undocumented status, 2 if it found anything else (a 503
while Slurm did not answer counts as neither: see tests/fuzz/runner.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from tests.fuzz.runner import (
    SEED,
    SERVER_ERRORS,
    UNDOCUMENTED_STATUS,
    FuzzReport,
    fuzz_broker,
    run_schemathesis,
    slurm_did_not_answer,
)


def run(principal: str, examples: int, seed: int, workdir: Path) -> FuzzReport:
    with fuzz_broker(workdir / principal) as broker:
        return run_schemathesis(
            broker.server.base_url, broker.fixture, principal, workdir / principal, examples=examples, seed=seed
        )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200, help="examples per operation and phase")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--principals", default="admin,researcher", help="comma-separated: admin, researcher")
    parser.add_argument("--workdir", type=Path, default=None, help="where the brokers and reports live")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="conveyor-fuzz-"))
    codes: set[str] = set()
    for principal in args.principals.split(","):
        report = run(principal, args.examples, args.seed, workdir)
        print(report.summary())
        if report.findings:
            print(report.details(report.findings))
        codes |= {finding.code for finding in report.findings if not slurm_did_not_answer(finding)}
    print(f"reports in {workdir}")
    if codes & (SERVER_ERRORS | {UNDOCUMENTED_STATUS}):
        return 1
    return 2 if codes else 0


if __name__ == "__main__":
    sys.exit(main())
