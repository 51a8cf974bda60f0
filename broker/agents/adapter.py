"""The adapter of a Factory reached through its agent: every Slurm call becomes an order in the Factory's
mailbox, answered by the agent's report.

At-most-once across the boundary: a submit order carries the attempt's ``not_after`` (the agent never starts
the call after it); the adapter waits for the report until ``not_after`` + the report grace. No report by then
means the job may exist (``ClusterUnavailable(maybe_applied=True)``): the dispatcher settles the attempt by tag
lookup. No agent to give the order to means nothing was written (``maybe_applied=False``).

The reconciler's listing (active jobs by the broker's tag prefix), health and cluster information are served
from what the agent pushes (:mod:`broker.agents.listings`, :mod:`broker.agents.site_states`) once taken after
the call; without a fresh one in time, each is a read order like every other read.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from broker.agents.errors import NoAgent
from broker.agents.listings import ListingRepository
from broker.agents.metrics import AgentMetrics
from broker.agents.orders import OrderRepository, PlacedOrder, ReadOp
from broker.agents.site_states import PushedSite, SiteStateRepository
from broker.db.types import utc_now
from slurm_adapters.agent_protocol import Report, Requester
from slurm_adapters.codec import (
    ProtocolError,
    cluster_info_from_json,
    error_from_json,
    health_from_json,
    int_from_json,
    output_chunk_from_json,
    record_from_json,
    records_from_json,
    spec_to_json,
    str_from_json,
)
from slurm_adapters.errors import ClusterUnavailable, InvalidRequest, SlurmError
from slurm_adapters.interface import SlurmAdapter
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
from slurm_adapters.safety import check_chunk_request

_T = TypeVar("_T")
PUSH_WAIT_SLACK_S = 5.0  # beyond two push intervals and the skew, for a push under way to arrive
_OUTPUT_READS = frozenset({"read_output", "read_output_chunk"})  # their results are forgotten once read


@dataclass(frozen=True, slots=True)
class PushedState:
    """Where the adapter finds what the agent pushes: its listing of jobs tagged ``tag_prefix`` (every
    ``listing_interval_s``) and the site's state (every ``site_interval_s``), from an agent whose clock may be
    ``clock_skew_s`` off. A value is served only if taken after the call, even by a clock that fast."""

    listings: ListingRepository
    sites: SiteStateRepository
    tag_prefix: str
    listing_interval_s: float
    site_interval_s: float
    clock_skew_s: float
    metrics: AgentMetrics

    def _after(self, asked_at: datetime) -> datetime:
        return asked_at + timedelta(seconds=self.clock_skew_s)

    def _timeout_s(self, interval_s: float) -> float:
        """How long a call waits for a fresh push: two intervals, the skew, and time for a push under way (a
        listing of thousands of jobs takes seconds to take, send and apply)."""
        return 2 * interval_s + self.clock_skew_s + PUSH_WAIT_SLACK_S

    def _stale_s(self, interval_s: float) -> float:
        """No push received for as long as a call would wait: the agent is not pushing, ask by order at once."""
        return self._timeout_s(interval_s)

    async def records(self, factory_id: str, tag_prefix: str, asked_at: datetime) -> list[JobRecord] | None:
        """The jobs tagged ``tag_prefix`` (within the pushed prefix), or None when there is no fresh listing."""
        if not tag_prefix.startswith(self.tag_prefix):
            return None
        interval = self.listing_interval_s
        records = await self.listings.listed_after(
            factory_id, self._after(asked_at), timeout_s=self._timeout_s(interval), stale_s=self._stale_s(interval)
        )
        self.metrics.served(factory_id, "listing", from_push=records is not None)
        if records is None:
            return None
        return [record for record in records if record.tag is not None and record.tag.startswith(tag_prefix)]

    async def health(self, factory_id: str, asked_at: datetime) -> PushedSite | None:
        """The site's state (its health, or the error of its health call), or None without a fresh one."""
        interval = self.site_interval_s
        site = await self.sites.health_after(
            factory_id, self._after(asked_at), timeout_s=self._timeout_s(interval), stale_s=self._stale_s(interval)
        )
        self.metrics.served(factory_id, "health", from_push=site is not None)
        return site

    async def cluster_info(self, factory_id: str, asked_at: datetime) -> ClusterInfo | None:
        interval = self.site_interval_s
        info = await self.sites.cluster_info_after(
            factory_id, self._after(asked_at), timeout_s=self._timeout_s(interval), stale_s=self._stale_s(interval)
        )
        self.metrics.served(factory_id, "cluster_info", from_push=info is not None)
        return info


class AgentAdapter(SlurmAdapter):
    """One agent Factory's Slurm, reached by orders. ``timeout_s`` bounds a submit without a context and a
    cancel; ``read_timeout_s`` a read; ``report_grace_s`` is how long after not_after a report may come."""

    kind = "agent"

    def __init__(
        self,
        cluster: str,
        *,
        factory_id: str,
        orders: OrderRepository,
        timeout_s: float,
        read_timeout_s: float,
        report_grace_s: float,
        pushed: PushedState | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        super().__init__(cluster)
        self.factory_id = factory_id
        self._orders = orders
        self._timeout = timedelta(seconds=timeout_s)
        self._read_timeout = timedelta(seconds=read_timeout_s)
        self._grace = timedelta(seconds=report_grace_s)
        self._pushed = pushed
        self._clock = clock

    def render(self, spec: SlurmJobSpec, user: str) -> Rendering:
        """The spec as the agent receives it; the site renders its own script and payload."""
        return Rendering(adapter=self.kind, user=user, script=spec.script, payload=spec_to_json(spec))

    async def submit(self, spec: SlurmJobSpec, user: str, context: SubmitContext | None = None) -> int:
        now = self._clock()
        secret_names: frozenset[str] = frozenset()
        if context is None:  # a caller outside the dispatcher: the adapter's own deadline, no attempt number
            not_after = now + self._timeout
            attempt, requester = f"{spec.tag}/-", Requester(user=user, project="-")
        else:
            secret_names = context.secret_names
            not_after = context.not_after
            attempt = context.attempt
            requester = Requester(
                user=context.requester_user, project=context.requester_project, antenna=context.requester_antenna
            )
        if not_after <= now:
            raise self._unavailable("the attempt's submit window has passed; nothing was sent", maybe_applied=False)
        if secret_names and not self._orders.keeps_secrets:  # an order must never hold them in the clear
            raise self._unavailable(
                "this broker process has no secrets key to keep the job's secret environment sealed in its order; "
                "nothing was sent",
                maybe_applied=False,
            )
        try:
            placed = await self._orders.put_submit(
                self.factory_id,
                attempt=attempt,
                spec=spec_to_json(spec),
                site_user=user,
                requester=requester,
                not_after=not_after,
                now=now,
                secret_names=secret_names,
            )
        except NoAgent as exc:
            raise self._unavailable(exc.message, maybe_applied=False) from None
        report = await self._report(placed, "submit", in_doubt=True)
        try:
            return int_from_json(report.result, "submit")
        except ProtocolError as exc:
            raise self._unavailable(f"the agent's submit report is malformed: {exc}", maybe_applied=True) from None

    async def cancel(self, job_id: int, user: str, tag: str | None = None) -> None:
        if tag is None:
            raise InvalidRequest("an agent cancels only by Slurm id and tag", cluster=self.cluster)
        now = self._clock()
        try:
            placed = await self._orders.put_cancel(
                self.factory_id, slurm_job_id=job_id, tag=tag, site_user=user, not_after=now + self._timeout, now=now
            )
        except NoAgent as exc:
            raise self._unavailable(exc.message, maybe_applied=False) from None
        await self._report(placed, "cancel", in_doubt=True)

    async def get_job(self, job_id: int) -> JobRecord:
        return await self._read("get_job", {"job_id": int(job_id)}, record_from_json)

    async def list_jobs(self, *, tags: Collection[str] | None = None, tag_prefix: str | None = None) -> list[JobRecord]:
        if self._pushed is not None and tags is None and tag_prefix is not None:
            listed = await self._pushed.records(self.factory_id, tag_prefix, self._clock())
            if listed is not None:
                return listed
        args = {"tags": sorted(tags) if tags is not None else None, "tag_prefix": tag_prefix}
        return await self._read("list_jobs", args, records_from_json)

    async def accounted_jobs(
        self, *, job_ids: Collection[int] = (), submitted_after: datetime | None = None
    ) -> list[JobRecord]:
        args = {
            "job_ids": sorted(int(job_id) for job_id in job_ids),
            "submitted_after": submitted_after.isoformat() if submitted_after is not None else None,
        }
        return await self._read("accounted_jobs", args, records_from_json)

    async def read_output(self, job_id: int, stream: OutputStream = "stdout", max_bytes: int = 65536) -> str:
        args = {"job_id": int(job_id), "stream": stream, "max_bytes": int(max_bytes)}
        return await self._read("read_output", args, lambda data: str_from_json(data, "read_output"))

    async def read_output_chunk(
        self, job_id: int, stream: OutputStream = "stdout", offset: int = 0, max_bytes: int = MAX_OUTPUT_CHUNK_BYTES
    ) -> OutputChunk:
        max_bytes = check_chunk_request(offset, max_bytes, cluster=self.cluster)
        args = {"job_id": int(job_id), "stream": stream, "offset": int(offset), "max_bytes": max_bytes}
        return await self._read("read_output_chunk", args, output_chunk_from_json)

    async def cluster_info(self) -> ClusterInfo:
        if self._pushed is not None:
            info = await self._pushed.cluster_info(self.factory_id, self._clock())
            if info is not None:
                return info
        return await self._read("cluster_info", {}, cluster_info_from_json)

    async def health(self) -> Health:
        site = await self._pushed.health(self.factory_id, self._clock()) if self._pushed is not None else None
        if site is None:
            return await self._read("health", {}, health_from_json)
        if site.health is not None:
            return site.health
        raise self._site_error(site.error)

    # -- the mailbox -------------------------------------------------------------------------------------------

    async def _read(self, op: ReadOp, args: dict[str, Any], decode: Callable[[object], _T]) -> _T:
        now = self._clock()
        try:
            placed = await self._orders.put_read(
                self.factory_id, op=op, args=args, not_after=now + self._read_timeout, now=now
            )
        except NoAgent as exc:
            raise self._unavailable(exc.message, maybe_applied=False) from None
        report = await self._report(placed, op, in_doubt=False)
        try:
            return decode(report.result)
        except ProtocolError as exc:
            raise self._unavailable(f"the agent's {op} report is malformed: {exc}", maybe_applied=False) from None
        finally:
            if op in _OUTPUT_READS:
                await self._orders.forget_result(placed.id, report)

    async def _report(self, placed: PlacedOrder, what: str, *, in_doubt: bool) -> Report:
        """The order's successful report; its typed error otherwise (see the module's docstring)."""
        report = await self._orders.wait_report(placed.id, placed.not_after + self._grace)
        if report is None:
            outcome = "its outcome is unknown" if in_doubt else "nothing was changed"
            raise self._unavailable(
                f"no report from the agent for {what} order {placed.id} by its deadline: {outcome}",
                maybe_applied=in_doubt,
            )
        if report.ok:
            return report
        raise self._error(report, what, in_doubt=in_doubt)

    def _error(self, report: Report, what: str, *, in_doubt: bool) -> SlurmError:
        source = f"the agent of Factory {self.factory_id}"
        try:
            error = error_from_json(report.error, cluster=self.cluster, source=source) if report.error else None
        except ProtocolError as exc:
            error = self._unavailable(f"the agent's {what} error is malformed: {exc}", maybe_applied=in_doubt)
        if report.refused:  # nothing reached Slurm
            if isinstance(error, InvalidRequest):  # the job's fault (UnsafeRequest: the site's policy): keep it
                return error
            # paused, fenced, too late, clock out of skew: the site's state, never the job's fault
            reason = error.message if error is not None else "no reason given"
            return self._unavailable(f"the agent did not submit: {reason}", maybe_applied=False)
        if error is None:
            return self._unavailable(f"the agent reported a failed {what} without an error", maybe_applied=in_doubt)
        return error

    def _site_error(self, payload: dict[str, Any] | None) -> SlurmError:
        """The error the site's health call raised, as the agent pushed it (read by the codec when stored)."""
        try:
            return error_from_json(payload, cluster=self.cluster, source=f"the agent of Factory {self.factory_id}")
        except ProtocolError as exc:
            return self._unavailable(f"the agent's health error is malformed: {exc}", maybe_applied=False)

    def _unavailable(self, message: str, *, maybe_applied: bool) -> ClusterUnavailable:
        return ClusterUnavailable(message, cluster=self.cluster, maybe_applied=maybe_applied)


__all__ = ["AgentAdapter", "PushedState"]
