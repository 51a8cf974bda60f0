"""One adapter per Factory, built on first use and shared by the dispatcher, reconciler and health checks.

Adapters hold connection pools (and, for pyslurm, a worker process), so they are built once, lazily (a
Factory that is never used costs nothing), and closed together at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from broker.factories.registry import FactoryRegistry
from slurm_adapters.factory import AdapterConfig, AgentConfig, build_adapter
from slurm_adapters.interface import SlurmAdapter

if TYPE_CHECKING:
    from broker.agents.link import AgentLink

log = logging.getLogger(__name__)


class AdapterProvider(Protocol):
    """What the loops need of a pool: a Factory's adapter (tests and the app may pass their own)."""

    def get(self, factory_id: str) -> SlurmAdapter: ...


class AdapterPool:
    """The adapters of a registry's Factories. ``build`` is replaceable so tests can wrap real adapters.
    An agent Factory's adapter is built on ``agents`` (the process's agent link) when it is given and
    ``build`` is the default; otherwise ``build`` gets its config like any other."""

    def __init__(
        self,
        registry: FactoryRegistry,
        *,
        build: Callable[[AdapterConfig], SlurmAdapter] = build_adapter,
        agents: AgentLink | None = None,
    ) -> None:
        self._registry = registry
        self._build = build
        self._agents = agents
        self._adapters: dict[str, SlurmAdapter] = {}

    def get(self, factory_id: str) -> SlurmAdapter:
        """The Factory's adapter; KeyError for a Factory the registry does not know."""
        adapter = self._adapters.get(factory_id)
        if adapter is None:
            factory = self._registry[factory_id]
            config = factory.adapter
            if isinstance(config, AgentConfig) and self._agents is not None and self._build is build_adapter:
                adapter = self._agents.adapter(factory_id, config, clock_skew_s=factory.clock_skew_s)
            else:
                adapter = self._build(config)
            self._adapters[factory_id] = adapter
        return adapter

    async def aclose(self) -> None:
        adapters, self._adapters = list(self._adapters.items()), {}
        results = await asyncio.gather(*(adapter.aclose() for _, adapter in adapters), return_exceptions=True)
        for (factory_id, _), result in zip(adapters, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("closing the adapter of Factory %s failed: %s", factory_id, result)
