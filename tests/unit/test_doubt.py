"""The verdict on a submit in doubt (broker.loops.doubt): pure logic over what Slurm said, so plain records here.

The lab tests (tests/broker/test_loops_on_the_lab.py) drive the same decisions through real clusters; these
cover every branch, including the ones the lab cannot stage on demand (a lagging slurmdbd, an untagged job).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from broker.loops.doubt import Attempt, Evidence, Verdict, matches, settle
from slurm_adapters.records import Health, JobRecord, SlurmJobState

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
SKEW = timedelta(seconds=10)
MIN_JOB_AGE_S = 300
ATTEMPT = Attempt(job_id="job_abc", slurm_user="alice", started_at=T0)
UP_BEFORE = Health(ok=True, detail="", up_since=T0 - timedelta(hours=1), accounting_backlog=0)


def record(job_id: int, tag: str | None = "job_abc", *, user: str | None = "alice", at: datetime = T0) -> JobRecord:
    return JobRecord(
        job_id=job_id, tag=tag, state=SlurmJobState.COMPLETED, raw_state="COMPLETED", reason=None, exit_code=0,
        signal=0, submit_time=at, start_time=None, end_time=None, nodes=None, user=user,
    )  # fmt: skip


def verdict_at(age_s: float, evidence: Evidence) -> Verdict:
    return settle(ATTEMPT, evidence, now=T0 + timedelta(seconds=age_s), min_job_age_s=MIN_JOB_AGE_S, skew=SKEW)


def test_a_match_needs_our_tag_our_user_and_a_submit_after_the_attempt() -> None:
    assert matches(record(1), ATTEMPT, SKEW)
    assert matches(record(1, at=T0 - timedelta(seconds=9)), ATTEMPT, SKEW)  # within the clock skew
    assert not matches(record(1, at=T0 - timedelta(seconds=11)), ATTEMPT, SKEW)
    assert not matches(record(1, tag="job_other"), ATTEMPT, SKEW)
    assert not matches(record(1, user="bob"), ATTEMPT, SKEW)
    assert matches(record(1, user=None), ATTEMPT, SKEW)  # cannot tell: counted as ours, never submitted twice


def test_found_in_slurmctld_or_only_in_slurmdbd_the_earliest_is_the_job() -> None:
    in_ctld = verdict_at(
        5, Evidence(listed=[record(8, at=T0 + timedelta(seconds=2))], accounted=None, health=UP_BEFORE)
    )
    assert in_ctld.found is not None
    assert in_ctld.found.job_id == 8
    both = Evidence(listed=[record(9, at=T0 + timedelta(seconds=3))], accounted=[record(7)], health=UP_BEFORE)
    found = verdict_at(900, both).found
    assert found is not None
    assert found.job_id == 7


def test_absent_within_minjobage_and_no_restart_is_proven() -> None:
    verdict = verdict_at(60, Evidence(listed=[record(1, tag="job_other")], accounted=None, health=UP_BEFORE))
    assert (verdict.found, verdict.absent) == (None, True)
    assert "MinJobAge 300 s" in verdict.reason


@pytest.mark.parametrize(
    ("up_since", "words"),
    [
        (None, "cannot say since when"),
        (T0 + timedelta(seconds=30), "may have restarted since the attempt"),
        (T0 - timedelta(seconds=5), "may have restarted since the attempt"),  # within the skew: cannot be sure
    ],
)
def test_a_restart_since_the_attempt_or_not_knowing_makes_absence_unprovable(
    up_since: datetime | None, words: str
) -> None:
    health = Health(ok=True, detail="", up_since=up_since, accounting_backlog=0)
    verdict = verdict_at(60, Evidence(listed=[], accounted=[], health=health))
    assert (verdict.found, verdict.absent, verdict.later) == (None, False, False)
    assert words in verdict.reason


def test_beyond_minjobage_without_slurmdbd_absence_is_unprovable() -> None:
    verdict = verdict_at(MIN_JOB_AGE_S + 1, Evidence(listed=[], accounted=None, health=UP_BEFORE))
    assert (verdict.absent, verdict.later) == (False, False)
    assert "beyond MinJobAge" in verdict.reason


def test_beyond_minjobage_a_caught_up_slurmdbd_that_explains_every_job_proves_absence() -> None:
    # Job 4 is untagged in slurmdbd (still running) but slurmctld lists it; job 5 ended with another tag.
    evidence = Evidence(
        listed=[record(4, tag="job_running")],
        accounted=[record(4, tag=None), record(5, tag="job_other"), record(6, tag=None, user="bob")],
        health=UP_BEFORE,
    )
    verdict = verdict_at(MIN_JOB_AGE_S + 60, evidence)
    assert verdict.absent
    assert "slurmdbd (caught up)" in verdict.reason


def test_a_lagging_slurmdbd_proves_nothing_yet_and_is_asked_again() -> None:
    lagging = Health(ok=True, detail="", up_since=T0 - timedelta(hours=1), accounting_backlog=3)
    verdict = verdict_at(MIN_JOB_AGE_S + 60, Evidence(listed=[], accounted=[], health=lagging))
    assert (verdict.absent, verdict.later, verdict.found) == (False, True, None)
    assert "holds 3 messages" in verdict.reason


def test_an_untagged_slurmdbd_job_slurmctld_no_longer_lists_could_be_ours() -> None:
    evidence = Evidence(listed=[], accounted=[record(11, tag=None)], health=UP_BEFORE)
    verdict = verdict_at(MIN_JOB_AGE_S + 60, evidence)
    assert (verdict.absent, verdict.later) == (False, False)
    assert "untagged jobs of that user since the attempt: [11]" in verdict.reason
