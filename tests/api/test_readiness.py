"""Starting the loops: readiness does not wait on Slurm (with every Factory's health check hanging, as when a
slurmctld crashed, the app starts and /readyz answers 200 at once), and a persistent instance id is refused
while a live process holds it. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from pathlib import Path

import pytest

from app.auth import StaticTokens
from app.main import StartupRefused, create_app
from broker.factories.adapters import AdapterPool
from broker.factories.registry import FactoryRegistry
from broker.identity import DEV_PRINCIPAL
from slurm_adapters.factory import AdapterConfig
from slurm_adapters.records import Health, JobRecord
from tests.api.conftest import TOKEN, FakeAdapter, api_settings, client_for


class HangingHealth(FakeAdapter):
    """A Factory whose slurmctld does not answer: health waits until the test lets it fail."""

    answer = asyncio.Event()

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__(config)

    async def health(self) -> Health:
        await self.answer.wait()
        return Health(ok=False, detail="slurmctld did not answer")

    async def list_jobs(self, *, tags: Collection[str] | None = None, tag_prefix: str | None = None) -> list[JobRecord]:
        return []


async def test_defect_15_readiness_does_not_wait_on_slurm(
    database_url: str, tmp_path: Path, registry: FactoryRegistry
) -> None:
    HangingHealth.answer = asyncio.Event()
    settings = api_settings(tmp_path, database_url, run_loops=True)
    pool = AdapterPool(registry, build=HangingHealth)
    app = create_app(settings, authenticator=StaticTokens({TOKEN: DEV_PRINCIPAL}), adapters=pool)
    try:
        async with asyncio.timeout(5):  # a health check hangs far longer than this
            async with app.router.lifespan_context(app), client_for(app, None) as anonymous:
                ready = await anonymous.get("/readyz")
                assert ready.status_code == 200, ready.text
                HangingHealth.answer.set()  # let the loops stop promptly
    finally:
        HangingHealth.answer.set()
        await pool.aclose()


async def test_a_second_process_under_a_live_instance_id_is_refused_at_startup(
    database_url: str, tmp_path: Path, registry: FactoryRegistry
) -> None:
    """The first process keeps beating, so the second, after waiting one heartbeat TTL for it to lapse, is
    refused; once the first has stopped (retired), the id is free again at once."""
    HangingHealth.answer = asyncio.Event()
    HangingHealth.answer.set()
    loops = {"run_loops": True, "instance_id": "broker-a", "heartbeat_interval_s": 0.2, "heartbeat_ttl_s": 1.0}
    pool = AdapterPool(registry, build=HangingHealth)
    tokens = StaticTokens({TOKEN: DEV_PRINCIPAL})
    first = create_app(api_settings(tmp_path, database_url, **loops), authenticator=tokens, adapters=pool)
    second = create_app(api_settings(tmp_path, database_url, **loops), authenticator=tokens, adapters=pool)
    try:
        async with first.router.lifespan_context(first):
            with pytest.raises(StartupRefused, match="held by a live process"):
                async with second.router.lifespan_context(second):
                    pass
        async with second.router.lifespan_context(second), client_for(second, None) as anonymous:
            assert (await anonymous.get("/readyz")).status_code == 200
    finally:
        await pool.aclose()
