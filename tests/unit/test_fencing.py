"""The adapters' shared checks (slurm_adapters.fencing): the submit fence's boundary and cancel-by-tag's verdicts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from slurm_adapters.errors import ClusterUnavailable, JobNotFound, SubmitWindowClosed
from slurm_adapters.fencing import check_cancel_target, check_submit_window
from slurm_adapters.records import JobRecord, SlurmJobState, SubmitContext

NOW = datetime(2026, 12, 7, 1, 0, tzinfo=UTC)
NOT_AFTER = NOW + timedelta(seconds=8)
CONTEXT = SubmitContext("job_x/2", NOT_AFTER, "user:1", "EHPC-AIF-2026PG01-1147")


def test_a_call_whose_deadline_ends_by_not_after_may_start() -> None:
    check_submit_window(CONTEXT, 8.0, cluster="alpha", now=NOW)  # ends exactly at not_after
    check_submit_window(None, 8.0, cluster="alpha", now=NOW + timedelta(hours=1))  # no context, no window


def test_a_call_whose_deadline_would_end_after_not_after_is_refused_as_not_applied() -> None:
    with pytest.raises(SubmitWindowClosed, match="job_x/2") as caught:
        check_submit_window(CONTEXT, 8.0, cluster="alpha", now=NOW + timedelta(microseconds=1))
    assert isinstance(caught.value, ClusterUnavailable)
    assert caught.value.maybe_applied is False
    assert caught.value.cluster == "alpha"
    with pytest.raises(SubmitWindowClosed):
        check_submit_window(CONTEXT, 8.0, cluster="alpha", now=NOT_AFTER + timedelta(seconds=1))


def record(tag: str | None, user: str | None) -> JobRecord:
    return JobRecord(
        job_id=7, tag=tag, state=SlurmJobState.RUNNING, raw_state="RUNNING", reason=None, exit_code=None,
        signal=None, submit_time=None, start_time=None, end_time=None, nodes="cn1", user=user,
    )  # fmt: skip


def test_cancel_target_must_carry_the_tag_and_belong_to_the_user() -> None:
    check_cancel_target(record("job_x", "alice"), user="alice", tag="job_x", cluster="alpha")
    with pytest.raises(JobNotFound, match="its tag is 'job_y', not 'job_x'") as caught:
        check_cancel_target(record("job_y", "alice"), user="alice", tag="job_x", cluster="alpha")
    assert "its user" not in caught.value.message
    with pytest.raises(JobNotFound, match="its user is 'bob', not 'alice'") as caught:
        check_cancel_target(record("job_x", "bob"), user="alice", tag="job_x", cluster="alpha")
    assert "its tag" not in caught.value.message
    with pytest.raises(JobNotFound, match="its tag is None, not 'job_x' and its user is None, not 'alice'"):
        check_cancel_target(record(None, None), user="alice", tag="job_x", cluster="alpha")
