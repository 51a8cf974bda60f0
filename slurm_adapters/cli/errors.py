"""Slurm's stderr to the adapter's typed errors.

The clients print ``<tool>: error: <message>`` (sbatch, scancel) or ``slurm_load_jobs error: <message>``
(scontrol) and exit non-zero. The site-side failures (controller unreachable, authentication) are told
apart by Slurm's fixed messages and checked first: "Batch job submission failed: Unable to contact slurm
controller" is the site's fault even though it says "submission failed".
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from slurm_adapters.errors import (
    AuthenticationError,
    ClusterUnavailable,
    InvalidRequest,
    JobNotFound,
    SiteError,
    SlurmError,
)

# munge/auth failures. A client with the wrong munge key sees "Zero Bytes were transmitted or received".
AUTH_MESSAGES = (
    "Zero Bytes were transmitted or received",
    "Protocol authentication error",
    "Invalid user id",
    "Munge encode failed",
    "Munge decode failed",
    "Invalid authentication credential",
    "Unable to create auth credential",
    "auth_g_create",
)
# slurmctld down, hung, or not answering.
UNAVAILABLE_MESSAGES = (
    "Unable to contact slurm controller",
    "Socket timed out on send/recv operation",
    "Connection refused",
    "Connection reset by peer",
    "Communication connection failure",
    "Could not establish a configuration source",
    "Slurm backup controller in standby mode",
    "Slurm temporarily unable to accept job",
    "Slurmctld is not responding",
    # slurmctld's RPC rate limit (rl_enable, 23.02+): SLURMCTLD_COMMUNICATIONS_BACKOFF / _HARD_DROP. Congestion
    # at the site, refused before the controller acted: never the job's fault.
    "Rate limit exceeded",
)
# The controller may have acted before the failure (it did receive the request).
_AMBIGUOUS_MESSAGES = ("Socket timed out on send/recv operation", "Connection reset by peer")
NOT_FOUND_MESSAGES = ("Invalid job id specified",)
# sbatch/scancel refusals of the request as given (Slurm's own wording, all releases measured).
INVALID_MESSAGES = (
    "Requested node configuration is not available",
    "Invalid partition name specified",
    "Requested time limit is invalid",
    "Invalid account or account/partition combination",
    "Invalid qos specification",
    "Invalid generic resource (gres) specification",
    "Invalid Trackable RESource (TRES) specification",
    "Job violates accounting/QOS policy",
    "Requested partition configuration not available now",
    "More processors requested than permitted",
    "Node count specification invalid",
    "Memory required by task is not available",
    "Access/permission denied",
    "Batch job submission failed",
    "Kill job error",
)
_ERROR_LINE = re.compile(r"^(?:\S+:\s+)?(?:error|fatal):\s*(?P<text>.+)$", re.IGNORECASE)
_LOAD_ERROR = re.compile(r"^slurm_\w+ error:\s*(?P<text>.+)$")


def error_lines(stderr: str) -> list[str]:
    """Slurm's own error texts, without the ``sbatch: error:`` prefixes; warnings are not errors."""
    messages: list[str] = []
    for line in stderr.splitlines():
        match = _LOAD_ERROR.match(line.strip()) or _ERROR_LINE.match(line.strip())
        if match:
            messages.append(match.group("text").strip())
    return messages


def slurm_messages(stderr: str) -> list[str]:
    """:func:`error_lines`, or the raw non-empty lines when none has Slurm's error form."""
    return error_lines(stderr) or [line.strip() for line in stderr.splitlines() if line.strip()]


def _first(messages: Iterable[str], needles: Iterable[str]) -> str | None:
    needles = tuple(needles)
    for message in messages:
        if any(needle.lower() in message.lower() for needle in needles):
            return message
    return None


def classify(
    stderr: str,
    *,
    cluster: str,
    tool: str,
    maybe_applied: bool = False,
    job_error_default: bool = False,
) -> SlurmError:
    """The typed error for a failed command.

    ``maybe_applied`` says whether the command changes state (sbatch, scancel): a timeout-like failure
    then leaves the change in doubt. ``job_error_default``: a failure not recognised as the site's is the
    request's (sbatch validates its options and the controller refuses jobs with specific messages);
    otherwise it is the site's.
    """
    messages = slurm_messages(stderr) or [f"{tool} failed without a message"]
    if found := _first(messages, AUTH_MESSAGES):
        return AuthenticationError(f"{tool}: {found}", cluster=cluster, errors=messages)
    if found := _first(messages, UNAVAILABLE_MESSAGES):
        ambiguous = maybe_applied and _first([found], _AMBIGUOUS_MESSAGES) is not None
        return ClusterUnavailable(f"{tool}: {found}", cluster=cluster, errors=messages, maybe_applied=ambiguous)
    if found := _first(messages, NOT_FOUND_MESSAGES):
        return JobNotFound(f"{tool}: {found}", cluster=cluster, errors=messages)
    if found := _first(messages, INVALID_MESSAGES):
        return InvalidRequest(f"{tool}: {found}", cluster=cluster, errors=messages)
    if job_error_default:
        return InvalidRequest(f"{tool}: {messages[-1]}", cluster=cluster, errors=messages)
    return SiteError(f"{tool}: {messages[-1]}", cluster=cluster, errors=messages)
