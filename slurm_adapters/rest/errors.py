"""Turn slurmrestd's answers into the adapter's typed errors.

The HTTP status alone says little: 22.05 answers 500 for a rejected token, a bad partition and an unknown
job alike, 24.11 answers 511/500/404 and 26.05 adds 422; a cancel of an unknown job is 200 on 24.11+. So the
decision is made on Slurm's own error numbers (and words) from the body, with the status as a fallback.

One case cannot be told from the body at all: on 22.05 a rejected token comes back either as error -1
"Unspecified error" (the plugin passes the return code, not errno) or as 5005 "Zero Bytes were transmitted
or received" (slurmctld hangs up on the bad credential), exactly as a dead slurmctld would. Slurm's client
library retries a refused controller connection once a second for MessageTimeout seconds (10 by default)
before it gives up, while a rejection is immediate; so a slow ambiguous answer is an unreachable cluster
and a fast one a rejected credential.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import Literal

from slurm_adapters.errors import (
    AuthenticationError,
    ClusterUnavailable,
    InvalidRequest,
    JobNotFound,
    SiteError,
    SlurmError,
)
from slurm_adapters.formats.common import SlurmMessage

Operation = Literal["probe", "health", "info", "get", "list", "submit", "cancel"]
_USER_OPERATIONS = frozenset({"submit", "cancel"})  # sent with the mapped user's token; they change state

# Answers slower than this are "could not reach slurmctld" when the body is ambiguous (see above).
AMBIGUOUS_SLOW_S = 3.0

INVALID_JOB_ID = 2017
ALREADY_DONE = 2021
ACCESS_DENIED = 2002
_NOT_FOUND = frozenset({INVALID_JOB_ID})
_AUTH = frozenset(
    {
        1007,  # SLURM_PROTOCOL_AUTHENTICATION_ERROR (24.11+: bad or expired token)
        2010,  # ESLURM_USER_ID_MISSING "Invalid user id": the user is unknown to slurmctld
        9008,  # ESLURM_REST_AUTH_FAIL
        *range(6000, 6100),  # ESLURM_AUTH_*
    }
)
# slurmctld not reachable, or slurmrestd lost it; the request never reached the controller. Slurm passes the
# OS's errno on as the error number where a socket call failed (Linux numbers: slurmrestd runs on Linux).
_UNREACHABLE = frozenset(
    {1001, 1002, 1004, 1014, 1019, 1021, 1025, 1800, 1801, 1803, 1804, 1805, 2027, 2131, errno.ECONNREFUSED}
)
# Lost after the request was sent: it may have been applied (e.g. slurmctld killed mid-call resets the line).
_LOST_AFTER_SEND = frozenset({1003, 1022, 1023, 1024, 1802, 5003, 5004, errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT})
_AMBIGUOUS = frozenset({-1, 5005})

_UNREACHABLE_WORDS = (
    "unable to contact slurm controller",
    "connection refused",
    "communication connection failure",
    "standby mode",
)
_LOST_WORDS = (
    "socket timed out",
    "communication receive failure",
    "connection reset by peer",
    "broken pipe",
    "connection timed out",
)
_AUTH_WORDS = ("authentication", "invalid user id", "rejecting thread config token")

Kind = Literal["unreachable", "lost", "auth", "ambiguous", "not_found", "denied", "other"]


# In priority order: the first kind a message matches is its kind.
_KINDS: tuple[tuple[Kind, frozenset[int], tuple[str, ...]], ...] = (
    ("unreachable", _UNREACHABLE, _UNREACHABLE_WORDS),
    ("lost", _LOST_AFTER_SEND, _LOST_WORDS),
    ("auth", _AUTH, _AUTH_WORDS),
    ("ambiguous", _AMBIGUOUS, ()),
    ("not_found", _NOT_FOUND, ("invalid job id",)),
    ("denied", frozenset({ACCESS_DENIED}), ("access/permission denied",)),
)


def _kind(message: SlurmMessage) -> Kind:
    words = f"{message.error} {message.description}".lower()
    for kind, numbers, phrases in _KINDS:
        if message.number in numbers or any(phrase in words for phrase in phrases):
            return kind
    return "other"


def _for_status_only(cluster: str, operation: Operation, status: int) -> SlurmError | None:
    mutating = operation in _USER_OPERATIONS
    if status < 400:
        return None
    if status in (401, 403, 511):
        return AuthenticationError(f"slurmrestd refused the credential (HTTP {status})", cluster=cluster)
    if status == 404:
        return ClusterUnavailable("slurmrestd does not serve this path (HTTP 404)", cluster=cluster)
    if status >= 500:
        return ClusterUnavailable(
            f"slurmrestd answered HTTP {status} without a Slurm error", cluster=cluster, maybe_applied=mutating
        )
    if operation == "submit":
        return InvalidRequest(f"slurmrestd rejected the job (HTTP {status})", cluster=cluster)
    return SiteError(f"slurmrestd answered HTTP {status}", cluster=cluster)


def classify(
    *,
    cluster: str,
    operation: Operation,
    status: int,
    messages: Sequence[SlurmMessage],
    elapsed_s: float = 0.0,
) -> SlurmError | None:
    """The typed error for one answer, or None when it is a success.

    ``messages`` are the body's ``errors`` plus, for a cancel, its per-job ``status`` failures.
    """
    if operation == "cancel" and messages:  # a job that already ended is what the caller wanted
        messages = [m for m in messages if m.number != ALREADY_DONE]
        if not messages:
            return None
    if not messages:
        return _for_status_only(cluster, operation, status)
    return _for_messages(cluster, operation, status, messages, elapsed_s)


def _for_messages(
    cluster: str, operation: Operation, status: int, messages: Sequence[SlurmMessage], elapsed_s: float
) -> SlurmError:
    texts = [m.text for m in messages]
    summary = "; ".join(dict.fromkeys(texts))
    kinds = {_kind(m) for m in messages}
    mutating = operation in _USER_OPERATIONS
    error: SlurmError
    if kinds & {"unreachable", "lost"}:
        error = ClusterUnavailable(f"slurmctld unreachable: {summary}", maybe_applied=mutating and "lost" in kinds)
    elif "auth" in kinds:
        error = AuthenticationError(f"Slurm rejected the credential: {summary}")
    elif "ambiguous" in kinds and elapsed_s >= AMBIGUOUS_SLOW_S:
        error = ClusterUnavailable(
            f"slurmctld did not answer within {elapsed_s:.1f} s: {summary}", maybe_applied=mutating
        )
    elif "ambiguous" in kinds:
        error = AuthenticationError(f"slurmctld refused the request at once (22.05's rejected token): {summary}")
    elif "not_found" in kinds and operation in ("get", "cancel"):
        error = JobNotFound(summary)
    elif "denied" in kinds and not mutating:
        error = AuthenticationError(f"the operator account may not do this: {summary}")
    elif mutating:  # the job (or the user's right to it) is at fault: resubmitting unchanged fails again
        error = InvalidRequest(summary)
    elif status in (401, 403, 511):
        error = AuthenticationError(summary)
    else:
        error = SiteError(summary)
    error.cluster = cluster
    error.errors = tuple(texts)
    return error
