"""Errors the repositories raise for the caller to translate (the API maps each to a problem detail)."""

from __future__ import annotations


class IdempotencyConflict(Exception):
    """The caller reused an Idempotency-Key with a different request body (HTTP 409)."""

    def __init__(self, caller: str, key: str, job_id: str) -> None:
        super().__init__(f"Idempotency-Key {key!r} was already used by {caller!r} for another request")
        self.caller = caller
        self.key = key
        self.job_id = job_id


class InvalidCursor(ValueError):
    """A page cursor that this broker did not issue, or that was altered (HTTP 400)."""


class NotAMember(Exception):
    """At commit, the job's owner is no member of its project (any more): nothing of the job was stored."""

    def __init__(self, user_id: str, project_id: str) -> None:
        super().__init__(f"{user_id!r} is not a member of project {project_id!r}")
        self.user_id = user_id
        self.project_id = project_id


class AllocationNotInForce(Exception):
    """At commit, the allocation the job was to hold has ended (or not begun): nothing of the job was stored."""

    def __init__(self, allocation_id: str) -> None:
        super().__init__(f"allocation {allocation_id} is not in force")
        self.allocation_id = allocation_id


class AntennaQuotaFull(Exception):
    """At commit, the Antenna's national users already had its quota of jobs not yet ended: nothing of the
    job was stored. Plain values only (the transaction is rolled back by the time anyone reads this)."""

    def __init__(self, antenna_id: str, active: int, quota: int | None) -> None:
        super().__init__(f"Antenna {antenna_id} has {active} active jobs, its quota is {quota}")
        self.antenna_id = antenna_id
        self.active = active
        self.quota = quota
