"""The API in-process (httpx's ASGI transport, the app's real lifespan) on SQLite and PostgreSQL.

Two principals: the broker authenticates with one static dev token, which gives one principal. To test what
one caller must not see of another, the app is built with ``authenticator=StaticTokens({...})`` holding a
second, test-only token: the real Bearer parsing and constant-time comparison run for both, and nothing in
production derives an identity from anything but a verified token.

Adapters: a pool whose adapters render exactly as the real ones (a dry run shows the real rendering) and
fail loudly if anything tries to submit, cancel or list: the API itself must never call Slurm for that.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.auth import StaticTokens
from app.main import create_app
from broker.db.engine import Database
from broker.factories.adapters import AdapterPool
from broker.factories.registry import FactoryRegistry, load_factories
from broker.identity import DEV_PRINCIPAL, Principal
from broker.identity.service import IdentityService
from broker.settings import Settings
from slurm_adapters.errors import OutputUnavailable, SlurmError
from slurm_adapters.factory import AdapterConfig, build_adapter
from slurm_adapters.interface import SlurmAdapter
from slurm_adapters.records import (
    MAX_OUTPUT_CHUNK_BYTES,
    ClusterInfo,
    Health,
    JobRecord,
    OutputChunk,
    OutputStream,
    Rendering,
    SlurmJobSpec,
    SubmitContext,
)
from slurm_adapters.safety import check_chunk_request
from tests.db.conftest import (  # noqa: F401 - fixtures shared with the database tests
    database_url,
    db,
    migrated_postgres_url,
    migrated_sqlite_template,
    postgres_databases,
)

TOKEN = "dev-token-for-api-tests-0123456789"
OTHER_TOKEN = "second-test-only-token-9876543210"
OTHER = Principal(id="dev-2", admin=False, any_project=True)  # a second dev-mode principal


def partition(name: str, max_time: int, default_time: int, nodes: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "max_time_min": max_time, "default_time_min": default_time, "nodes": nodes,
            "cpus_per_node": 8, "memory_mb_per_node": 16000, **extra}  # fmt: skip


def factory(factory_id: str, country: str, *partitions: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": factory_id,
        "name": f"Test {factory_id}",
        "country": country,
        "site": "tests",
        # Nothing listens on port 9: the adapters below never reach it.
        "adapter": {
            "kind": "rest",
            "cluster": factory_id,
            "url": "http://127.0.0.1:9",
            "jwt_key_file": "/nonexistent/jwt.key",
            "operator_user": "root",
        },
        "mapping": {"default_user": "alice"},
        "job_root": f"/scratch/{factory_id}",
        "partitions": list(partitions),
    }


A100, H100 = {"a100": 4}, {"h100": 2}
FACTORIES = {
    "factories": [
        factory(
            "alpha", "IT", partition("cpu", 60, 10, 2, default=True), partition("gpu", 120, 30, 2, gpus_per_node=A100)
        ),
        factory(
            "bravo", "ES", partition("cpu", 30, 5, 1, default=True), partition("gpu", 90, 20, 1, gpus_per_node=H100)
        ),
    ]
}


class FakeAdapter(SlurmAdapter):
    """Renders like the real adapter of its config; serves canned output; refuses every other Slurm call."""

    kind = "fake"

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__(config.cluster)
        self._real = build_adapter(config)
        self.outputs: dict[tuple[int, str], str] = {}
        self.output_error: SlurmError | None = None
        self.output_calls = 0

    def render(self, spec: SlurmJobSpec, user: str) -> Rendering:
        return self._real.render(spec, user)

    async def read_output(self, job_id: int, stream: OutputStream = "stdout", max_bytes: int = 65536) -> str:
        self.output_calls += 1
        if self.output_error is not None:
            raise self.output_error
        text = self.outputs.get((job_id, stream))
        if text is None:
            raise OutputUnavailable(f"no {stream} for job {job_id}", cluster=self.cluster)
        return text.encode()[-max_bytes:].decode(errors="replace")

    async def read_output_chunk(
        self, job_id: int, stream: OutputStream = "stdout", offset: int = 0, max_bytes: int = MAX_OUTPUT_CHUNK_BYTES
    ) -> OutputChunk:
        max_bytes = check_chunk_request(offset, max_bytes, cluster=self.cluster)
        text = await self.read_output(job_id, stream, 2**62)
        data = text.encode()
        piece = data[offset : offset + max_bytes]
        return OutputChunk(data=piece, offset=offset, size=len(data), eof=offset + len(piece) >= len(data))

    async def submit(self, spec: SlurmJobSpec, user: str, context: SubmitContext | None = None) -> int:
        raise AssertionError("the API must never submit to Slurm")

    async def get_job(self, job_id: int) -> JobRecord:
        raise AssertionError("the API must never read jobs from Slurm")

    async def list_jobs(self, *, tags: Collection[str] | None = None, tag_prefix: str | None = None) -> list[JobRecord]:
        raise AssertionError("the API must never list Slurm jobs")

    async def cancel(self, job_id: int, user: str, tag: str | None = None) -> None:
        raise AssertionError("the API must never cancel in Slurm itself")

    async def cluster_info(self) -> ClusterInfo:
        raise AssertionError("the API must never ask Slurm for cluster info")

    async def health(self) -> Health:
        raise AssertionError("the API must never run health checks itself")


@dataclass
class Api:
    """A running app and clients for it: ``client`` is the dev (admin) principal, ``other`` a second one."""

    app: FastAPI
    client: httpx.AsyncClient
    other: httpx.AsyncClient
    anonymous: httpx.AsyncClient
    adapters: AdapterPool
    db: Database
    settings: Settings

    def adapter(self, factory_id: str) -> FakeAdapter:
        adapter = self.adapters.get(factory_id)
        assert isinstance(adapter, FakeAdapter)
        return adapter


# alpha's site accounts (its adapter reads this passwd under its fs_root): users, daemons, reserved uids.
SITE_PASSWD = """\
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
slurm:x:64030:64030::/nonexistent:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
alice:x:1001:1001::/home/alice:/bin/bash
bob:x:1002:1002::/home/bob:/bin/bash
backup-svc:x:1500:1500::/var/backups:/bin/false
pkg-daemon:x:64040:64040::/nonexistent:/bin/bash
carol:x:70001:70001::/home/carol:/bin/bash
nfsnobody:x:4294967294:4294967294::/:/bin/bash
"""


def write_site(directory: Path) -> Path:
    """alpha's filesystem as its adapter sees it: /etc/passwd and /etc/login.defs."""
    (directory / "etc").mkdir(parents=True, exist_ok=True)
    (directory / "etc" / "passwd").write_text(SITE_PASSWD)
    (directory / "etc" / "login.defs").write_text("UID_MIN\t\t\t 1000\nUID_MAX\t\t\t60000\n")
    return directory


def write_factories(directory: Path) -> Path:
    document = copy.deepcopy(FACTORIES)
    site = write_site(directory / "alpha-site")
    alpha, bravo = document["factories"]
    alpha["adapter"].update(fs_root=str(site), user_lookup="passwd")  # resolves uids at its site
    alpha["working_roots"] = ["/scratch/alpha", "/home/{user}"]  # bravo: its job_root alone
    bravo["adapter"].update(allowed_users="alice|bob")  # cannot: names its people instead
    path = directory / "factories.json"
    path.write_text(json.dumps(document))
    return path


@pytest.fixture
def registry(tmp_path: Path) -> FactoryRegistry:
    return load_factories(write_factories(tmp_path))


def api_settings(tmp_path: Path, url: str, **changes: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "database_url": url,
        "factories_file": write_factories(tmp_path),
        "dev_mode": True,
        "dev_token": TOKEN,
        "run_loops": False,
        **changes,
    }
    return Settings(**values)


def client_for(app: FastAPI, token: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://conveyor.test", headers=headers)


@pytest.fixture
async def api(db: Database, database_url: str, tmp_path: Path, registry: FactoryRegistry) -> AsyncIterator[Api]:  # noqa: F811
    settings = api_settings(tmp_path, database_url)
    pool = AdapterPool(registry, build=FakeAdapter)
    app = create_app(settings, authenticator=StaticTokens({TOKEN: DEV_PRINCIPAL, OTHER_TOKEN: OTHER}), adapters=pool)
    async with (
        app.router.lifespan_context(app),
        client_for(app, TOKEN) as client,
        client_for(app, OTHER_TOKEN) as other,
        client_for(app, None) as anon,
    ):
        yield Api(app, client, other, anon, pool, db, settings)
    await pool.aclose()


def job_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "train",
        "project": "EHPC-AIF-2026PG01-1147",
        "command": ["python", "train.py"],
        "resources": {"time_limit_min": 20},
    }
    body.update(changes)
    return body


@pytest.fixture
def sqlite_copy(tmp_path: Path, migrated_sqlite_template: Path) -> Path:  # noqa: F811
    """A migrated SQLite file of the test's own, for a broker run as a subprocess."""
    path = tmp_path / "conveyor.db"
    shutil.copyfile(migrated_sqlite_template, path)
    return path


# --- a broker with real identities: personal tokens only, no static token --------------------------------

PROJECT = "EHPC-AIF-2026PG01-1147"


@dataclass
class Broker:
    """The app with the real authenticator (no static token at all) and its first admin's token."""

    app: FastAPI
    db: Database
    admin_token: str

    def client(self, token: str | None) -> httpx.AsyncClient:
        return client_for(self.app, token)

    async def user(self, name: str) -> tuple[str, str]:
        """A new local user, made by the admin through the API: (user id, its first token)."""
        async with self.client(self.admin_token) as admin:
            response = await admin.post("/v1/admin/users", json={"name": name})
        assert response.status_code == 201, response.text
        body = response.json()
        return body["user"]["id"], body["token"]["token"]

    async def grant(self, project: str, factory: str, hours: float, unit: str = "gpu_hours") -> dict[str, Any]:
        """An allocation in force from an hour ago for a year, made by the admin through the API."""
        now = datetime.now(UTC)
        period = {
            "starts_at": (now - timedelta(hours=1)).isoformat(),
            "ends_at": (now + timedelta(days=365)).isoformat(),
        }
        body = {"project": project, "factory": factory, "unit": unit, "hours": hours, **period}
        async with self.client(self.admin_token) as admin:
            response = await admin.post("/v1/admin/allocations", json=body)
        assert response.status_code == 201, response.text
        granted: dict[str, Any] = response.json()
        return granted

    async def join_project(self, granter_token: str, user_id: str, role: str, project: str = PROJECT) -> None:
        """Make the project if needed (as the admin), then ``granter_token`` grants ``role`` to ``user_id``."""
        async with self.client(self.admin_token) as admin:
            made = await admin.post("/v1/admin/projects", json={"id": project, "title": f"project {project}"})
            assert made.status_code in (201, 409), made.text
            if made.status_code == 201:  # a new project gets ample hours on every Factory
                for factory_id in (f["id"] for f in FACTORIES["factories"]):
                    await self.grant(project, factory_id, 1_000_000)
        async with self.client(granter_token) as granter:
            granted = await granter.put(f"/v1/projects/{project}/members/{user_id}", json={"role": role})
        assert granted.status_code == 204, granted.text


@contextlib.asynccontextmanager
async def running_broker(db: Database, settings: Settings) -> AsyncIterator[Broker]:  # noqa: F811
    """The app of ``settings`` (its Factory file's registry, with fake adapters) and its first admin."""
    pool = AdapterPool(load_factories(settings.factories_file), build=FakeAdapter)
    app = create_app(settings, adapters=pool)
    _, issued = await IdentityService(db).create_first_admin("ops")
    async with app.router.lifespan_context(app):
        yield Broker(app, db, issued.text)
    await pool.aclose()


@pytest.fixture
async def broker(db: Database, database_url: str, tmp_path: Path) -> AsyncIterator[Broker]:  # noqa: F811
    async with running_broker(db, api_settings(tmp_path, database_url, dev_mode=False, dev_token=None)) as running:
        yield running
