"""The order mailbox of a Factory's agent: orders written by the broker, taken by the agent's sessions, and
the agent's reports applied to them.

Rules every method keeps:

- A submit or cancel order is bound when written to the Factory's live lease holder (session, epoch); with
  none there is :class:`NoAgent` and nothing is written. It is delivered only to that session, only while
  that session still holds the lease at that epoch, only before ``not_after`` (broker clock), and again on
  every poll of that session until the session acknowledges it (``ack`` >= its id). Orders of a lapsed
  session are never delivered to another session: they stay open until ``not_after`` passes (then they are
  marked ``expired``), and the dispatcher settles the attempt by tag lookup.
- A read order is unbound: the first live session of the Factory whose poll meets it claims it by
  compare-and-set, and only that session is sent it (again, until acknowledged).
- A Factory's order ids are committed in id order: writers of one Factory serialize (SQLite has one writer;
  PostgreSQL takes a per-Factory transaction advisory lock), so an order can never appear below a cursor an
  agent already acknowledged.
- A report is a fact: accepted from any live session of the order's own Factory, applied once by
  compare-and-set (open or expired -> answered), only to an order that was delivered. Repeats, orders
  already answered and another Factory's orders are counted as ignored, never applied.
- Each write, first delivery and report is counted in :class:`~broker.agents.metrics.AgentMetrics` (if given)
  after its transaction commits, so ``/metrics`` counts only what happened.
- A read of a job's output keeps its result only until its waiter has it (:meth:`OrderRepository.forget_result`).
- A submit's secret environment values (:mod:`broker.jobs.secrets`) are never stored in the clear: the order's
  payload holds them redacted and its ``secrets`` column sealed, and they are put back only in the order handed
  to the session (the agent's authenticated link is their delivery). An order this process cannot unseal (no
  key, or not the key that sealed it) is not handed out: it expires, and its attempt is settled by tag lookup.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import and_, case, func, insert, or_, select, type_coerce, update
from sqlalchemy.ext.asyncio import AsyncSession

from broker.agents.bell import Bell
from broker.agents.errors import NoAgent
from broker.agents.metrics import AgentMetrics
from broker.agents.sessions import live_session, read_lease
from broker.db.engine import Database
from broker.db.group_commit import GroupCommit
from broker.db.models import AgentOrder, AgentSession
from broker.db.repositories.sql import is_sqlite
from broker.db.types import utc_now
from broker.jobs.secrets import REDACTED, scrub_document
from broker.secret_box import SealedUnreadable, SecretBox
from slurm_adapters.agent_protocol import (
    CancelOrder,
    Order,
    Orders,
    Poll,
    ReadOrder,
    Report,
    Reports,
    ReportsAnswer,
    Requester,
    SubmitOrder,
)

log = logging.getLogger(__name__)

OrderState = Literal["open", "answered", "expired"]
ReadOp = Literal["get_job", "list_jobs", "accounted_jobs", "read_output", "read_output_chunk", "cluster_info", "health"]
_BOUND_KINDS = ("submit", "cancel")
_NO_UPDATE_SYNC = {"synchronize_session": False}
GROUP_COMMIT_MAX = 1000  # bound orders written in one transaction at most


@dataclass(frozen=True, slots=True)
class PlacedOrder:
    """An order as written: its id, and the (session, epoch) it is bound to (None for a read)."""

    id: int
    factory_id: str
    session_id: str | None
    epoch: int | None
    not_after: datetime


@dataclass(frozen=True, slots=True)
class _BoundOrder:
    """A submit or cancel order waiting for its group commit."""

    factory_id: str
    kind: str
    payload: dict[str, Any]
    attempt: str | None
    not_after: datetime
    now: datetime | None
    secrets: str | None = None  # sealed values of the payload's redacted secret environment entries


@dataclass(frozen=True, slots=True)
class Outcome:
    """An order's state and, once answered, the agent's report."""

    state: OrderState
    report: Report | None


def _lock_key(factory_id: str, what: str) -> int:
    digest = hashlib.sha256(f"conveyor-agent-{what}:{factory_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def serialize_writers(session: AsyncSession, factory_id: str, what: str = "orders") -> None:
    """Writers of one Factory's ``what`` one at a time until commit (for orders: so its ids are committed in id
    order; for listings: so each is applied on top of the one before)."""
    if not is_sqlite(session):  # SQLite: one writer at a time already
        await session.execute(select(func.pg_advisory_xact_lock(_lock_key(factory_id, what))))


class OrderRepository:
    """Writing orders, handing them to sessions, applying reports. ``bell`` (if any) is rung after commits."""

    def __init__(
        self,
        database: Database,
        bell: Bell | None = None,
        clock: Callable[[], datetime] = utc_now,
        metrics: AgentMetrics | None = None,
        secret_box: SecretBox | None = None,
    ) -> None:
        self._db = database
        self._secret_box = secret_box  # seals submit orders' secrets and unseals them for the agent
        self._bell = bell
        self._clock = clock
        self._metrics = metrics or AgentMetrics()
        self._bound_writes: GroupCommit[_BoundOrder, PlacedOrder] = GroupCommit(
            self._write_bound, max_batch=GROUP_COMMIT_MAX
        )

    # -- writing -------------------------------------------------------------------------------------------

    async def put_submit(
        self,
        factory_id: str,
        *,
        attempt: str,
        spec: dict[str, Any],
        site_user: str,
        requester: Requester,
        not_after: datetime,
        now: datetime | None = None,
        secret_names: Collection[str] = (),
    ) -> PlacedOrder:
        """A submit order for the Factory's lease holder; :class:`NoAgent` when there is none. The entries of
        ``spec``'s environment named in ``secret_names`` are stored sealed (this repository must have a key:
        :attr:`keeps_secrets`), the payload holding them redacted."""
        environment = dict(spec.get("environment") or {})
        hidden = {name: environment[name] for name in sorted(secret_names) if name in environment}
        sealed = None
        if hidden:
            if self._secret_box is None:
                raise ValueError("a submit order with secrets needs the broker's secrets key")
            sealed = self._secret_box.seal(hidden)
            spec = {**spec, "environment": {**environment, **dict.fromkeys(hidden, REDACTED)}}
        payload = {"spec": spec, "site_user": site_user, "requester": requester.model_dump(mode="json")}
        return await self._bound_writes.submit(
            _BoundOrder(factory_id, "submit", payload, attempt, not_after, now, secrets=sealed)
        )

    @property
    def keeps_secrets(self) -> bool:
        """Whether this repository can store a submit's secrets sealed (it has the broker's secrets key)."""
        return self._secret_box is not None

    async def put_cancel(
        self,
        factory_id: str,
        *,
        slurm_job_id: int,
        tag: str,
        site_user: str,
        not_after: datetime,
        now: datetime | None = None,
    ) -> PlacedOrder:
        """A cancel order (by Slurm id AND tag) for the Factory's lease holder; :class:`NoAgent` without one."""
        payload = {"slurm_job_id": int(slurm_job_id), "tag": tag, "site_user": site_user}
        return await self._put_bound(factory_id, "cancel", payload, attempt=None, not_after=not_after, now=now)

    async def put_read(
        self,
        factory_id: str,
        *,
        op: ReadOp,
        args: dict[str, Any],
        not_after: datetime,
        now: datetime | None = None,
    ) -> PlacedOrder:
        """A read order for whichever live session takes it first; :class:`NoAgent` when none is live."""
        now = now or self._clock()
        async with self._db.write() as session:
            await serialize_writers(session, factory_id)
            live = await session.scalar(
                select(AgentSession.id)
                .where(AgentSession.factory_id == factory_id, AgentSession.expires_at > now)
                .limit(1)
            )
            if live is None:
                raise NoAgent(f"Factory {factory_id!r} has no connected agent")
            row = _row(
                factory_id, "read", {"op": op, "args": args}, bound=None, attempt=None, not_after=not_after, now=now
            )
            (order_id,) = await _insert(session, [row])
            placed = PlacedOrder(order_id, factory_id, None, None, not_after)
        self._metrics.written(factory_id, "read")
        self._ring_orders(factory_id)
        return placed

    async def _put_bound(
        self,
        factory_id: str,
        kind: str,
        payload: dict[str, Any],
        *,
        attempt: str | None,
        not_after: datetime,
        now: datetime | None,
    ) -> PlacedOrder:
        """Queued for the next group commit: a dispatcher's claimed batch writes its orders in one transaction."""
        return await self._bound_writes.submit(_BoundOrder(factory_id, kind, payload, attempt, not_after, now))

    async def _write_bound(self, items: Sequence[_BoundOrder]) -> list[PlacedOrder | Exception]:
        """Bound orders of any Factories in one transaction, each bound to its Factory's live lease holder as
        read under that Factory's writer lock (taken in a fixed order); a Factory without one: :class:`NoAgent`
        for its orders, nothing written for them. Ids follow the order of ``items``."""
        default_now = self._clock()
        factories = sorted({item.factory_id for item in items})
        results: list[PlacedOrder | Exception] = []
        written: list[tuple[int, dict[str, Any]]] = []  # (index in results, row)
        async with self._db.write() as session:
            for factory_id in factories:
                await serialize_writers(session, factory_id)
            leases = {factory_id: await read_lease(session, factory_id) for factory_id in factories}
            for item in items:
                now = item.now or default_now
                lease = leases[item.factory_id]
                if lease is None or lease.expires_at <= now:
                    results.append(NoAgent(f"Factory {item.factory_id!r} has no connected agent holding its lease"))
                    continue
                row = _row(item.factory_id, item.kind, item.payload, bound=(lease.session_id, lease.epoch),
                           attempt=item.attempt, not_after=item.not_after, now=now, secrets=item.secrets)  # fmt: skip
                written.append((len(results), row))
                results.append(NoAgent("placeholder"))
            ids = await _insert(session, [row for _, row in written])
            for (index, row), order_id in zip(written, ids, strict=True):
                results[index] = PlacedOrder(order_id, row["factory_id"], row["session_id"], row["epoch"],
                                             row["not_after"])  # fmt: skip
        for _, row in written:
            self._metrics.written(row["factory_id"], row["kind"])
        for factory_id in {row["factory_id"] for _, row in written}:
            self._ring_orders(factory_id)
        return results

    @property
    def bound_batches(self) -> int:
        """Transactions that wrote submit and cancel orders so far (for tests and /metrics: orders per batch)."""
        return self._bound_writes.batches

    # -- handing out ---------------------------------------------------------------------------------------

    async def take(self, factory_id: str, session_id: str, poll: Poll, *, now: datetime | None = None) -> Orders:
        """The orders due to this session now, oldest first (see the module's rules); unclaimed reads among
        them are claimed for it. Raises :class:`~broker.agents.errors.UnknownSession` or
        :class:`~broker.agents.errors.SessionExpired`."""
        now = now or self._clock()
        async with self._db.write() as session:
            await live_session(session, factory_id, session_id, now)
            await self._expire(session, factory_id, now)
            lease = await read_lease(session, factory_id)
            reads = and_(
                AgentOrder.kind == "read", or_(AgentOrder.session_id.is_(None), AgentOrder.session_id == session_id)
            )
            due = reads
            if lease is not None and lease.held_by(session_id, now):
                bound = and_(
                    AgentOrder.kind.in_(_BOUND_KINDS),
                    AgentOrder.session_id == session_id,
                    AgentOrder.epoch == lease.epoch,
                )
                due = or_(bound, reads)
            # One statement: it sees a prefix of the Factory's ids (committed in order), so nothing below the
            # newest id it returns can appear later.
            rows = (
                await session.scalars(
                    select(AgentOrder)
                    .where(
                        AgentOrder.factory_id == factory_id,
                        AgentOrder.state == "open",
                        AgentOrder.id > poll.ack,
                        AgentOrder.not_after > now,
                        due,
                    )
                    .order_by(AgentOrder.id)
                    .limit(poll.max_orders)
                )
            ).all()
            unclaimed = [row.id for row in rows if row.session_id is None]
            claimed: set[int] = set()
            if unclaimed:
                claimed = set(
                    (
                        await session.scalars(
                            update(AgentOrder)
                            .where(AgentOrder.id.in_(unclaimed), AgentOrder.session_id.is_(None))
                            .values(session_id=session_id)
                            .returning(AgentOrder.id),
                            execution_options=_NO_UPDATE_SYNC,
                        )
                    ).all()
                )
            handed = [row for row in rows if row.session_id is not None or row.id in claimed]
            orders, handed = self._deliverable(factory_id, handed)
            first = [(row.kind, row.created_at) for row in handed if row.delivered_at is None]
            if first:
                await session.execute(
                    update(AgentOrder)
                    .where(AgentOrder.id.in_([row.id for row in handed if row.delivered_at is None]),
                           AgentOrder.delivered_at.is_(None))
                    .values(delivered_at=now),
                    execution_options=_NO_UPDATE_SYNC,
                )  # fmt: skip
        for kind, created_at in first:
            self._metrics.delivered(factory_id, kind, created_at, now)
        return Orders(broker_time=now, orders=orders)

    def _deliverable(self, factory_id: str, rows: Sequence[AgentOrder]) -> tuple[list[Order], list[AgentOrder]]:
        """The orders of ``rows`` as sent, their secrets unsealed, and the rows they came from: a row whose
        secrets this process cannot unseal is left out (never sent with its values redacted)."""
        orders: list[Order] = []
        kept: list[AgentOrder] = []
        for row in rows:
            try:
                orders.append(_order(row, self._secret_box))
            except SealedUnreadable as exc:
                log.error("Factory %s: order %s not handed out: its secrets cannot be unsealed here: %s",
                          factory_id, row.id, exc)  # fmt: skip
                continue
            kept.append(row)
        return orders, kept

    async def expire(self, factory_id: str, *, now: datetime | None = None) -> int:
        """Mark the Factory's open orders whose not_after has passed as expired; how many."""
        now = now or self._clock()
        async with self._db.write() as session:
            return await self._expire(session, factory_id, now)

    @staticmethod
    async def _expire(session: AsyncSession, factory_id: str, now: datetime) -> int:
        expired = await session.scalars(
            update(AgentOrder)
            .where(AgentOrder.factory_id == factory_id, AgentOrder.state == "open", AgentOrder.not_after <= now)
            .values(state="expired")
            .returning(AgentOrder.id),
            execution_options=_NO_UPDATE_SYNC,
        )
        return len(expired.all())

    # -- reports -------------------------------------------------------------------------------------------

    async def apply_reports(
        self, factory_id: str, session_id: str, reports: Reports, *, now: datetime | None = None
    ) -> ReportsAnswer:
        """Apply each report once to its delivered order of this Factory; count the rest as ignored. One
        statement for the whole request: a compare-and-set per row (open or expired, delivered, this Factory's),
        the first report of an order in the request being the one that may apply. The applied reports are
        handed to this process's waiters after the commit (:meth:`Bell.hand_answers`)."""
        now = now or self._clock()
        first: dict[int, Report] = {}
        for report in reports.reports:
            first.setdefault(report.order, report)
        async with self._db.write() as session:
            await live_session(session, factory_id, session_id, now)
            await self._scrub_failures(session, factory_id, first)
            done = []
            if first:
                statement = _answer_statement(factory_id, first, now)
                done = list((await session.execute(statement, execution_options=_NO_UPDATE_SYNC)).all())
        applied = {row.id: first[row.id] for row in done}
        for row in done:
            if row.delivered_at is not None:  # always: only a delivered order is answered
                self._metrics.answered(factory_id, row.kind, row.delivered_at, now)
        ignored = len(reports.reports) - len(applied)
        self._metrics.reported(factory_id, applied=len(applied), ignored=ignored)
        if self._bell is not None and applied:
            self._bell.hand_answers(applied)
        return ReportsAnswer(applied=len(applied), ignored=ignored)

    async def _scrub_failures(self, session: AsyncSession, factory_id: str, reports: dict[int, Report]) -> None:
        """Replace, in ``reports``, each failed submit's report by one with its order's secret values scrubbed
        (a site may echo the environment in an error); a report that succeeded carries no text of the job."""
        failed = [order_id for order_id, report in reports.items() if not report.ok]
        if not failed or self._secret_box is None:
            return
        sealed = await session.execute(
            select(AgentOrder.id, AgentOrder.secrets).where(
                AgentOrder.id.in_(failed), AgentOrder.factory_id == factory_id, AgentOrder.secrets.is_not(None)
            )
        )
        for order_id, token in sealed:
            if token is None:
                continue
            try:
                values = list(self._secret_box.open(token).values())
            except SealedUnreadable:
                continue  # never handed out by a process with the key: its values never reached the site
            report = reports[order_id]
            reports[order_id] = Report.model_validate(scrub_document(report.model_dump(mode="json"), values))

    async def outcome(self, order_id: int) -> Outcome | None:
        """The order's state and report (None: no such order)."""
        async with self._db.read() as session:
            row = (
                await session.execute(select(AgentOrder.state, AgentOrder.report).where(AgentOrder.id == order_id))
            ).one_or_none()
        if row is None:
            return None
        report = Report.model_validate(row.report) if row.report is not None else None
        state: OrderState = row.state
        return Outcome(state, report)

    async def forget_result(self, order_id: int, report: Report) -> None:
        """Keep the answered read order ``order_id`` without its result, once its waiter has it: a job's output
        (which may print the job's secrets) must not outlive its read in the database."""
        forgotten = report.model_copy(update={"result": None}).model_dump(mode="json")
        async with self._db.write() as session:
            await session.execute(
                update(AgentOrder)
                .where(AgentOrder.id == order_id, AgentOrder.kind == "read", AgentOrder.state == "answered")
                .values(report=forgotten),
                execution_options=_NO_UPDATE_SYNC,
            )

    async def wait_report(self, order_id: int, until: datetime) -> Report | None:
        """The order's report once it is answered; None if it is not by ``until`` (broker clock). A report
        applied in this process is handed over with the bell's ring; the database is read once the bell rings
        without one (the answer came from another process, or before this waiter registered: the bell's check
        sees every awaited order answered in the database) and once more at the deadline."""
        deadline = time.monotonic() + (until - self._clock()).total_seconds()
        if self._bell is None:
            raise RuntimeError("waiting for a report needs the bell")
        async with self._bell.listen(order_ids=[order_id]) as signal:
            rang = False
            while True:
                handed = signal.answers.get(order_id)
                if handed is not None:
                    return handed
                remaining = deadline - time.monotonic()
                if rang or remaining <= 0:
                    outcome = await self.outcome(order_id)
                    if outcome is not None and outcome.report is not None:
                        return outcome.report
                    if remaining <= 0:
                        return None
                rang = await signal.wait(remaining)

    def _ring_orders(self, factory_id: str) -> None:
        if self._bell is not None:
            self._bell.ring_orders(factory_id)


def _answer_statement(factory_id: str, reports: dict[int, Report], now: datetime) -> Any:
    """One UPDATE answering every order of ``reports`` that is this Factory's, open or expired, and delivered
    (the compare-and-set, per row), each with its own report; RETURNING what it answered."""
    stored = {order_id: report.model_dump(mode="json") for order_id, report in reports.items()}
    report_type = AgentOrder.__table__.c.report.type
    value = case({order_id: type_coerce(payload, report_type) for order_id, payload in stored.items()},
                 value=AgentOrder.id)  # fmt: skip
    return (
        update(AgentOrder)
        .where(
            AgentOrder.id.in_(list(stored)),
            AgentOrder.factory_id == factory_id,
            AgentOrder.state.in_(("open", "expired")),
            AgentOrder.delivered_at.is_not(None),
        )
        .values(state="answered", answered_at=now, report=type_coerce(value, report_type))
        .returning(AgentOrder.id, AgentOrder.kind, AgentOrder.delivered_at)
    )


def _row(
    factory_id: str,
    kind: str,
    payload: dict[str, Any],
    *,
    bound: tuple[str, int] | None,
    attempt: str | None,
    not_after: datetime,
    now: datetime,
    secrets: str | None = None,
) -> dict[str, Any]:
    """A new open order's row, for :func:`_insert`."""
    return {
        "factory_id": factory_id,
        "kind": kind,
        "state": "open",
        "session_id": bound[0] if bound else None,
        "epoch": bound[1] if bound else None,
        "attempt": attempt,
        "not_after": not_after,
        "payload": payload,
        "created_at": now,
        "delivered_at": None,
        "answered_at": None,
        "report": None,
        "secrets": secrets,
    }


async def _insert(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> list[int]:
    """``rows`` in one bulk INSERT (no unit of work: nothing reads the new objects back); their ids, in the order
    of ``rows``."""
    if not rows:
        return []
    return list(await session.scalars(insert(AgentOrder).returning(AgentOrder.id, sort_by_parameter_order=True), rows))


def _order(row: AgentOrder, box: SecretBox | None) -> Order:
    """The order as the agent receives it; a submit's sealed secrets back in its spec's environment (raises
    :class:`SealedUnreadable` when ``box`` cannot open them)."""
    payload = dict(row.payload)
    if row.secrets is not None:
        if box is None:
            raise SealedUnreadable("this broker process has no secrets key")
        spec = dict(payload["spec"])
        spec["environment"] = {**spec.get("environment", {}), **box.open(row.secrets)}
        payload["spec"] = spec
    if row.kind == "submit":
        assert row.epoch is not None
        assert row.attempt is not None
        return SubmitOrder(id=row.id, epoch=row.epoch, not_after=row.not_after, attempt=row.attempt, **payload)
    if row.kind == "cancel":
        assert row.epoch is not None
        return CancelOrder(id=row.id, epoch=row.epoch, not_after=row.not_after, **payload)
    return ReadOrder(id=row.id, not_after=row.not_after, **payload)


__all__ = ["OrderRepository", "OrderState", "Outcome", "PlacedOrder", "ReadOp", "serialize_writers"]
