"""The adapters' typed errors: what the *job* did wrong (the user must change it) apart from what the *site* did
wrong (retry later, mark the Factory unhealthy)."""

from __future__ import annotations

from collections.abc import Collection


class SlurmError(Exception):
    """Base of everything an adapter raises on purpose. ``errors`` holds Slurm's own messages."""

    def __init__(self, message: str, *, cluster: str | None = None, errors: Collection[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.cluster = cluster
        self.errors = tuple(errors)

    def __str__(self) -> str:
        where = f"[{self.cluster}] " if self.cluster else ""
        return f"{where}{self.message}"


class JobError(SlurmError):
    """The job itself is at fault: resubmitting it unchanged will fail the same way."""


class InvalidRequest(JobError):
    """Slurm (or the adapter's own checks) refused the job as specified."""


class UnsafeRequest(InvalidRequest):
    """The adapter refused to forward the request: a forbidden user or environment variable."""


class SiteError(SlurmError):
    """The site is at fault: the job may succeed later or elsewhere."""


class AuthenticationError(SiteError):
    """Slurm rejected our credential (bad key, expired token, unknown user)."""


class ClusterUnavailable(SiteError):
    """slurmctld (or slurmrestd) could not be reached or did not answer in time.

    ``maybe_applied`` is True when the request may have reached Slurm before the failure (a timeout or
    a connection lost after sending): for a submit, the job may exist, so look the tag up before retrying.
    """

    def __init__(
        self,
        message: str,
        *,
        cluster: str | None = None,
        errors: Collection[str] = (),
        maybe_applied: bool = False,
    ) -> None:
        super().__init__(message, cluster=cluster, errors=errors)
        self.maybe_applied = maybe_applied


class SubmitWindowClosed(ClusterUnavailable):
    """A submit refused before it started: its call could still have been running after the attempt's
    ``not_after`` (see :class:`~slurm_adapters.records.SubmitContext`). Nothing reached Slurm
    (``maybe_applied`` is always False), and the fault is the caller's lateness, not the site's."""

    def __init__(self, message: str, *, cluster: str | None = None, errors: Collection[str] = ()) -> None:
        super().__init__(message, cluster=cluster, errors=errors, maybe_applied=False)


class JobNotFound(SiteError):
    """Slurm does not know the job id (never existed, or purged after MinJobAge)."""


class AccountingUnavailable(SlurmError):
    """slurmdbd cannot be asked: the cluster keeps no accounting, this adapter cannot reach it, or it failed."""


class OutputUnavailable(SlurmError):
    """The adapter cannot read the job's output files (not reachable from here, or not written yet)."""


# ---------------------------------------------------------------------------------------------------
