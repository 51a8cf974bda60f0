"""What a Slurm hold means for a broker job. No hold clears by itself, so each one either ends the job or
leaves it waiting with a ``state_reason`` that names who can release it (and the reconciler counts it).

The broker never holds a job itself. Slurm names a hold by its reason code (slurmrestd's JSON) or, where
slurmctld wrote a description, by that (``scontrol``, with underscores for spaces); both forms are read.

Ends the job (``failed`` with Slurm's reason; the Slurm job is cancelled): holds Slurm made itself because it
could not launch the job, which nobody was asked to look at and which had been started once already.

- ``launch failed requeued held``: the batch launch failed (a prolog, the node, the user unknown there);
  Slurm requeued the job and held it.
- ``JobHoldMaxRequeue``: requeued more than MaxBatchRequeue times, then held.

Waits for a release (``scontrol release``), saying by whom: holds somebody made on the cluster on purpose.
The job's owner can still cancel it through the broker.

- ``JobHeldAdmin``: held by the cluster's administrators (or its SlurmUser).
- ``JobHeldUser``: held under the job's site account (``scontrol hold``). slurmrestd also reports
  ``scontrol requeuehold`` this way (measured on 22.05).
- ``job requeued in held state``: ``scontrol requeuehold``.

A pending job with any other reason is not held: it waits for what Slurm waits for
(:data:`slurm_adapters.records.NEVER_CLEARING_REASONS` are the job's own faults, rejected by the reconciler).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from slurm_adapters.records import JobRecord, SlurmJobState

# Who may release a hold of each kind; None: nobody is expected to, the job ends.
_ADMINISTRATORS = "the cluster's administrators"
_SITE_ACCOUNT = "whoever uses the job's site account on the cluster"
_RELEASED_BY: Mapping[str, str | None] = {
    "launch failed requeued held": None,
    "jobholdmaxrequeue": None,
    "jobheldadmin": _ADMINISTRATORS,
    "jobhelduser": _SITE_ACCOUNT,
    "job requeued in held state": _SITE_ACCOUNT,
}
HELD_PREFIX = "held in Slurm"  # how every waiting hold's state_reason begins


@dataclass(frozen=True, slots=True)
class Hold:
    """A hold Slurm reports: its ``reason`` as the adapter gave it, and who may release it (None: it ends the job)."""

    reason: str
    released_by: str | None

    @property
    def ends_job(self) -> bool:
        return self.released_by is None

    def state_reason(self) -> str:
        """The job's ``state_reason``: for a waiting hold, who can release it; otherwise why the job ended."""
        if self.released_by is None:
            return (
                f"Slurm held the job after it could not launch it ({self.reason}); such a hold never clears by "
                "itself, so the job was cancelled"
            )
        return (
            f"{HELD_PREFIX} ({self.reason}): it starts only once {self.released_by} release it (scontrol release); "
            "cancel it to give up"
        )


def hold_of(record: JobRecord) -> Hold | None:
    """The hold a pending Slurm job is under, or None when it is not held."""
    if record.state is not SlurmJobState.PENDING or record.reason is None:
        return None
    key = record.reason.replace("_", " ").strip().casefold()
    if key not in _RELEASED_BY:
        return None
    return Hold(reason=record.reason, released_by=_RELEASED_BY[key])


def is_hold_reason(state_reason: str | None) -> bool:
    """Whether a job's ``state_reason`` is that of a waiting hold (to clear once it is released)."""
    return state_reason is not None and state_reason.startswith(HELD_PREFIX)


__all__ = ["HELD_PREFIX", "Hold", "hold_of", "is_hold_reason"]
