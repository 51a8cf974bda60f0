"""The adapter contract: one async interface over every way of reaching a Slurm cluster (rest, cli, pyslurm)."""

from __future__ import annotations

import abc
from collections.abc import Collection
from datetime import datetime

from slurm_adapters.errors import AccountingUnavailable, OutputUnavailable
from slurm_adapters.records import (
    MAX_OUTPUT_CHUNK_BYTES,
    ClusterInfo,
    Health,
    JobRecord,
    OutputChunk,
    OutputStream,
    Rendering,
    SlurmJobSpec,
    SubmitContext,
)


class SlurmAdapter(abc.ABC):
    """One Slurm cluster, reached one way. Every method may raise the typed errors above.

    ``user`` arguments are the *mapped site account* the job runs as; the adapter checks it against the
    site policy (no root, no SlurmUser, no system accounts) before anything reaches Slurm.
    """

    kind: str  # "rest", "cli", "pyslurm"

    def __init__(self, cluster: str) -> None:
        self.cluster = cluster

    @abc.abstractmethod
    def render(self, spec: SlurmJobSpec, user: str) -> Rendering:
        """What :meth:`submit` would send, without sending it. Applies the same safety checks."""

    @abc.abstractmethod
    async def submit(self, spec: SlurmJobSpec, user: str, context: SubmitContext | None = None) -> int:
        """Submit the job as ``user``; return Slurm's job id. With a ``context``, never start a call that
        could still be running after ``context.not_after`` (see :class:`SubmitContext`)."""

    @abc.abstractmethod
    async def get_job(self, job_id: int) -> JobRecord:
        """One job by id, with the operator's view. Raises :class:`JobNotFound`."""

    @abc.abstractmethod
    async def list_jobs(self, *, tags: Collection[str] | None = None, tag_prefix: str | None = None) -> list[JobRecord]:
        """Every job the controller knows, finished ones included, in ONE call to Slurm.

        ``tags`` keeps only jobs whose tag is in the collection; ``tag_prefix`` only those whose tag starts
        with it (e.g. every job this broker submitted).
        """

    @abc.abstractmethod
    async def cancel(self, job_id: int, user: str, tag: str | None = None) -> None:
        """Cancel as ``user``. Cancelling a job that already ended is not an error; an unknown id is. With a
        ``tag``, the job is read back first and cancelled only if its tag and user still match (slurmctld
        re-issues ids after a crash): otherwise :class:`JobNotFound`."""

    @abc.abstractmethod
    async def read_output(self, job_id: int, stream: OutputStream = "stdout", max_bytes: int = 65536) -> str:
        """The tail of the job's stdout or stderr. Raises :class:`OutputUnavailable` where it cannot."""

    async def read_output_chunk(
        self, job_id: int, stream: OutputStream = "stdout", offset: int = 0, max_bytes: int = MAX_OUTPUT_CHUNK_BYTES
    ) -> OutputChunk:
        """At most ``max_bytes`` (capped at :data:`MAX_OUTPUT_CHUNK_BYTES`) of the job's stdout or stderr from
        ``offset``, read from the path in Slurm's own record of the job, with :func:`~slurm_adapters.safety.
        read_owned_chunk`'s refusals. A negative ``offset`` or ``max_bytes`` < 1 is :class:`InvalidRequest`;
        an offset past the end gives no data and ``eof``. Raises :class:`OutputUnavailable` where it cannot.
        """
        raise OutputUnavailable(f"the {self.kind} adapter does not read output by range", cluster=self.cluster)

    @abc.abstractmethod
    async def cluster_info(self) -> ClusterInfo:
        """Partitions with their limits, nodes, GPU types with total and free counts."""

    @abc.abstractmethod
    async def health(self) -> Health:
        """An authenticated round trip to slurmctld; raises the typed error when it fails."""

    async def accounted_jobs(
        self, *, job_ids: Collection[int] = (), submitted_after: datetime | None = None
    ) -> list[JobRecord]:
        """Jobs as slurmdbd keeps them, after slurmctld has forgotten them too (sacct's view), in one call:
        those in ``job_ids``, or every job submitted after ``submitted_after``.

        Raises :class:`AccountingUnavailable` where the cluster has no slurmdbd or this adapter cannot ask it.
        """
        raise AccountingUnavailable(f"the {self.kind} adapter does not read slurmdbd", cluster=self.cluster)

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most adapters hold nothing
        """Release connections and worker processes."""
