"""The fault harness's own pure pieces (no lab, no database): the ledger, answers, the Factory file filter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.faults.harness import Progress, Submission, factories_file_with, parse_ledger, summary


def test_the_ledger_reads_one_tag_and_slurm_id_per_line() -> None:
    assert parse_ledger("a-0001 17\n\na-0002 18\na-0001 19\n") == [("a-0001", "17"), ("a-0002", "18"), ("a-0001", "19")]


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
