"""Settling an attempt in doubt: did a submit whose answer never came reach Slurm?

The dispatcher committed an attempt, then died or lost the connection mid-call. Before it may submit again it
must know. This module decides from what the Factory's Slurm says; the dispatcher gathers that evidence in
this order, so that nothing that happens meanwhile can slip between the pieces:

1. slurmctld's listing (every job it holds: pending, running, and ended within MinJobAge);
2. slurmdbd's jobs submitted since the attempt, where the Factory has accounting;
3. slurmctld's health, which says since when it has run without a restart (taken last: a restart before
   the listing shows here).

Found by tag, user and submit time, in either source: the job is in Slurm. Otherwise absence is proven only if
slurmctld has run since before the attempt (a restart may have dropped a job it had not saved yet, and such
a job may even have started), and then either

- the attempt is younger than MinJobAge: slurmctld still lists every job submitted after it; or
- slurmdbd has caught up (slurmctld holds no message for it) and explains every job of that user submitted
  since: each carries another tag, or slurmctld lists it. slurmdbd writes a job's tag only when the job ends,
  so a job it holds without one and slurmctld no longer lists cannot be told apart from ours.

A slurmdbd that is merely behind cannot prove absence yet, but will once it catches up: that verdict is
``later`` (the job stays queued with the reason and is looked up again). Anything else cannot be proven: the
job becomes ``lost`` with the reason, never submitted twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from slurm_adapters.records import Health, JobRecord


@dataclass(frozen=True, slots=True)
class Attempt:
    """What the doubt is about: the broker job (its tag), the expected Slurm user, and when the attempt began."""

    job_id: str
    slurm_user: str | None
    started_at: datetime


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the Factory said. ``accounted`` is None where slurmdbd was not asked or could not answer."""

    listed: Sequence[JobRecord]
    accounted: Sequence[JobRecord] | None
    health: Health


@dataclass(frozen=True, slots=True)
class Verdict:
    """``found``: the Slurm job the attempt created. ``absent``: proven never created, so it may be submitted.
    ``later``: cannot tell yet, ask again. None of these: cannot tell, and ``reason`` says why (the job becomes
    lost)."""

    found: JobRecord | None
    absent: bool
    reason: str
    later: bool = False


def matches(record: JobRecord, attempt: Attempt, skew: timedelta) -> bool:
    """Whether a Slurm job is the one ``attempt`` may have submitted: our tag, our user, submitted after it.

    A missing user or submit time (an adapter that cannot tell) counts as a match: mistaking a foreign job for
    ours strands one job, while missing ours would submit it twice. ``skew`` is how far the broker's and
    Slurm's clocks may disagree.
    """
    if record.tag != attempt.job_id:
        return False
    if record.user is not None and attempt.slurm_user is not None and record.user != attempt.slurm_user:
        return False
    return record.submit_time is None or record.submit_time >= attempt.started_at - skew


def settle(attempt: Attempt, evidence: Evidence, *, now: datetime, min_job_age_s: int, skew: timedelta) -> Verdict:
    """The verdict on one attempt (see the module docstring for the reasoning)."""
    candidates = [r for r in [*evidence.listed, *(evidence.accounted or ())] if matches(r, attempt, skew)]
    if candidates:
        first = min(candidates, key=lambda r: (r.submit_time is None, r.submit_time, r.job_id))
        return Verdict(found=first, absent=False, reason=f"found as Slurm job {first.job_id}")
    restart = _restart_since(attempt, evidence.health, skew)
    if restart is not None:
        return _unknown(restart)
    age = now - attempt.started_at
    if age + skew < timedelta(seconds=min_job_age_s):
        return Verdict(
            found=None,
            absent=True,
            reason=f"not in Slurm: slurmctld, up since before the attempt, does not list the tag "
            f"{age.total_seconds():.0f} s after it (MinJobAge {min_job_age_s} s)",
        )
    return _settle_by_accounting(attempt, evidence, f"{age.total_seconds():.0f} s", min_job_age_s)


def _restart_since(attempt: Attempt, health: Health, skew: timedelta) -> str | None:
    """Why slurmctld may have restarted since the attempt, or None when it certainly has not."""
    if health.up_since is None:
        return "slurmctld cannot say since when it has run, so a restart that dropped the job cannot be ruled out"
    if health.up_since > attempt.started_at - skew:
        since = f"{health.up_since:%Y-%m-%d %H:%M:%S}"
        return (
            f"slurmctld may have restarted since the attempt (it vouches only for {since} UTC on: its start or, "
            "where the adapter reads no boot time, its statistics' daily reset); a restart may have dropped the "
            "job before saving it"
        )
    return None


def _settle_by_accounting(attempt: Attempt, evidence: Evidence, age: str, min_job_age_s: int) -> Verdict:
    """Beyond MinJobAge only slurmdbd can prove absence: caught up, and explaining every job since."""
    if evidence.accounted is None:
        return _unknown(f"the attempt is {age} old, beyond MinJobAge ({min_job_age_s} s), and no slurmdbd record "
                        "could be read")  # fmt: skip
    if evidence.health.accounting_backlog != 0:
        backlog = evidence.health.accounting_backlog
        return Verdict(found=None, absent=False, later=True,
                       reason=f"slurmdbd is behind: slurmctld holds {backlog} messages for it")  # fmt: skip
    listed_ids = {r.job_id for r in evidence.listed}
    unexplained = sorted(
        r.job_id
        for r in evidence.accounted
        if r.tag is None
        and r.job_id not in listed_ids
        and (r.user is None or attempt.slurm_user is None or r.user == attempt.slurm_user)
    )
    if unexplained:
        return _unknown(f"slurmdbd holds untagged jobs of that user since the attempt: {unexplained[:5]}")
    return Verdict(
        found=None,
        absent=True,
        reason=f"not in Slurm: neither slurmctld (up since before the attempt) nor slurmdbd (caught up) has the "
        f"tag {age} after the attempt",
    )


def _unknown(reason: str) -> Verdict:
    return Verdict(found=None, absent=False, reason=reason)


__all__ = ["Attempt", "Evidence", "Verdict", "matches", "settle"]
