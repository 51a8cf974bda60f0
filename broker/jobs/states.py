"""The rules of a job's life: which state changes are allowed, and what Slurm's states mean for ours.

States only move forward. The exceptions are Slurm's own doing and are recorded as events: a requeue or a
preemption moves a running job back to ``submitted``, and a ``lost`` job that Slurm shows again is tracked
again. Terminal states are otherwise final.
"""

from __future__ import annotations

from collections.abc import Mapping

from conveyor.spec import TERMINAL_STATES, JobState
from slurm_adapters.records import SlurmJobState as SlurmState

_FORWARD: Mapping[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset(
        {JobState.SUBMITTED, JobState.RUNNING, JobState.REJECTED, JobState.CANCELLED, JobState.LOST} | TERMINAL_STATES
    ),
    # submitted -> rejected: Slurm took the job but its pending reason can never clear (over MaxTime where
    # limits are not enforced at submit); the broker cancels it in Slurm and ends it rejected with that reason.
    JobState.SUBMITTED: frozenset({JobState.RUNNING} | TERMINAL_STATES),
    JobState.RUNNING: frozenset(TERMINAL_STATES - {JobState.REJECTED}),
}
# Moves against the grain that Slurm itself causes; each is recorded as an event of its own.
_SLURM_EXCEPTIONS: Mapping[JobState, frozenset[JobState]] = {
    JobState.RUNNING: frozenset({JobState.SUBMITTED}),  # requeue, preemption
    JobState.LOST: frozenset({JobState.SUBMITTED, JobState.RUNNING} | TERMINAL_STATES - {JobState.LOST}),
}


class IllegalTransition(ValueError):
    """A state change the rules forbid (a bug in the caller, or a stale view of the job)."""


def can_move(current: JobState, target: JobState) -> bool:
    return target in _FORWARD.get(current, frozenset()) or target in _SLURM_EXCEPTIONS.get(current, frozenset())


def is_exception(current: JobState, target: JobState) -> bool:
    """A backward move that only Slurm may cause (requeue, preemption, a lost job seen again)."""
    return target in _SLURM_EXCEPTIONS.get(current, frozenset())


def check_move(current: JobState, target: JobState) -> None:
    if not can_move(current, target):
        raise IllegalTransition(f"a job cannot move from {current} to {target}")


_FROM_SLURM: Mapping[SlurmState, JobState] = {
    SlurmState.PENDING: JobState.SUBMITTED,
    SlurmState.REQUEUED: JobState.SUBMITTED,
    SlurmState.RUNNING: JobState.RUNNING,
    SlurmState.SUSPENDED: JobState.RUNNING,
    SlurmState.COMPLETING: JobState.RUNNING,  # the exit code is not final until it clears
    SlurmState.COMPLETED: JobState.COMPLETED,
    SlurmState.FAILED: JobState.FAILED,
    SlurmState.OUT_OF_MEMORY: JobState.FAILED,
    SlurmState.NODE_FAIL: JobState.FAILED,
    SlurmState.BOOT_FAIL: JobState.FAILED,
    SlurmState.CANCELLED: JobState.CANCELLED,
    SlurmState.TIMEOUT: JobState.TIMEOUT,
    SlurmState.DEADLINE: JobState.TIMEOUT,
    SlurmState.PREEMPTED: JobState.SUBMITTED,  # Slurm requeues or cancels; the next listing tells which
}


def from_slurm(state: SlurmState) -> JobState | None:
    """The broker state a Slurm state means; None for UNKNOWN (keep what we have and look again)."""
    return _FROM_SLURM.get(state)
