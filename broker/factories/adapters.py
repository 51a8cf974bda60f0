"""One adapter per Factory, built on first use and shared by the dispatcher, reconciler and health checks.

Adapters hold connection pools (and, for pyslurm, a worker process), so they are built once, lazily (a
Factory that is never used costs nothing), and closed together at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from broker.factories.registry import FactoryRegistry
from slurm_adapters.factory import AdapterConfig, build_adapter
from slurm_adapters.interface import SlurmAdapter

log = logging.getLogger(__name__)


class AdapterProvider(Protocol):
    """What the loops need of a pool: a Factory's adapter (tests and the app may pass their own)."""

    def get(self, factory_id: str) -> SlurmAdapter: ...


class AdapterPool:
    """The adapters of a registry's Factories. ``build`` is replaceable so tests can wrap real adapters."""

    def __init__(
        self, registry: FactoryRegistry, *, build: Callable[[AdapterConfig], SlurmAdapter] = build_adapter
    ) -> None:
        self._registry = registry
        self._build = build
        self._adapters: dict[str, SlurmAdapter] = {}

    def get(self, factory_id: str) -> SlurmAdapter:
        """The Factory's adapter; KeyError for a Factory the registry does not know."""
        adapter = self._adapters.get(factory_id)
        if adapter is None:
            adapter = self._build(self._registry[factory_id].adapter)
            self._adapters[factory_id] = adapter
        return adapter

    async def aclose(self) -> None:
        adapters, self._adapters = list(self._adapters.items()), {}
        results = await asyncio.gather(*(adapter.aclose() for _, adapter in adapters), return_exceptions=True)
        for (factory_id, _), result in zip(adapters, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("closing the adapter of Factory %s failed: %s", factory_id, result)
