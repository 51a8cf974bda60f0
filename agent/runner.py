"""The agent's main loop: a session, its heartbeat, the long poll, bounded execution and batched reports.

One session at a time. A session the broker no longer knows (404/409/410) is replaced by a new hello; a broken
link is retried with jittered back-off and never ends the process. Orders are taken only while the clock is
within the Factory's skew and a slot is free (the poll asks for no more orders than free slots). Reports are
sent in batches from one queue that survives session changes. The submits and cancels one poll brought (a
dispatcher's batch) are answered and followed together: while some of that batch have ended and others are still
being carried out, a report waits up to ``linger_s`` for the rest, and so does the next poll once a slot is free,
so a batch's reports go in one request and the next batch comes in one poll, rather than a request per order
(each is signed, verified and applied in a transaction). Nothing waits for another batch, nor for a read (a
listing may take seconds): with slots to spare, two batches in flight are answered and followed each on its own
time, as the dispatcher carries them. While it
holds the lease and its clock is within the skew, the agent pushes its listing of active jobs
(:mod:`agent.listings`) and the site's state (:mod:`agent.site`) as the session's plan says.
On stop (SIGTERM): no more polling, in-flight orders get ``shutdown_grace_s`` to finish while the heartbeat keeps
the session alive for their reports, the reports are flushed, and the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Literal

from agent import __version__
from agent.backoff import Backoff, sleep_unless
from agent.clock import BrokerClock
from agent.executor import Executor, Lease, PauseSwitch
from agent.link import BrokerLink, LinkDown, SessionLost
from agent.listings import ListingPusher, ListingTooLarge
from agent.reports import ReportQueue
from agent.site import take_site_state
from slurm_adapters import codec
from slurm_adapters.agent_protocol import (
    FEATURES,
    MAX_REPORTS,
    MAX_REPORTS_BYTES,
    Heartbeat,
    Hello,
    Order,
    Poll,
    PushPlan,
    Report,
    Reports,
    SessionGranted,
)
from slurm_adapters.errors import ClusterUnavailable, SlurmError

log = logging.getLogger("conveyor.agent")

TOO_LARGE = 413


@dataclass(slots=True)
class Session:
    granted: SessionGranted
    ack: int = 0  # every order up to this id has been received


@dataclass(slots=True)
class Batch:
    """The submits and cancels of one poll's answer that are still being carried out (``running``), and how many
    of them have ended: reports and the next poll wait for a batch that is partly ended."""

    running: int = 0
    ended: int = 0

    @property
    def partly_ended(self) -> bool:
        return self.ended > 0 and self.running > 0

    def end(self) -> int:
        """One of them ended; how many are still running."""
        self.running -= 1
        self.ended += 1
        return self.running


class Agent:
    def __init__(
        self,
        link: BrokerLink,
        executor: Executor,
        *,
        concurrency: int = 8,
        report_batch: int = 100,
        linger_s: float = 0.1,
        shutdown_grace_s: float = 30.0,
        backoff: Backoff | None = None,
    ) -> None:
        self.link = link
        self.executor = executor
        self.clock: BrokerClock = executor.clock
        link.use_clock(lambda: self.clock.broker_now().timestamp())
        self.pause: PauseSwitch = executor.pause
        self.reports = ReportQueue()
        self.listings = ListingPusher(executor.adapter, self.clock)
        self.slots = asyncio.Semaphore(concurrency)
        self.concurrency = concurrency
        self.report_batch = min(report_batch, MAX_REPORTS)
        self.linger_s = linger_s
        self.running = 0  # orders being carried out now (holding a slot)
        self.polls_answered = 0  # numbers the batches: the submits and cancels of one poll's answer
        self.batches: dict[int, Batch] = {}  # the batches with orders still being carried out
        self.finished = asyncio.Event()  # set whenever one of them ends (the report loop's)
        self.slot_freed = asyncio.Event()  # set whenever an order leaves in_flight (the poll loop's)
        self.shutdown_grace_s = shutdown_grace_s
        self.backoff = backoff or Backoff()
        self.session: Session | None = None
        self.session_changed = asyncio.Event()
        self.in_flight: set[asyncio.Task[None]] = set()
        self.sessions_opened = 0
        self.slurm_release: str | None = None

    def _backoff(self, cap_s: float | None = None) -> Backoff:
        """A fresh back-off of this agent's shape (each loop counts its own failures)."""
        cap = self.backoff.cap_s if cap_s is None else min(cap_s, self.backoff.cap_s)
        return Backoff(min(self.backoff.base_s, cap), cap, self.backoff.rng)

    # -- the whole run ------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: keep a session, take orders, report; then drain within the grace period."""
        await self._probe_slurm()
        drain, ended = asyncio.Event(), asyncio.Event()
        reporter = asyncio.create_task(self._report_loop(drain), name="reports")
        heartbeat: asyncio.Task[None] | None = None
        try:
            while not stop.is_set():
                session = await self._open_session(stop)
                if session is None:
                    break
                heartbeat = await self._serve(session, stop, ended)
        finally:
            await self._drain(drain, reporter)
            ended.set()
            if heartbeat is not None:
                heartbeat.cancel()
                await asyncio.gather(heartbeat, return_exceptions=True)

    async def _probe_slurm(self) -> None:
        """The Slurm release for the hello (and the adapter's version negotiation, done before any order)."""
        try:
            health = await self.executor.adapter.health()
            self.slurm_release = health.release
        except Exception as exc:  # the site may be down at start; the agent connects all the same
            log.warning("local Slurm health check failed at start: %s", exc)

    async def _open_session(self, stop: asyncio.Event) -> Session | None:
        while not stop.is_set():
            sent = self.clock.now()
            try:
                granted = await self.link.hello(
                    Hello(
                        agent_version=__version__,
                        adapter=self.executor.adapter.kind,
                        slurm_release=self.slurm_release,
                        features=list(FEATURES),
                        agent_time=sent,
                    )
                )
            except LinkDown as exc:
                delay = self.backoff.next_delay()
                log.warning("hello failed (%s); trying again in %.1f s", exc, delay)
                await sleep_unless(stop, delay)
                continue
            self.backoff.reset()
            self.clock.skew_s = granted.clock_skew_s
            self.clock.observe(granted.broker_time, sent, self.clock.now())
            self.executor.lease = Lease()
            self.session = Session(granted)
            self.sessions_opened += 1
            self.session_changed.set()
            log.info("session %s opened for Factory %s", granted.session_id, granted.factory)
            return self.session
        return None

    async def _serve(self, session: Session, stop: asyncio.Event, ended: asyncio.Event) -> asyncio.Task[None] | None:
        """Heartbeat and poll within one session until it is lost or ``stop`` is set. On stop, polling ends and
        the heartbeat task is returned still running, so the session lives on for the in-flight orders' reports
        until ``ended``."""
        lost = asyncio.Event()
        heartbeat = asyncio.create_task(self._heartbeat_loop(session, lost, stop, ended), name="heartbeat")
        poll = asyncio.create_task(self._poll_loop(session, lost, stop), name="poll")
        pushes = [
            asyncio.create_task(self._push_loop(session, lost, stop, kind), name=f"push-{kind}")
            for kind in ("listing", "site")
        ]
        waiters = [asyncio.create_task(lost.wait()), asyncio.create_task(stop.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ending = [poll, *pushes, *waiters]
            if lost.is_set() or not stop.is_set():
                ending.append(heartbeat)
            for task in ending:
                task.cancel()
            await asyncio.gather(*ending, return_exceptions=True)
        if lost.is_set():
            log.warning("session %s lost; opening a new one", session.granted.session_id)
            return None
        return heartbeat

    # -- heartbeat ----------------------------------------------------------------------------------------

    async def _heartbeat_loop(
        self, session: Session, lost: asyncio.Event, stop: asyncio.Event, until: asyncio.Event
    ) -> None:
        """Heartbeats until ``until`` (after the drain on stop) or the session is lost. Once ``stop`` is set, at
        once and from then on, they say ``leaving``: the lease goes to a standby while this session drains."""
        backoff = self._backoff(cap_s=session.granted.heartbeat_s)
        while not until.is_set():
            sent = self.clock.now()
            leaving = stop.is_set()
            try:
                answer = await self.link.heartbeat(
                    session.granted.session_id,
                    Heartbeat(agent_time=sent, paused=self.pause.paused, leaving=leaving),
                )
            except SessionLost:
                lost.set()
                return
            except LinkDown as exc:
                if exc.broker_date is not None and self.clock.resync(exc.broker_date, sent, self.clock.now()):
                    log.warning("refused by the broker; its clock (HTTP Date) is %+.0f s from ours: stamping anew",
                                self.clock.offset_s)  # fmt: skip
                delay = backoff.next_delay()
                log.warning("heartbeat failed (%s); trying again in %.1f s", exc, delay)
                await sleep_unless(until, delay)
                continue
            backoff.reset()
            offset = self.clock.observe(answer.broker_time, sent, self.clock.now())
            if not self.clock.in_sync:
                log.error("clock offset %.2f s exceeds the Factory's skew %.2f s: taking no orders", offset,
                          self.clock.skew_s)  # fmt: skip
            self.executor.lease = Lease(holder=answer.holder, epoch=answer.epoch)
            # Before stop, wake at once when it comes, to say leaving; afterwards, beat until the drain ends.
            await sleep_unless(until if leaving else stop, session.granted.heartbeat_s)

    # -- orders -------------------------------------------------------------------------------------------

    async def _poll_loop(self, session: Session, lost: asyncio.Event, stop: asyncio.Event) -> None:
        backoff = self._backoff()
        while not stop.is_set():
            if not self.clock.in_sync:
                await sleep_unless(stop, min(1.0, session.granted.heartbeat_s))
                continue
            free = await self._free_slots()
            try:
                answer = await self.link.poll(
                    session.granted.session_id,
                    Poll(ack=session.ack, wait_s=session.granted.poll_wait_s, max_orders=free),
                )
            except SessionLost:
                lost.set()
                return
            except LinkDown as exc:
                delay = backoff.next_delay()
                log.warning("poll failed (%s); trying again in %.1f s", exc, delay)
                await sleep_unless(stop, delay)
                continue
            backoff.reset()
            self.polls_answered += 1
            for order in answer.orders:
                session.ack = max(session.ack, order.id)
                if self.executor.accept(order):
                    self._start(order, None if order.kind == "read" else self.polls_answered)

    async def _free_slots(self) -> int:
        """Wait for a free slot and, while a batch is partly ended, up to ``linger_s`` more for the rest of it;
        return how many slots are free (the poll asks for no more)."""
        loop = asyncio.get_running_loop()
        first_free: float | None = None
        while True:
            free = self.concurrency - len(self.in_flight)
            remaining: float | None = None
            if free > 0:
                if not any(batch.partly_ended for batch in self.batches.values()):
                    return free
                first_free = loop.time() if first_free is None else first_free
                remaining = first_free + self.linger_s - loop.time()
                if remaining <= 0:
                    return free
            self.slot_freed.clear()
            await sleep_unless(self.slot_freed, remaining)

    def _start(self, order: Order, batch: int | None) -> None:
        if batch is not None:
            self.batches.setdefault(batch, Batch()).running += 1
        task = asyncio.create_task(self._carry_out(order, batch), name=f"order-{order.id}")
        self.in_flight.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self.in_flight.discard(task)
        self.slot_freed.set()

    async def _carry_out(self, order: Order, batch: int | None) -> None:
        try:
            async with self.slots:
                self.running += 1
                try:
                    report = await self.executor.execute(order)
                finally:
                    self.running -= 1
            self.reports.put(report, batch)
        finally:  # the report is queued (or the order was cancelled) before its batch counts it as ended
            if batch is not None and self.batches[batch].end() == 0:
                del self.batches[batch]
            self.finished.set()

    # -- pushes -------------------------------------------------------------------------------------------

    async def _push_loop(
        self, session: Session, lost: asyncio.Event, stop: asyncio.Event, kind: Literal["listing", "site"]
    ) -> None:
        """Push ``kind`` every plan interval while this session holds the lease and the clock is in sync."""
        plan = session.granted.push
        if plan is None:
            return
        if kind == "listing":
            self.listings.forget()  # a new session: the broker's view stands on another session's snapshot
        interval_s = plan.listing_interval_s if kind == "listing" else plan.site_interval_s
        while not stop.is_set():
            if self.executor.lease.holder and self.clock.in_sync:
                try:
                    if kind == "listing":
                        await self._push_listing(session.granted.session_id, plan)
                    else:
                        await self.link.site(session.granted.session_id, await take_site_state(
                            self.executor.adapter, self.clock))  # fmt: skip
                except SessionLost:
                    lost.set()
                    return
                except LinkDown as exc:
                    log.warning("%s not delivered (%s)", kind, exc)
                except (SlurmError, ListingTooLarge) as exc:
                    log.warning("listing the site's active jobs failed: %s", exc)
            elif kind == "listing":
                self.listings.forget()
            await sleep_unless(stop, interval_s)

    async def _push_listing(self, session_id: str, plan: PushPlan) -> None:
        listing, jobs = await self.listings.take(plan)
        try:
            answer = await self.link.listing(session_id, listing)
        except LinkDown:
            self.listings.forget()  # not known to be applied: a gap, so the next listing is full
            raise
        self.listings.answered(listing, jobs, answer)

    # -- reports ------------------------------------------------------------------------------------------

    async def _report_loop(self, drain: asyncio.Event) -> None:
        """Send queued reports in batches with the current session; keep them until the broker has them."""
        backoff = self._backoff()
        while True:
            await self.reports.wait()
            session = self.session
            if session is None:
                await self.session_changed.wait()
                self.session_changed.clear()
                continue
            await self._linger(drain)
            batch = self.reports.peek(self.report_batch, MAX_REPORTS_BYTES)
            try:
                await self.link.report(session.granted.session_id, Reports(reports=batch))
            except LinkDown as exc:
                if exc.status == TOO_LARGE and len(batch) == 1:
                    self.reports.replace_oldest(self._too_large(batch[0]))
                    continue
                delay = backoff.next_delay()
                log.warning("%d reports not delivered (%s); trying again in %.1f s", len(batch), exc, delay)
                self.session_changed.clear()
                if isinstance(exc, SessionLost) and drain.is_set():
                    return  # stopping, and no session to report with: the broker settles by lookup
                await sleep_unless(self.session_changed, delay)
                continue
            backoff.reset()
            self.reports.done(len(batch))

    async def _linger(self, drain: asyncio.Event) -> None:
        """Hold the queued reports while orders of their batches are still being carried out, for ``linger_s``
        at most, a full request, or the drain: a batch's reports go in one request. Only the moment of sending
        changes (a report is a fact the broker applies once whenever it comes)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.linger_s
        while self._awaited() and len(self.reports) < self.report_batch and not drain.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self.finished.clear()
            await sleep_unless(self.finished, remaining)

    def _awaited(self) -> bool:
        """Whether a queued report's batch still has orders being carried out."""
        return any(batch in self.batches for batch in self.reports.batches())

    def _too_large(self, report: Report) -> Report:
        """What the broker is told instead of a report it refused as too large (only a read's result can be; were
        it a done submit or cancel, the failure says it may have been applied)."""
        log.error("the report of order %s is larger than the broker accepts: reporting a failure instead",
                  report.order)  # fmt: skip
        error = ClusterUnavailable(
            f"the agent's report of order {report.order} was larger than the broker accepts",
            cluster=self.executor.adapter.cluster,
            maybe_applied=report.ok,
        )
        return Report(order=report.order, ok=False, error=codec.error_to_json(error), finished_at=report.finished_at)

    async def _drain(self, drain: asyncio.Event, reporter: asyncio.Task[None]) -> None:
        """In-flight orders get the grace period; their reports are flushed within the same bound."""
        drain.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.shutdown_grace_s
        if self.in_flight:
            log.info("stopping: waiting up to %.0f s for %d orders in flight", self.shutdown_grace_s,
                     len(self.in_flight))  # fmt: skip
            _, late = await asyncio.wait(set(self.in_flight), timeout=self.shutdown_grace_s)
            for task in late:
                task.cancel()
            if late:
                log.warning("stopping: %d orders did not finish in time (the broker settles them)", len(late))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self.reports.empty()
        if len(self.reports):
            log.warning("stopping with %d reports undelivered (the broker settles their orders)", len(self.reports))
        reporter.cancel()
        await asyncio.gather(reporter, return_exceptions=True)
