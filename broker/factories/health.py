"""Factory health: an authenticated round trip to each Factory on an interval, and the statuses placement reads.

Results go to the database (``FactoryStateRepository``), not to memory, so every broker replica places jobs
on the same view; the repository appends an event only when health flips, so checks that change nothing do
not flood the log.

A Factory reached through its agent is judged first from the sessions table (one read per cycle for all of
them, :func:`judge_agent`): no agent ever seen, every session paused at the site, or no live session for longer
than ``agent_silent_s`` is unhealthy at once, without writing an order nobody would take. Only when an agent
holds the lease is the site's own health judged: from the state the agent pushed within ``agent_state_max_age_s``
(its health and cluster information), else asked for (a read order the agent answers from its Slurm). Its jobs
wait (placement keeps them queued); silence alone never makes a job ``lost``.

Capacity (GPUs by type, total and free, and the Slurm release) is different: a display hint for
``GET /v1/factories`` that placement never reads, so it stays in this process's memory
(:class:`CapacitySnapshots`, a :data:`~broker.factories.service.CapacitySource`): no schema, no writes, and a
replica without loops shows it as unknown rather than guessed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from broker.agents.sessions import Presence, presences
from broker.agents.site_states import PushedSite, latest_site_state
from broker.db.engine import Database
from broker.db.repositories import FactoryStateRepository
from broker.db.types import utc_now
from broker.factories.adapters import AdapterProvider
from broker.factories.placement import FactoryStatus
from broker.factories.registry import FactoryRegistry
from broker.factories.service import Capacity
from slurm_adapters.codec import error_from_json
from slurm_adapters.errors import SlurmError
from slurm_adapters.factory import AgentConfig
from slurm_adapters.records import ClusterInfo, Health

log = logging.getLogger(__name__)
ACTOR = "health-monitor"


async def factory_statuses(states: FactoryStateRepository) -> dict[str, FactoryStatus]:
    """Each Factory's status for placement. A Factory never checked is left out: placement counts it as
    not checked (unavailable), so nothing is submitted to a cluster nobody has reached yet."""
    statuses: dict[str, FactoryStatus] = {}
    for row in await states.all():
        if row.healthy is None and not row.drained:
            continue
        detail = row.drained_reason if row.drained else row.health_detail
        statuses[row.factory_id] = FactoryStatus(healthy=bool(row.healthy), drained=row.drained, detail=detail)
    return statuses


def capacity_of(info: ClusterInfo, health: Health, observed_at: datetime) -> Capacity:
    """What a cluster description says of capacity; the release from it, else from the health check."""
    totals = info.gpu_totals()
    return Capacity(
        observed_at=observed_at,
        release=info.release or health.release,
        total_gpus={gpu_type: total for gpu_type, (total, _) in totals.items()},
        free_gpus={gpu_type: free for gpu_type, (_, free) in totals.items()},
    )


class CapacitySnapshots:
    """The last capacity seen of each Factory; calling it is the :data:`CapacitySource` of the Factory views.

    A snapshot is taken only after a successful health check (a Factory that does not answer has no capacity
    to read, and none is made up), and at most once per ``min_interval_s`` per Factory, to keep Slurm's load
    at one extra call per Factory per health cycle or less. A failed snapshot keeps the previous one: its
    ``observed_at`` says how old it is, so it is never passed off as fresh.
    """

    def __init__(self, min_interval_s: float = 0.0, clock: Callable[[], datetime] = utc_now) -> None:
        self._min_interval = timedelta(seconds=min_interval_s)
        self._clock = clock
        self._snapshots: dict[str, Capacity] = {}
        self._tried_at: dict[str, datetime] = {}

    def __call__(self, factory_id: str) -> Capacity | None:
        return self._snapshots.get(factory_id)

    async def refresh(self, factory_id: str, health: Health, read: Callable[[], Awaitable[ClusterInfo]]) -> None:
        """After ``health``, take a snapshot with ``read`` (the adapter's ``cluster_info``) if the check was ok
        and the last try is at least ``min_interval_s`` old. Never raises."""
        now = self._clock()
        tried_at = self._tried_at.get(factory_id)
        if not health.ok or (tried_at is not None and now - tried_at < self._min_interval):
            return
        self._tried_at[factory_id] = now
        try:
            info = await read()
        except Exception as exc:  # a snapshot is a hint: its failure must not fail the health check
            log.warning(
                "Factory %s: capacity snapshot failed, keeping the previous one: %r",
                factory_id,
                exc,
                exc_info=not isinstance(exc, SlurmError),
            )
            return
        self._snapshots[factory_id] = capacity_of(info, health, now)


async def _known(info: ClusterInfo) -> ClusterInfo:
    return info


@dataclass(frozen=True, slots=True)
class AgentVerdict:
    """What the sessions table says of an agent Factory's health: ``healthy`` None means ask the agent (it
    holds the lease) or, within the silence allowed, leave the last result as it is."""

    healthy: bool | None
    detail: str
    ask_site: bool = False


def judge_agent(factory_id: str, presence: Presence | None, now: datetime, silent_s: float) -> AgentVerdict:
    """The health an agent Factory's sessions imply at ``now`` (see the module's docstring)."""
    if presence is None or presence.last_heartbeat_at is None:
        return AgentVerdict(False, f"no agent has connected to Factory {factory_id}")
    if presence.features is not None:
        return AgentVerdict(None, f"its agent holds the lease at epoch {presence.epoch}", ask_site=True)
    if presence.live_sessions and presence.paused_sessions == presence.live_sessions:
        return AgentVerdict(False, f"the agent of Factory {factory_id} is paused at the site")
    silent = (now - presence.last_heartbeat_at).total_seconds()
    if silent > silent_s:
        return AgentVerdict(
            False,
            f"the agent of Factory {factory_id} has been silent for {silent:.0f} s (no session holds the lease; "
            f"last heartbeat {presence.last_heartbeat_at:%Y-%m-%d %H:%M:%S} UTC), longer than {silent_s:g} s",
        )
    return AgentVerdict(None, "no agent holds the lease yet; within the silence allowed")


class HealthMonitor:
    """Checks every Factory with ``adapter.health()``; a failed check marks it unhealthy with the error.

    After a successful check it refreshes the Factory's capacity snapshot (:attr:`capacity`).
    """

    def __init__(
        self,
        database: Database,
        registry: FactoryRegistry,
        adapters: AdapterProvider,
        *,
        capacity_interval_s: float = 0.0,
        agent_silent_s: float = 60.0,
        agent_state_max_age_s: float = 0.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._database = database
        self._registry = registry
        self._adapters = adapters
        self._states = FactoryStateRepository(database)
        self._agent_silent_s = agent_silent_s
        self._agent_state_max_age = timedelta(seconds=agent_state_max_age_s)
        self._clock = clock
        self.capacity = CapacitySnapshots(capacity_interval_s)

    async def run_once(self) -> Mapping[str, bool | None]:
        """Check every Factory concurrently; returns Factory id -> healthy (None: an agent Factory left as it
        was, within the silence allowed)."""
        ids = list(self._registry.ids)
        agents = {factory.id for factory in self._registry if isinstance(factory.adapter, AgentConfig)}
        now = self._clock()
        present = await presences(self._database, now) if agents else {}
        verdicts = {
            factory_id: judge_agent(factory_id, present.get(factory_id), now, self._agent_silent_s)
            for factory_id in agents
        }
        results = await asyncio.gather(*(self.check(factory_id, verdicts.get(factory_id)) for factory_id in ids))
        return dict(zip(ids, results, strict=True))

    async def check(self, factory_id: str, agent: AgentVerdict | None = None) -> bool | None:
        """One Factory's check; ``agent``: for an agent Factory, what its sessions say (None: not one, or
        not judged: ask the adapter)."""
        if agent is not None and not agent.ask_site:
            if agent.healthy is None:
                return None
            return await self._record(factory_id, agent.healthy, agent.detail)
        pushed = await self._pushed(factory_id) if agent is not None else None
        if pushed is not None and pushed.health is None:  # the site's health call failed, as pushed
            cluster = self._registry[factory_id].adapter.cluster
            return await self._record(factory_id, False, str(error_from_json(pushed.error, cluster=cluster)))
        if pushed is not None and pushed.health is not None:
            await self._record(factory_id, pushed.health.ok, pushed.health.detail)
            info = pushed.cluster_info
            read = (lambda: _known(info)) if info is not None else self._adapters.get(factory_id).cluster_info
            await self.capacity.refresh(factory_id, pushed.health, read)
            return pushed.health.ok
        health: Health | None = None
        try:
            health = await self._adapters.get(factory_id).health()
            healthy, detail = health.ok, health.detail
        except SlurmError as exc:
            healthy, detail = False, str(exc)
        except Exception as exc:  # an adapter bug must not stop the other checks; it is an unhealthy Factory
            log.exception("Factory %s: health check raised", factory_id)
            healthy, detail = False, f"health check failed: {exc!r}"
        await self._record(factory_id, healthy, detail)
        if health is not None:
            await self.capacity.refresh(factory_id, health, self._adapters.get(factory_id).cluster_info)
        return healthy

    async def _pushed(self, factory_id: str) -> PushedSite | None:
        """The state the Factory's agent pushed recently, if the monitor takes pushes (max age > 0)."""
        if not self._agent_state_max_age:
            return None
        return await latest_site_state(
            self._database, factory_id, received_after=self._clock() - self._agent_state_max_age
        )

    async def _record(self, factory_id: str, healthy: bool, detail: str | None) -> bool:
        if await self._states.record_health(factory_id, healthy=healthy, detail=detail, actor=ACTOR):
            log.warning("Factory %s is now %s: %s", factory_id, "healthy" if healthy else "unhealthy", detail)
        return healthy
