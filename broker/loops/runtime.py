"""The broker's background work in one process: health checks, the dispatcher and a reconciler per Factory.

Each loop is an asyncio task that survives its own errors (logged and counted; the next cycle tries again),
so one misbehaving Factory or a database hiccup never stops the others. Several processes may run this at
once: they coordinate only through the database (leased claims, compare-and-set transitions) and say they
are alive with a heartbeat (:mod:`broker.db.repositories.instances`): a process whose heartbeat lapses has
its claims taken over at once, and a persistent ``instance_id`` is refused while a live process holds it.

Starting touches only the database (registering the instance), never Slurm: the health loop's first cycle
runs in the background, and the dispatcher waits for it before its first claim (a Factory never checked is
not submitted to), so the API is ready while a slurmctld does not answer.

The API calls :meth:`Runtime.notify_new_job` after it commits a job, which wakes the dispatcher at once
instead of after a whole interval; :meth:`Runtime.metrics` serves figures computed by the loops themselves,
so scraping ``/metrics`` costs neither Slurm nor the database anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypedDict

from broker.db.engine import Database
from broker.db.models import Job
from broker.db.repositories import JobRepository, QueueStats
from broker.db.repositories.instances import InstanceIdInUse, InstanceRepository
from broker.db.types import utc_now
from broker.factories.adapters import AdapterProvider
from broker.factories.health import HealthMonitor
from broker.factories.registry import FactoryRegistry
from broker.factories.service import Capacity
from broker.loops.dispatch import Dispatcher, default_worker_id
from broker.loops.reconcile import Reconciler
from broker.secret_box import SecretBox
from broker.settings import Settings

log = logging.getLogger(__name__)

# How long stop() lets a cycle in flight finish (a Slurm call's deadline is 8 s) before cancelling it.
STOP_GRACE_S = 15.0


class RuntimeFigures(TypedDict):
    """The loops' figures, as :meth:`Runtime.metrics` gives them and ``app/metrics.py`` renders them."""

    worker_id: str
    dispatch_queue_depth: int
    dispatch_lag_seconds: float
    dispatch_cycle_seconds: float | None
    dispatch_errors: dict[str, float]  # per Factory
    reconcile_cycle_seconds: dict[str, float]
    reconcile_last_cycle_timestamp_seconds: dict[str, float]
    reconcile_lag_seconds: dict[str, float]
    reconcile_errors: dict[str, float]
    reconcile_held_jobs: dict[str, float]  # per Factory: jobs waiting on a hold someone can release
    loop_errors: dict[str, int]  # per loop: cycles that failed as a whole


AGENT_PUSH_SLACK_S = 5.0


class Runtime:
    """Starts and stops the loops; holds what they measured."""

    def __init__(
        self,
        settings: Settings,
        database: Database,
        registry: FactoryRegistry,
        adapters: AdapterProvider,
        *,
        worker_id: str | None = None,
        secret_box: SecretBox | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.adapters = adapters
        self.health = HealthMonitor(
            database,
            registry,
            adapters,
            capacity_interval_s=settings.capacity_interval_s,
            agent_silent_s=settings.agent_silent_s,
            # an agent pushes its site's state every health interval: two intervals' grace for a late push
            agent_state_max_age_s=2 * settings.health_interval_s + AGENT_PUSH_SLACK_S,
        )
        self.instance_id = settings.instance_id or worker_id or default_worker_id()
        if worker_id is None:  # one per process: a restart under a persistent instance id is a new lease owner
            worker_id = f"{settings.instance_id}:{uuid.uuid4().hex[:8]}" if settings.instance_id else self.instance_id
        self.dispatcher = Dispatcher(database, registry, adapters, settings, worker_id, secret_box=secret_box)
        self._instances = InstanceRepository(database)
        self._health_checked = asyncio.Event()
        self.reconciler = Reconciler(database, registry, adapters, settings)
        self._jobs = JobRepository(database)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._queue = QueueStats(depth=0, oldest_due_wait_s=0.0)
        self._loop_errors: dict[str, int] = {}
        self._last_dispatch_cycle_s: float | None = None

    @property
    def worker_id(self) -> str:
        return self.dispatcher.worker_id

    @property
    def running(self) -> bool:
        return bool(self._tasks) and not self._stopping.is_set()

    async def start(self) -> None:
        """Register this process's instance, then start the loops (none of this waits on Slurm).

        Raises :class:`InstanceIdInUse` when a live process holds the configured ``instance_id``.
        """
        if self._tasks:
            raise RuntimeError("the runtime is already started")
        self._stopping.clear()
        await self._register()
        self._tasks.append(asyncio.create_task(self._loop_heartbeat(), name="conveyor-heartbeat"))
        self._tasks.append(asyncio.create_task(self._loop_health(), name="conveyor-health"))
        self._tasks.append(asyncio.create_task(self._loop_dispatch(), name="conveyor-dispatch"))
        for factory_id in self.registry.ids:
            task = asyncio.create_task(self._loop_reconcile(factory_id), name=f"conveyor-reconcile-{factory_id}")
            self._tasks.append(task)
        log.info("runtime %s started: %d Factories", self.worker_id, len(self.registry))

    async def stop(self) -> None:
        """Let the cycles in flight finish (bounded), then cancel what is left and wait for it."""
        self._stopping.set()
        self._wake.set()
        tasks, self._tasks = self._tasks, []
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=STOP_GRACE_S)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._cycle("retire", lambda: self._instances.retire(self.worker_id))
        log.info("runtime %s stopped", self.worker_id)

    def capacity(self, factory_id: str) -> Capacity | None:
        """The Factory's last capacity snapshot from this process's health loop (a :data:`CapacitySource`)."""
        return self.health.capacity(factory_id)

    def notify_new_job(self) -> None:
        """A job was committed: dispatch now rather than at the end of the interval."""
        self._wake.set()

    def metrics(self) -> RuntimeFigures:
        """What the loops last measured: numbers, or mappings Factory (or loop) -> number; app/metrics.py
        renders exactly this shape.

        ``reconcile_lag_seconds`` is the time since a Factory's last successful cycle: how stale the broker's
        view of it may be. ``dispatch_lag_seconds`` is how long the oldest due queued job has waited.
        """
        ids = self.registry.ids
        reconcile = self.reconciler.figures()
        return {
            "worker_id": self.worker_id,
            "dispatch_queue_depth": self._queue.depth,
            "dispatch_lag_seconds": round(self._queue.oldest_due_wait_s, 3),
            "dispatch_cycle_seconds": self._last_dispatch_cycle_s,
            "dispatch_errors": {f: float(self.dispatcher.errors_by_factory.get(f, 0)) for f in ids},
            "reconcile_cycle_seconds": reconcile["reconcile_cycle_seconds"],
            "reconcile_last_cycle_timestamp_seconds": reconcile["reconcile_last_cycle_timestamp_seconds"],
            "reconcile_lag_seconds": reconcile["reconcile_lag_seconds"],
            "reconcile_errors": reconcile["reconcile_errors"],
            "reconcile_held_jobs": reconcile["reconcile_held_jobs"],
            "loop_errors": dict(self._loop_errors),
        }

    # --- the loops ------------------------------------------------------------------------------------

    async def _register(self) -> None:
        """Take the instance id. A persistent id still held by a process that does not beat any more (it was
        killed) is free once that heartbeat lapses, so that wait (at most the TTL) is made once; a process
        that still beats keeps its id, and this one is refused."""
        ttl = self.settings.heartbeat_ttl_s
        try:
            await self._instances.register(self.instance_id, worker_id=self.worker_id, ttl_s=ttl)
        except InstanceIdInUse as exc:
            if self.settings.instance_id is None:
                raise
            wait_s = min(max((exc.expires_at - utc_now()).total_seconds(), 0.0), ttl) + 0.1
            log.warning("%s; waiting %.1f s for its heartbeat to lapse", exc, wait_s)
            await asyncio.sleep(wait_s)
            await self._instances.register(self.instance_id, worker_id=self.worker_id, ttl_s=ttl)
        log.info("instance %s registered (claims as %s)", self.instance_id, self.worker_id)

    async def _loop_heartbeat(self) -> None:
        while await self._pause(self.settings.heartbeat_interval_s):
            alive = await self._cycle("heartbeat", self._beat)
            if alive is False:
                log.critical("instance %s was taken over by another process: stopping these loops", self.instance_id)
                self._stopping.set()
                self._wake.set()
                return

    async def _beat(self) -> bool:
        """Say this process is alive, renewing the leases of the claims whose Slurm calls are in flight."""
        return await self._instances.beat(
            self.worker_id,
            ttl_s=self.settings.heartbeat_ttl_s,
            renew=set(self.dispatcher.in_flight),
            lease_s=self.settings.lease_s,
        )

    async def _loop_health(self) -> None:
        await self._cycle("health", self.health.run_once)
        self._health_checked.set()
        while await self._pause(self.settings.health_interval_s):
            await self._cycle("health", self.health.run_once)

    async def _loop_dispatch(self) -> None:
        """Claim, and carry the claimed batch in the background: up to ``dispatch_batches`` batches are carried
        at once, so the next claim need not wait for a batch's slowest Slurm call (claims are disjoint, and each
        job still commits its attempt before its own call)."""
        # The first claim waits for the first health check: a Factory never checked is not submitted to.
        await self._pause(float("inf"), wake=self._health_checked)
        room = asyncio.Semaphore(self.settings.dispatch_batches)
        carrying: set[asyncio.Task[None]] = set()
        try:
            while not self._stopping.is_set():
                await room.acquire()
                if self._stopping.is_set():  # stopped while every batch's room was taken: claim no more
                    room.release()
                    return
                self._wake.clear()
                started = time.monotonic()
                claimed = await self._cycle("dispatch", self.dispatcher.claim) or []
                if claimed:
                    task = asyncio.create_task(self._carry(claimed, started, room), name="conveyor-dispatch-batch")
                    carrying.add(task)
                    task.add_done_callback(carrying.discard)
                else:
                    room.release()
                    await self._cycle("queue", self._measure_queue)
                if len(claimed) == self.settings.claim_batch:
                    continue  # a full batch: more are probably due right now
                if not await self._pause(self.settings.dispatcher_interval_s, wake=self._wake):
                    return
        finally:  # stopping: the batches being carried finish (or are cancelled with this loop)
            if carrying:
                await asyncio.gather(*carrying, return_exceptions=True)

    async def _carry(self, claimed: Sequence[Job], started: float, room: asyncio.Semaphore) -> None:
        try:
            await self._cycle("dispatch", lambda: self.dispatcher.carry(claimed))
            self._last_dispatch_cycle_s = round(time.monotonic() - started, 4)
            await self._cycle("queue", self._measure_queue)
        finally:
            room.release()

    async def _loop_reconcile(self, factory_id: str) -> None:
        while not self._stopping.is_set():
            await self._cycle(f"reconcile:{factory_id}", lambda: self.reconciler.run_once(factory_id))
            if not await self._pause(self.settings.reconciler_interval_s):
                return

    async def _measure_queue(self) -> None:
        self._queue = await self._jobs.queue_stats(utc_now())

    async def _cycle(self, name: str, work: Callable[[], Awaitable[Any]]) -> Any:
        """One cycle of a loop; an error is logged and counted, never the end of the loop."""
        try:
            return await work()
        except asyncio.CancelledError:
            raise
        except Exception:
            self._loop_errors[name] = self._loop_errors.get(name, 0) + 1
            log.exception("%s cycle failed", name)
            return None

    async def _pause(self, seconds: float, wake: asyncio.Event | None = None) -> bool:
        """Wait ``seconds`` (or until ``wake`` is set); False once the runtime is stopping."""
        waiters = [asyncio.ensure_future(self._stopping.wait())]
        if wake is not None:
            waiters.append(asyncio.ensure_future(wake.wait()))
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiter
        return not self._stopping.is_set()


__all__ = ["Runtime"]
