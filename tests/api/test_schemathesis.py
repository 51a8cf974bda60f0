"""Property-based tests of the whole API from its own OpenAPI document (schemathesis).

Every operation is called with generated requests (valid and invalid ones), authenticated with the dev token,
and every answer must be: no 5xx, a status the document declares for the operation, the declared content
type, a body that validates against the declared schema, and the declared headers.

In-process (schemathesis' ASGI transport) rather than over uvicorn: the generated requests still go through
the app's real lifespan, routing, authentication, validation and problem handlers, which are what the document
describes; uvicorn's own HTTP parsing is covered by test_server.py. In-process it is fast and deterministic
(no ports, no second process), which is what makes a fixed seed reproduce a failure exactly.

Nothing can reach Slurm: the loops are off (no dispatcher, no reconciler), every Factory is drained, and the
adapters are ``FakeAdapter``s that fail (a 500 here) on any Slurm call.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi import FastAPI
from schemathesis.python import asgi

from app.auth import StaticTokens
from app.main import create_app
from broker.factories.adapters import AdapterPool
from broker.factories.registry import load_factories
from broker.identity import DEV_PRINCIPAL
from broker.settings import Settings
from tests.api.conftest import FACTORIES, TOKEN, FakeAdapter, api_settings

# One item per API operation, all with one node id: pytest-xdist would run one of them (dev/test.sh runs it alone).
pytestmark = pytest.mark.serial

SEED = 20260311
MAX_EXAMPLES = 50  # per operation and phase; the whole run stays well under a minute
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
)


def _config() -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "headers": {"Authorization": f"Bearer {TOKEN}"},
            "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
            "phases": {"stateful": {"enabled": False}},
            "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
        }
    )


def _document() -> dict[str, Any]:
    """The app's OpenAPI document: it depends on the code only, so any settings will do to build it."""
    settings = Settings(dev_mode=True, dev_token=TOKEN, database_url="sqlite+aiosqlite:///unused.db", run_loops=False)
    return create_app(settings).openapi()


# Loaded at import from the document alone; the requests go to the app the fixture below starts (``app=``).
# (schemathesis.pytest.from_fixture would load it from a fixture, but its lazy loader does not run on pytest 9.)
schema = schemathesis.openapi.from_dict(_document(), config=_config())


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, migrated_sqlite_template: Path) -> Iterator[FastAPI]:
    """The broker on a fresh SQLite copy, every Factory drained, started in schemathesis' event-loop thread."""
    directory = tmp_path_factory.mktemp("schemathesis")
    database = directory / "conveyor.db"
    shutil.copyfile(migrated_sqlite_template, database)
    settings = api_settings(directory, f"sqlite+aiosqlite:///{database}", run_loops=False)
    pool = AdapterPool(load_factories(settings.factories_file), build=FakeAdapter)
    app = create_app(settings, authenticator=StaticTokens({TOKEN: DEV_PRINCIPAL}), adapters=pool)
    try:
        # Entering the client starts the app's lifespan in schemathesis' event-loop thread, where it stays until
        # shutdown_lifespans(); its ASGI type is narrower than FastAPI's (dict for MutableMapping).
        with asgi.get_client(app) as client:  # type: ignore[arg-type]
            client.headers["Authorization"] = f"Bearer {TOKEN}"
            for factory in FACTORIES["factories"]:
                drained = client.post(f"/v1/admin/factories/{factory['id']}/drain", json={"reason": "schemathesis"})
                assert drained.status_code == 200, drained.text
                assert drained.json()["drained"] is True
        yield app
    finally:
        asgi.shutdown_lifespans()
        asyncio.run(pool.aclose())


@schema.parametrize()
@hypothesis.settings(deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
def test_the_api_keeps_its_openapi_contract(case: schemathesis.Case[Any], app: FastAPI) -> None:
    case.call_and_validate(app=app)
