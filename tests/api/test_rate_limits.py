"""The per-caller request rate (``CONVEYOR_REQUESTS_PER_MINUTE``): each caller has its own bucket; over it,
429 ``rate_limited.caller`` with Retry-After, never a 500. (The SDK's retries are proven against it live.)"""

from __future__ import annotations

from pathlib import Path

from app.auth import StaticTokens
from app.main import create_app
from broker.db.engine import Database
from broker.factories.adapters import AdapterPool
from broker.factories.registry import FactoryRegistry
from broker.identity import DEV_PRINCIPAL
from tests.api.conftest import OTHER, OTHER_TOKEN, TOKEN, FakeAdapter, api_settings, client_for
from tests.api.test_jobs import problem_of


async def test_a_caller_over_its_rate_gets_429_and_others_do_not(
    db: Database, database_url: str, tmp_path: Path, registry: FactoryRegistry
) -> None:
    pool = AdapterPool(registry, build=FakeAdapter)
    settings = api_settings(tmp_path, database_url, requests_per_minute=3)
    app = create_app(settings, authenticator=StaticTokens({TOKEN: DEV_PRINCIPAL, OTHER_TOKEN: OTHER}), adapters=pool)
    async with app.router.lifespan_context(app), client_for(app, TOKEN) as one, client_for(app, OTHER_TOKEN) as two:
        assert [(await one.get("/v1/me")).status_code for _ in range(3)] == [200, 200, 200]
        limited = await one.get("/v1/me")
        problem_of(limited, 429, "rate_limited.caller")
        assert 1 <= int(limited.headers["retry-after"]) <= 20  # one request per 20 s
        assert (await two.get("/v1/me")).status_code == 200  # its own bucket
        assert (await one.get("/healthz")).status_code == 200  # unauthenticated probes are not limited
    await pool.aclose()
