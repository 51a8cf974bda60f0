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
