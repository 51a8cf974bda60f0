"""Factories as the API shows them (config + run-time state + counts), and the admin operations on them.

Served from config and the database only: listing Factories never calls Slurm. Observed capacity (free GPUs,
the Slurm release) comes from whatever last looked at the cluster (the health loop), through
:data:`CapacitySource`; without one, those fields are None ("unknown"), never guessed from config.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from broker.agents.sessions import Connection
from broker.db.engine import Database
from broker.db.models import FactoryState
from broker.db.repositories import FactoryStateRepository, JobStats
from broker.errors import Forbidden, NotFound
from broker.factories.registry import Factory, FactoryRegistry
from broker.identity import Principal
from conveyor.models import AgentLinkView, AgentSessionView, FactoryView, PartitionView
from conveyor.spec import JobState


@dataclass(frozen=True, slots=True)
class Capacity:
    """What a look at the cluster saw: GPUs by type (total, free) and the Slurm release."""

    observed_at: datetime
    release: str | None = None
    total_gpus: Mapping[str, int] = field(default_factory=dict)
    free_gpus: Mapping[str, int] = field(default_factory=dict)


CapacitySource = Callable[[str], Capacity | None]
# The live sessions of every agent Factory's agent, by Factory (``broker.agents.service.AgentService.connections``).
ConnectionSource = Callable[[], Awaitable[Mapping[str, Sequence[Connection]]]]


def _agent_view(connections: Sequence[Connection]) -> AgentLinkView:
    sessions = [AgentSessionView.model_validate(connection, from_attributes=True) for connection in connections]
    return AgentLinkView(connected=any(c.holder for c in connections), sessions=sessions)


def _view(
    factory: Factory,
    state: FactoryState | None,
    pending: int,
    capacity: Capacity | None,
    connections: Mapping[str, Sequence[Connection]],
) -> FactoryView:
    by_agent = factory.adapter.kind == "agent"
    return FactoryView(
        id=factory.id,
        name=factory.name,
        country=factory.country,
        healthy=state.healthy if state is not None else None,
        health_detail=state.health_detail if state is not None else None,
        drained=state.drained if state is not None else False,
        drained_reason=state.drained_reason if state is not None else None,
        slurm_release=capacity.release if capacity else None,
        partitions=[
            PartitionView(
                name=p.name,
                default=p.default,
                max_time_min=p.max_time_min,
                default_time_min=p.default_time_min,
                nodes=p.nodes,
                cpus_per_node=p.cpus_per_node,
                memory_mb_per_node=p.memory_mb_per_node,
                gpus_per_node=dict(p.gpus_per_node),
            )
            for p in factory.partitions
        ],
        gpu_types=sorted(factory.gpu_types),
        total_gpus=dict(capacity.total_gpus) if capacity else None,
        free_gpus=dict(capacity.free_gpus) if capacity else None,
        queue_depth=pending,
        observed_at=capacity.observed_at if capacity else (state.checked_at if state is not None else None),
        connection="agent" if by_agent else "direct",
        agent=_agent_view(connections.get(factory.id, ())) if by_agent else None,
    )


class FactoryService:
    """Read-only views of the configured Factories, and drain/undrain for admins (each an audited event)."""

    def __init__(
        self,
        database: Database,
        registry: FactoryRegistry,
        capacity: CapacitySource | None = None,
        *,
        connections: ConnectionSource | None = None,
    ) -> None:
        self._states = FactoryStateRepository(database)
        self._stats = JobStats(database)
        self._registry = registry
        self._capacity = capacity
        self._connections = connections

    async def views(self) -> list[FactoryView]:
        states = {state.factory_id: state for state in await self._states.all()}
        counts = await self._stats.by_factory_and_state()
        connections = await self._connections() if self._connections is not None else {}
        return [
            _view(
                factory,
                states.get(factory.id),
                counts.get((factory.id, JobState.SUBMITTED), 0),
                self._capacity(factory.id) if self._capacity else None,
                connections,
            )
            for factory in self._registry
        ]

    async def view(self, factory_id: str) -> FactoryView:
        for view in await self.views():
            if view.id == factory_id:
                return view
        raise NotFound("Factory", factory_id)

    def _admin(self, caller: Principal, factory_id: str) -> None:
        if not caller.admin:
            raise Forbidden("draining and undraining Factories is for broker admins")
        if factory_id not in self._registry:
            raise NotFound("Factory", factory_id)

    async def drain(self, caller: Principal, factory_id: str, reason: str, *, source: str | None = None) -> FactoryView:
        """Stop new placements on the Factory (jobs already there continue). Draining twice keeps the first
        reason and is not an error: the caller's intent holds either way."""
        self._admin(caller, factory_id)
        await self._states.drain(factory_id, reason=reason, actor=caller.id, source=source)
        return await self.view(factory_id)

    async def undrain(self, caller: Principal, factory_id: str, *, source: str | None = None) -> FactoryView:
        self._admin(caller, factory_id)
        await self._states.undrain(factory_id, actor=caller.id, source=source)
        return await self.view(factory_id)
