"""Readiness does not wait on Slurm: with the loops on and every Factory's health check hanging (a slurmctld
that crashed), the app starts and /readyz answers 200 at once. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from pathlib import Path

import pytest

from app.auth import StaticTokens
from app.main import create_app
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


@pytest.mark.xfail(strict=True, reason="issue 12 item 15: the API is not ready until every first health check ends")
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
