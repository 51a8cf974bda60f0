"""The domain's errors: what went wrong, in the broker's words. The HTTP edge maps each to one problem type
(app/problems.py), in one place, so the domain never speaks HTTP and every error answer is consistent."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class BrokerError(Exception):
    """Base of every error the broker raises on purpose. ``message`` is shown to the caller as is."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(BrokerError):
    """No such thing, or one the caller may not see: both answer the same, so ids cannot be probed."""

    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"no {kind} {ident!r}")
        self.kind = kind
        self.ident = ident


class Forbidden(BrokerError):
    """The caller is known but may not do this (e.g. an admin operation)."""


@dataclass(frozen=True, slots=True)
class Invalid:
    """One offending input: where (as FastAPI reports it, e.g. ``("query", "cursor")``), what, and a type."""

    loc: tuple[str | int, ...]
    msg: str
    type: str = "value_error"


class InvalidInput(BrokerError):
    """Input that passed the schema but not the domain's checks (a forged cursor, a bad Idempotency-Key)."""

    def __init__(self, errors: Sequence[Invalid]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in errors))
        self.errors = tuple(errors)


class IdempotencyKeyReused(BrokerError):
    """The caller's Idempotency-Key was already used with a different request body."""

    def __init__(self, key: str, job_id: str) -> None:
        super().__init__(
            f"Idempotency-Key {key!r} was already used for a different request (job {job_id}); "
            "send the original request again, or use a new key for a new job"
        )
        self.key = key
        self.job_id = job_id


class PlacementImpossible(BrokerError):
    """No configured Factory can ever run the job as specified. ``code`` is the placement's reason code,
    ``details`` its facts as data (the limits and partitions the message names)."""

    def __init__(self, code: str, message: str, details: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.code = code
        self.details = details


class CancelNotPossible(BrokerError):
    """The job already ended; there is nothing left to cancel."""


class OutputUnavailable(BrokerError):
    """The job's output cannot be read, and retrying at once will not help. ``reason``: ``not_submitted`` (not
    at Slurm yet), ``not_started`` (pending in Slurm), ``not_readable`` (the Factory's adapter cannot reach its
    files) or ``gone`` (the Factory answers, but Slurm no longer knows the job)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class FactoryUnreachable(BrokerError):
    """A call the caller asked for (reading output) could not reach the Factory now; retrying later may work."""

    def __init__(self, factory: str, message: str, retry_after_s: int = 30) -> None:
        super().__init__(message)
        self.factory = factory
        self.retry_after_s = retry_after_s


class IdentityProviderUnavailable(BrokerError):
    """An OIDC issuer's keys cannot be had now: the caller is not at fault, retrying later may work."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class SecretsUnavailable(BrokerError):
    """A job with ``secret_environment`` sent to a broker that has no secrets key: it can keep no secret."""


class AlreadyExists(BrokerError):
    """A thing with that id exists already (creating it again is refused, never merged)."""


class TooManyRequests(BrokerError):
    """The caller must slow down (e.g. too many failed authentications from its address)."""

    def __init__(self, message: str, retry_after_s: int, *, kind: str | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.kind = kind  # which limit: None for failed authentications, else e.g. "antenna"
