"""schemathesis against a real broker process: no 5xx, no undocumented status, every operation, every phase.

One run per principal (the first admin, made by ``python -m broker create-admin``, and a plain user who is PI
of one project), each against a broker of its own (tests/fuzz/runner.py: uvicorn on 127.0.0.1, a fresh SQLite
file, dispatcher and reconciler running, the lab's expendable Factory echo only), with a fixed seed and 25
examples per operation in each of schemathesis' phases (examples, coverage, fuzzing, and stateful sequences
over the links it infers). Every check runs but those in ``EXCLUDED_CHECKS``, each excluded for the reason
given there. The tests below read the one report of their principal's run; each names what it found and how
to reproduce it (schemathesis' own curl lines). ``python -m bench.fuzz --examples 200`` is the longer run.

The in-process test (tests/api/test_schemathesis.py) stays: it needs no lab and no ports, runs the same
document with more examples per operation through the app's real lifespan, and a fixed seed reproduces a
failure there exactly; this one adds what only a real process shows (uvicorn's parsing, real identities,
the loops at work on a real Slurm, stateful sequences).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuzz.runner import (
    SERVER_ERRORS,
    UNDOCUMENTED_STATUS,
    Finding,
    FuzzReport,
    fuzz_broker,
    run_schemathesis,
    slurm_did_not_answer,
)

pytestmark = [pytest.mark.lab, pytest.mark.timeout(600)]

EXAMPLES = 25
PRINCIPALS = ("admin", "researcher")


@pytest.fixture(scope="module", params=PRINCIPALS)
def fuzzed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, migrated_sqlite_template: Path
) -> Iterator[FuzzReport]:
    principal: str = request.param
    workdir = tmp_path_factory.mktemp(f"fuzz-{principal}")
    with fuzz_broker(workdir, migrated_sqlite_template) as broker:
        report = run_schemathesis(broker.server.base_url, broker.fixture, principal, workdir, examples=EXAMPLES)
        print(report.summary())
        yield report


def _none(report: FuzzReport, found: list[Finding]) -> None:
    assert not found, (
        f"{report.principal}: {'; '.join(map(str, found))}\n{report.details(found)}\n(seed {report.report['seed']})"
    )


def test_fuzz_reaches_every_operation_in_every_phase(fuzzed: FuzzReport) -> None:
    report = fuzzed.report
    operations = report["operations"]
    assert operations["tested"] == operations["total"] == operations["selected"] > 0, operations
    assert report["complete"], report["stop_reason"]
    assert not report["errors"], report["errors"]
    phases = report["phases"]
    assert set(phases) == {"examples", "coverage", "fuzzing", "stateful"}
    ran = {name: phase["status"] for name, phase in phases.items()}
    assert all(status in {"success", "failure"} for status in ran.values()), ran


def test_fuzz_finds_no_server_error(fuzzed: FuzzReport) -> None:
    """No 5xx but the documented 503 while Slurm does not answer (printed: see ``slurm_did_not_answer``)."""
    server_errors = [finding for finding in fuzzed.findings if finding.code in SERVER_ERRORS]
    for finding in filter(slurm_did_not_answer, server_errors):
        print(f"{fuzzed.principal}: Slurm did not answer: {finding}\n{finding.text}")
    _none(fuzzed, [finding for finding in server_errors if not slurm_did_not_answer(finding)])


def test_fuzz_finds_no_undocumented_status(fuzzed: FuzzReport) -> None:
    _none(fuzzed, [finding for finding in fuzzed.findings if finding.code == UNDOCUMENTED_STATUS])


def test_fuzz_finds_no_other_contract_break(fuzzed: FuzzReport) -> None:
    """Content types, headers, bodies against their schemas, auth ignored, use after delete, and the rest."""
    held = SERVER_ERRORS | {UNDOCUMENTED_STATUS}
    _none(fuzzed, [finding for finding in fuzzed.findings if finding.code not in held])
