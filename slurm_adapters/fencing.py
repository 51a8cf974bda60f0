"""The two checks every adapter makes before a state-changing call, so that each kind keeps them alike.

* The submit fence: with a :class:`~slurm_adapters.records.SubmitContext`, a submit is never *started* when
  its own call deadline (the adapter's ``timeout_s``) would end after ``context.not_after``. Whoever settles
  the attempt after ``not_after`` (+ MessageTimeout + clock skew) can then trust that no call of it is still
  under way.
* Cancel by id AND tag: slurmctld re-issues job ids after a crash that lost its state, so a cancel that
  names the broker's tag cancels only the job that still carries that tag and belongs to that user.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from slurm_adapters.errors import JobNotFound, SubmitWindowClosed
from slurm_adapters.records import JobRecord, SubmitContext


def check_submit_window(
    context: SubmitContext | None, timeout_s: float, *, cluster: str, now: datetime | None = None
) -> None:
    """Raise :class:`SubmitWindowClosed` (not applied) if a call started ``now`` could outlast ``not_after``.

    ``now`` is this host's clock (default: the wall clock in UTC); None ``context``: no window, no check.
    """
    if context is None:
        return
    now = datetime.now(UTC) if now is None else now
    deadline = now + timedelta(seconds=timeout_s)
    if deadline > context.not_after:
        raise SubmitWindowClosed(
            f"submit of attempt {context.attempt} not started: its call deadline ({timeout_s:g} s, until "
            f"{deadline:%H:%M:%S.%f} UTC) would end after the attempt's not_after ({context.not_after:%H:%M:%S.%f} "
            "UTC); nothing was sent to Slurm",
            cluster=cluster,
        )


def check_cancel_target(record: JobRecord, *, user: str, tag: str, cluster: str) -> None:
    """Raise :class:`JobNotFound` unless ``record`` (the job read back with the operator's view) carries
    ``tag`` and belongs to ``user``; the message says which did not match. An unknown tag or user does not
    match: a cancel that cannot be sure it hits its own job must not happen."""
    mismatches = []
    if record.tag != tag:
        mismatches.append(f"its tag is {record.tag!r}, not {tag!r}")
    if record.user != user:
        mismatches.append(f"its user is {record.user!r}, not {user!r}")
    if mismatches:
        raise JobNotFound(
            f"job {record.job_id} is not the job to cancel: {' and '.join(mismatches)} (slurmctld may have "
            "re-issued the id); nothing was cancelled",
            cluster=cluster,
        )


__all__ = ["check_cancel_target", "check_submit_window"]
