"""Carrying out one order at the site, under the site's policy and the at-most-once timing rule.

A submit runs only if every check passes, in this order: not a repeat (order id, attempt id), the site is not
paused, the lease holder's epoch, the spec decodes strictly (an unknown field is refused, never dropped), the
policy allows it (and picks the account), and the adapter's call deadline ends before ``not_after`` by the
broker's clock. Anything refused never reaches Slurm, and the report says why.

A Slurm RPC rate-limit refusal (``rl_enable``, 23.02+) is the site's congestion, never the job's fault: the
agent backs off at the site and tries again while the order's window lasts; afterwards it reports the site
error (not applied), never a job error.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from agent.backoff import Backoff
from agent.clock import BrokerClock
from agent.failpoints import failpoint
from agent.policy import Refusal, SitePolicyFile
from slurm_adapters import codec
from slurm_adapters.agent_protocol import CancelOrder, Order, ReadOrder, Report, SubmitOrder
from slurm_adapters.errors import ClusterUnavailable, InvalidRequest, SiteError, SlurmError
from slurm_adapters.interface import SlurmAdapter
from slurm_adapters.records import MAX_OUTPUT_CHUNK_BYTES, SubmitContext

log = logging.getLogger("conveyor.agent")

T = TypeVar("T")

PAUSED_REASON = "paused by the site"
RATE_LIMIT_WORDS = ("rate limit", "rate_limit", "rate-limit")
REMEMBERED = 100_000  # order and attempt ids remembered for dropping repeats


def is_rate_limited(error: SlurmError) -> bool:
    """slurmctld refused the RPC for its rate limit (ESLURM 1804/1805 "Rate limit exceeded ...")."""
    text = " ".join((error.message, *error.errors)).lower()
    return any(word in text for word in RATE_LIMIT_WORDS)


class PauseSwitch:
    """The site's local switch: while ``path`` exists, no new submits."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def paused(self) -> bool:
        return self.path.exists()


class SiteBackoff:
    """A gate every Slurm call passes: closed for a while after slurmctld said it is rate-limiting."""

    def __init__(self, backoff: Backoff | None = None, clock: Callable[[], float] | None = None) -> None:
        self.backoff = backoff or Backoff(base_s=1.0, cap_s=30.0)
        self.clock = clock or (lambda: asyncio.get_running_loop().time())
        self.until = 0.0

    def trip(self) -> float:
        delay = self.backoff.next_delay()
        self.until = max(self.until, self.clock() + delay)
        log.warning("slurmctld is rate-limiting: backing off %.1f s at the site", delay)
        return delay

    def clear(self) -> None:
        self.backoff.reset()

    def wait_s(self) -> float:
        return max(0.0, self.until - self.clock())


class _Recent:
    """A bounded set of recently seen keys (oldest forgotten first)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.keys: OrderedDict[object, None] = OrderedDict()

    def forget(self, key: object) -> None:
        self.keys.pop(key, None)

    def add(self, key: object) -> bool:
        """Remember ``key``; False when it was already known."""
        if key in self.keys:
            return False
        self.keys[key] = None
        if len(self.keys) > self.size:
            self.keys.popitem(last=False)
        return True


@dataclass(slots=True)
class Lease:
    """What the last heartbeat answer said about this session's agent lease."""

    holder: bool | None = None  # None: not yet known
    epoch: int | None = None


class Executor:
    """Turns orders into reports with the local adapter; ``deadline_s`` is the adapter's call deadline."""

    def __init__(
        self,
        adapter: SlurmAdapter,
        policy: SitePolicyFile,
        clock: BrokerClock,
        pause: PauseSwitch,
        *,
        deadline_s: float,
        site_backoff: SiteBackoff | None = None,
        failpoints: frozenset[str] = frozenset(),
    ) -> None:
        self.adapter = adapter
        self.policy = policy
        self.clock = clock
        self.pause = pause
        self.deadline_s = deadline_s
        self.site_backoff = site_backoff or SiteBackoff()
        self.failpoints = failpoints  # tests only (agent/failpoints.py)
        self.lease = Lease()
        self._orders = _Recent(REMEMBERED)
        self._attempts = _Recent(REMEMBERED)

    def accept(self, order: Order) -> bool:
        """Whether ``order`` is new: a repeat of an order id, or of a submit's attempt id, is dropped. An
        attempt whose submit was refused before any Slurm call is forgotten: carrying it out later is safe."""
        if not self._orders.add(order.id):
            return False
        if isinstance(order, SubmitOrder) and not self._attempts.add(order.attempt):
            log.info("order %s repeats attempt %s: dropped", order.id, order.attempt)
            return False
        return True

    async def execute(self, order: Order) -> Report:
        try:
            if isinstance(order, SubmitOrder):
                return await self._submit(order)
            if isinstance(order, CancelOrder):
                return await self._cancel(order)
            return await self._read(order)
        except Refusal as refusal:
            log.info("order %s refused: %s", order.id, refusal.reason)
            if isinstance(order, SubmitOrder):
                self._attempts.forget(order.attempt)  # nothing reached Slurm: a later order may carry it out
            return self._failed(order, refusal.error(refusal.reason, cluster=self.adapter.cluster), refused=True)
        except SlurmError as error:
            return self._failed(order, error)
        except Exception as exc:  # a fault of the agent or an adapter: reported, never a silent loss
            log.exception("order %s failed inside the agent", order.id)
            changes = isinstance(order, SubmitOrder | CancelOrder)  # the call may have reached Slurm
            fault = ClusterUnavailable(
                f"the agent failed: {type(exc).__name__}: {exc}", cluster=self.adapter.cluster, maybe_applied=changes
            )
            return self._failed(order, fault)

    def _failed(self, order: Order, error: SlurmError, *, refused: bool = False) -> Report:
        return Report(
            order=order.id,
            ok=False,
            refused=refused,
            error=codec.error_to_json(error),
            finished_at=self.clock.broker_now(),
        )

    # -- the orders -------------------------------------------------------------------------------------------

    async def _submit(self, order: SubmitOrder) -> Report:
        if self.pause.paused:
            raise Refusal(PAUSED_REASON, SiteError)
        self._check_fence(order.epoch)
        try:
            spec = codec.spec_from_json(order.spec)
        except codec.ProtocolError as exc:
            raise Refusal(f"the job spec cannot be run here: {exc}", InvalidRequest) from None
        decision = self.policy.decide(spec, order.site_user, order.requester)
        context = SubmitContext(
            attempt=order.attempt,
            not_after=self.clock.local(order.not_after),  # adapters keep the window by this host's clock
            requester_user=order.requester.user,
            requester_project=order.requester.project,
            requester_antenna=order.requester.antenna,
        )

        async def call() -> int:
            self._check_window(order.not_after, "submit")
            if self.pause.paused:  # switched while this order waited
                raise Refusal(PAUSED_REASON, SiteError)
            failpoint(self.failpoints, "before_submit")
            submitted = await self.adapter.submit(decision.spec, decision.site_user, context)
            failpoint(self.failpoints, "after_submit")
            return submitted

        job_id = await self._slurm(call, order.not_after)
        log.info("order %s: attempt %s is Slurm job %s as %s", order.id, order.attempt, job_id, decision.site_user)
        return Report(
            order=order.id, ok=True, result=job_id, site_account=decision.site_user,
            finished_at=self.clock.broker_now(),
        )  # fmt: skip

    async def _cancel(self, order: CancelOrder) -> Report:
        self._check_fence(order.epoch)
        self.policy.check_site_user(order.site_user)

        async def call() -> None:
            self._check_window(order.not_after, "cancel")
            await self.adapter.cancel(order.slurm_job_id, order.site_user, tag=order.tag)

        await self._slurm(call, order.not_after)
        return Report(order=order.id, ok=True, site_account=order.site_user, finished_at=self.clock.broker_now())

    async def _read(self, order: ReadOrder) -> Report:
        result = await self._slurm(lambda: self._run_read(order), order.not_after)
        return Report(order=order.id, ok=True, result=result, finished_at=self.clock.broker_now())

    async def _run_read(self, order: ReadOrder) -> Any:
        args = dict(order.args)
        try:
            return await self._read_op(order.op, args)
        except (TypeError, ValueError, codec.ProtocolError) as exc:
            raise Refusal(f"read order {order.op} has invalid arguments: {exc}", InvalidRequest) from None

    async def _read_op(self, op: str, args: dict[str, Any]) -> Any:  # noqa: PLR0911 - one branch per read op
        adapter = self.adapter
        if op == "list_jobs":
            _only(args, {"tags", "tag_prefix"})
            tags = args.get("tags")
            records = await adapter.list_jobs(
                tags=None if tags is None else _strings(tags, "tags"), tag_prefix=_opt_str(args.get("tag_prefix"))
            )
            return [codec.record_to_json(record) for record in records]
        if op == "get_job":
            _only(args, {"job_id"})
            return codec.record_to_json(await adapter.get_job(codec.int_from_json(args.get("job_id"), "job_id")))
        if op == "accounted_jobs":
            _only(args, {"job_ids", "submitted_after"})
            job_ids = [codec.int_from_json(item, "job_ids[]") for item in _list(args.get("job_ids", []), "job_ids")]
            after = args.get("submitted_after")
            records = await adapter.accounted_jobs(
                job_ids=job_ids, submitted_after=None if after is None else _time(after, "submitted_after")
            )
            return [codec.record_to_json(record) for record in records]
        if op == "read_output":
            _only(args, {"job_id", "stream", "max_bytes"})
            stream = args.get("stream", "stdout")
            if stream not in ("stdout", "stderr"):
                raise ValueError(f"stream must be stdout or stderr, not {stream!r:.40}")
            max_bytes = codec.int_from_json(args.get("max_bytes", 65536), "max_bytes")
            if not 0 < max_bytes <= 16 * 1024 * 1024:
                raise ValueError("max_bytes must be 1 to 16 MiB")
            job_id = codec.int_from_json(args.get("job_id"), "job_id")
            return await adapter.read_output(job_id, stream, max_bytes)
        if op == "read_output_chunk":
            _only(args, {"job_id", "stream", "offset", "max_bytes"})
            stream = args.get("stream", "stdout")
            if stream not in ("stdout", "stderr"):
                raise ValueError(f"stream must be stdout or stderr, not {stream!r:.40}")
            offset = codec.int_from_json(args.get("offset"), "offset")
            max_bytes = codec.int_from_json(args.get("max_bytes"), "max_bytes")
            if offset < 0 or not 0 < max_bytes <= MAX_OUTPUT_CHUNK_BYTES:
                raise ValueError(f"offset must be >= 0 and max_bytes 1 to {MAX_OUTPUT_CHUNK_BYTES}")
            job_id = codec.int_from_json(args.get("job_id"), "job_id")
            return codec.output_chunk_to_json(await adapter.read_output_chunk(job_id, stream, offset, max_bytes))
        if op == "cluster_info":
            _only(args, set())
            return codec.cluster_info_to_json(await adapter.cluster_info())
        if op == "health":
            _only(args, set())
            return codec.health_to_json(await adapter.health())
        raise ValueError(f"unknown read operation {op!r}")

    # -- the rules ------------------------------------------------------------------------------------------

    def _check_fence(self, epoch: int) -> None:
        """Submit and cancel orders come only to the lease holder; a stale epoch is fenced off here too."""
        lease = self.lease
        if lease.holder is False:
            raise Refusal("fenced: this session does not hold the Factory's agent lease", SiteError)
        if lease.epoch is not None and epoch < lease.epoch:
            raise Refusal(f"fenced: the order's epoch {epoch} is older than the lease's {lease.epoch}", SiteError)

    def _check_window(self, not_after: datetime, what: str) -> None:
        """Start the call only if its deadline ends before ``not_after`` by the broker's clock."""
        if not self.clock.in_sync:
            raise Refusal(
                f"not started: the agent's clock is not within the Factory's skew of the broker's ({what})", SiteError
            )
        ends = self.clock.broker_now() + timedelta(seconds=self.deadline_s)
        if ends > not_after:
            raise Refusal(
                f"not started: the {what} could still be running after its not_after {not_after.isoformat()} "
                f"(broker time now {self.clock.broker_now().isoformat()}, call deadline {self.deadline_s:g} s); "
                "nothing reached Slurm",
                SiteError,
            )

    async def _slurm(self, call: Callable[[], Awaitable[T]], not_after: datetime) -> T:
        """``call`` behind the site's rate-limit gate, tried again after a rate-limit refusal while it may."""
        while True:
            if (wait := self.site_backoff.wait_s()) > 0:
                await asyncio.sleep(wait)
            try:
                result = await call()
            except SlurmError as error:
                if not is_rate_limited(error):
                    raise
                self.site_backoff.trip()
                if self.clock.broker_now() + timedelta(seconds=self.site_backoff.wait_s()) > not_after:
                    raise ClusterUnavailable(
                        f"slurmctld is rate-limiting this site; not tried again before the order's not_after: "
                        f"{error.message}",
                        cluster=self.adapter.cluster,
                        errors=error.errors,
                        maybe_applied=False,
                    ) from error
                continue
            self.site_backoff.clear()
            return result


def _only(args: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise ValueError(f"unknown arguments {unknown[:10]}")


def _list(value: object, what: str) -> list[object]:
    if not isinstance(value, list):
        raise ValueError(f"{what} must be a list")
    return value


def _strings(value: object, what: str) -> list[str]:
    return [codec.str_from_json(item, f"{what}[]") for item in _list(value, what)]


def _opt_str(value: object) -> str | None:
    return None if value is None else codec.str_from_json(value, "tag_prefix")


def _time(value: object, what: str) -> datetime:
    moment = datetime.fromisoformat(codec.str_from_json(value, what))
    if moment.tzinfo is None:
        raise ValueError(f"{what} needs a time zone")
    return moment
