"""The transition rules: forward only, terminal is final, Slurm's exceptions allowed and marked."""

from __future__ import annotations

import pytest

from broker.jobs.states import IllegalTransition, can_move, check_move, from_slurm, is_exception
from conveyor.spec import TERMINAL_STATES, JobState
from slurm_adapters.records import SlurmJobState as SlurmState


@pytest.mark.parametrize("terminal", sorted(TERMINAL_STATES - {JobState.LOST}))
def test_terminal_states_are_final(terminal: JobState) -> None:
    for target in JobState:
        assert not can_move(terminal, target), (terminal, target)


def test_forward_path_and_its_shortcuts() -> None:
    assert can_move(JobState.QUEUED, JobState.SUBMITTED)
    assert can_move(JobState.SUBMITTED, JobState.RUNNING)
    assert can_move(JobState.RUNNING, JobState.COMPLETED)
    assert can_move(JobState.QUEUED, JobState.COMPLETED)  # a job that ran between two reconciler cycles
    assert can_move(JobState.QUEUED, JobState.REJECTED)
    assert can_move(JobState.SUBMITTED, JobState.REJECTED)  # a pending reason that can never clear
    assert not can_move(JobState.RUNNING, JobState.REJECTED)  # once it ran, Slurm's end state says it all
    assert not can_move(JobState.SUBMITTED, JobState.QUEUED)
    with pytest.raises(IllegalTransition):
        check_move(JobState.COMPLETED, JobState.RUNNING)


def test_backward_moves_only_slurm_causes_are_marked_as_exceptions() -> None:
    assert can_move(JobState.RUNNING, JobState.SUBMITTED)
    assert is_exception(JobState.RUNNING, JobState.SUBMITTED)
    assert can_move(JobState.LOST, JobState.RUNNING)
    assert is_exception(JobState.LOST, JobState.COMPLETED)
    assert not is_exception(JobState.SUBMITTED, JobState.RUNNING)
    assert not can_move(JobState.LOST, JobState.QUEUED)


def test_every_slurm_state_maps_explicitly() -> None:
    unmapped = {s for s in SlurmState if from_slurm(s) is None}
    assert unmapped == {SlurmState.UNKNOWN}
    assert from_slurm(SlurmState.OUT_OF_MEMORY) is JobState.FAILED
    assert from_slurm(SlurmState.COMPLETING) is JobState.RUNNING
