"""The site's state the agent pushes (:class:`~slurm_adapters.agent_protocol.SiteState`): Slurm's health (or
the error its health call raised) and, when Slurm answers, the cluster's information, asked after ``taken_at``."""

from __future__ import annotations

from agent.clock import BrokerClock
from slurm_adapters import codec
from slurm_adapters.agent_protocol import SiteState
from slurm_adapters.errors import SlurmError
from slurm_adapters.interface import SlurmAdapter
from slurm_adapters.records import ClusterInfo


async def take_site_state(adapter: SlurmAdapter, clock: BrokerClock) -> SiteState:
    """The state now; a Slurm that does not answer is reported with its error, never skipped."""
    taken_at = clock.broker_now()
    try:
        health = await adapter.health()
    except SlurmError as exc:
        return SiteState(taken_at=taken_at, error=codec.error_to_json(exc))
    info: ClusterInfo | None = None
    if health.ok:
        try:
            info = await adapter.cluster_info()
        except SlurmError:
            info = None  # the broker asks for it by order, or keeps its last capacity snapshot
    return SiteState(
        taken_at=taken_at,
        health=codec.health_to_json(health),
        cluster_info=codec.cluster_info_to_json(info) if info is not None else None,
    )


__all__ = ["take_site_state"]
