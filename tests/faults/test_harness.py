"""The fault harness's own pure pieces (no lab, no database): the ledger, answers, the Factory file filter."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.faults.harness import (
    LedgerLine,
    Progress,
    SlurmAmnesia,
    Submission,
    factories_file_with,
    forgotten_after_it_ran,
    parse_ledger,
    rerun_by_slurm,
    summary,
    timed_out_after_it_ran,
)


def test_the_ledger_reads_tag_slurm_id_time_and_cluster_per_line() -> None:
    text = "a-0001 17 1764430000.250000 echo\n\na-0002 18 1764430001,5\na-0001 19\n"
    assert parse_ledger(text) == [
        LedgerLine("a-0001", "17", datetime(2025, 11, 29, 15, 26, 40, 250000, UTC), "echo"),
        LedgerLine("a-0002", "18", datetime(2025, 11, 29, 15, 26, 41, 500000, UTC)),
        LedgerLine("a-0001", "19", None),
    ]


KILLED = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("runs", "rerun"),
    [
        ([("17", -1), ("17", 5)], True),  # one Slurm job, run before the kill and again after it
        ([("17", -1)], False),  # ran once: nothing to excuse
        ([("17", -1), ("18", 5)], False),  # two Slurm jobs: a second submission, never Slurm's doing
        ([("17", -2), ("17", -1)], False),  # twice before the kill: not slurmctld's amnesia
        ([("17", 1), ("17", 5)], False),  # twice after the kill: not slurmctld's amnesia
        ([("17", -1), ("17", 5), ("17", 6)], False),
        ([("17", None), ("17", 5)], False),  # a run without a time proves nothing
    ],
)
def test_a_rerun_is_slurms_only_for_one_slurm_job_run_before_and_after_the_kill(
    runs: list[tuple[str, int | None]], rerun: bool
) -> None:
    lines = [LedgerLine("t", slurm_id, None if at is None else KILLED + timedelta(seconds=at)) for slurm_id, at in runs]
    assert rerun_by_slurm(lines, "17", SlurmAmnesia(KILLED)) is rerun


async def test_progress_counts_answers_and_wakes_waiters() -> None:
    progress = Progress()
    for answer in ("201", "201", "503", "no answer: ConnectError"):
        await progress.record(answer)
    await progress.until(lambda c: c["201"] == 2 and c["503"] == 1, 1, "counts")
    assert progress.counts["answered"] == 3
    assert progress.counts["unanswered"] == 1
    with pytest.raises(AssertionError, match="timed out"):
        await progress.until(lambda c: c["201"] > 2, 0.05, "never")


def test_summary_names_each_last_answer() -> None:
    items = [Submission("t1", "k1", {}, answers=["503", "201"]), Submission("t2", "k2", {})]
    assert summary(items) == {"201": 1, "unsent": 1}


def test_the_factory_file_keeps_only_the_named_factories(tmp_path: Path) -> None:
    lab = tmp_path / "lab-factories.yaml"
    lab.write_text(json.dumps({"factories": [{"id": "alpha"}, {"id": "echo"}]}))
    kept = factories_file_with(lab, ["echo"], tmp_path)
    assert json.loads(kept.read_text()) == {"factories": [{"id": "echo"}]}
    with pytest.raises(AssertionError, match="lacks"):
        factories_file_with(lab, ["zulu"], tmp_path)


@pytest.mark.parametrize(
    ("runs", "in_slurm", "forgotten"),
    [
        ([("17", -1)], [], True),  # ran once before the kill, and Slurm no longer holds it
        ([("17", -1)], ["17"], False),  # Slurm holds it: nothing to excuse
        ([("17", 1)], [], False),  # ran after the kill: then Slurm had it after its restart
        ([("18", -1)], [], False),  # ran as another Slurm job than the broker recorded
        ([("17", -2), ("17", 5)], [], False),  # ran twice
        ([], [], False),  # never ran: not "completed"
        ([("17", None)], [], False),  # a run without a time proves nothing
    ],
)
def test_a_completed_job_missing_from_slurm_is_excused_only_if_it_ran_once_before_the_kill(
    runs: list[tuple[str, int | None]], in_slurm: list[str], forgotten: bool
) -> None:
    lines = [LedgerLine("t", slurm_id, None if at is None else KILLED + timedelta(seconds=at)) for slurm_id, at in runs]
    assert forgotten_after_it_ran(lines, "17", in_slurm, SlurmAmnesia(KILLED)) is forgotten


@pytest.mark.parametrize(
    ("state", "slurm_state", "runs", "excused"),
    [
        ("timeout", "TIMEOUT", [("17", -1)], True),  # ended before the kill; Slurm came back holding it running
        ("timeout", "TIMEOUT", [("17", 1)], False),  # ran after the kill: Slurm's TIMEOUT is its own
        ("timeout", "TIMEOUT", [("18", -1)], False),  # ran as another Slurm job than the broker recorded
        ("timeout", "TIMEOUT", [("17", -2), ("17", 5)], False),  # ran twice
        ("timeout", "TIMEOUT", [], False),  # never ran
        ("timeout", "TIMEOUT", [("17", None)], False),  # a run without a time proves nothing
        ("timeout", "COMPLETED", [("17", -1)], False),  # the broker must serve Slurm's word
        ("failed", "FAILED", [("17", -1)], False),  # only a time limit ends a job Slurm believes still runs
    ],
)
def test_a_timed_out_job_is_excused_only_if_it_ran_once_before_the_kill(
    state: str, slurm_state: str, runs: list[tuple[str, int | None]], excused: bool
) -> None:
    lines = [LedgerLine("t", slurm_id, None if at is None else KILLED + timedelta(seconds=at)) for slurm_id, at in runs]
    job = {"state": state, "slurm_state": slurm_state}
    assert timed_out_after_it_ran(job, lines, "17", SlurmAmnesia(KILLED)) is excused
