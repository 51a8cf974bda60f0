"""Factory health: an authenticated round trip to each Factory on an interval, and the statuses placement reads.

Results go to the database (``FactoryStateRepository``), not to memory, so every broker replica places jobs
on the same view; the repository appends an event only when health flips, so checks that change nothing do
not flood the log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from broker.adapters import AdapterProvider
from broker.db.engine import Database
from broker.db.repositories import FactoryStateRepository
from broker.factories import FactoryRegistry
from broker.placement import FactoryStatus
from slurm_adapters.base import SlurmError

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


class HealthMonitor:
    """Checks every Factory with ``adapter.health()``; a failed check marks it unhealthy with the error."""

    def __init__(self, database: Database, registry: FactoryRegistry, adapters: AdapterProvider) -> None:
        self._registry = registry
        self._adapters = adapters
        self._states = FactoryStateRepository(database)

    async def run_once(self) -> Mapping[str, bool]:
        """Check every Factory concurrently; returns Factory id -> healthy."""
        ids = list(self._registry.ids)
        results = await asyncio.gather(*(self.check(factory_id) for factory_id in ids))
        return dict(zip(ids, results, strict=True))

    async def check(self, factory_id: str) -> bool:
        try:
            health = await self._adapters.get(factory_id).health()
            healthy, detail = health.ok, health.detail
        except SlurmError as exc:
            healthy, detail = False, str(exc)
        except Exception as exc:  # an adapter bug must not stop the other checks; it is an unhealthy Factory
            log.exception("Factory %s: health check raised", factory_id)
            healthy, detail = False, f"health check failed: {exc!r}"
        if await self._states.record_health(factory_id, healthy=healthy, detail=detail, actor=ACTOR):
            log.warning("Factory %s is now %s: %s", factory_id, "healthy" if healthy else "unhealthy", detail)
        return healthy
