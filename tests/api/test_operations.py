"""Factories, admin drains, probes and metrics, the error answers of last resort, and startup refusals."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from app.main import StartupRefused, create_app
from broker.db.repositories import FactoryStateRepository
from conveyor.models import FactoryView
from tests.api.conftest import Api, api_settings, client_for, job_body
from tests.api.test_jobs import problem_of, submit
from tests.db.helpers import only_sqlite


async def test_factories_show_config_health_drain_and_queue(api: Api) -> None:
    await FactoryStateRepository(api.db).record_health("alpha", healthy=True, detail="v0.0.42 in 12 ms", actor="t")
    response = await api.other.get("/v1/factories")
    assert response.status_code == 200
    views = [FactoryView.model_validate(v) for v in response.json()]
    assert [v.id for v in views] == ["alpha", "bravo"]
    alpha, bravo = views
    assert (alpha.healthy, alpha.health_detail, alpha.country) == (True, "v0.0.42 in 12 ms", "IT")
    assert bravo.healthy is None  # never checked: unknown, not "unhealthy"
    assert [p.name for p in alpha.partitions] == ["cpu", "gpu"]
    assert alpha.partitions[1].gpus_per_node == {"a100": 4}
    assert (alpha.gpu_types, bravo.gpu_types) == (["a100"], ["h100"])
    # No loops here, so nothing observed capacity: unknown, never guessed from config.
    assert (alpha.total_gpus, alpha.free_gpus, alpha.slurm_release) == (None, None, None)
    problem_of(await api.client.get("/v1/factories/zulu"), 404, "not_found")


async def test_drain_and_undrain_are_for_admins_and_audited(api: Api) -> None:
    problem_of(await api.other.post("/v1/admin/factories/alpha/drain", json={"reason": "x"}), 403, "forbidden")
    problem_of(await api.client.post("/v1/admin/factories/zulu/drain", json={"reason": "x"}), 404, "not_found")
    problem_of(await api.client.post("/v1/admin/factories/alpha/drain", json={}), 422, "validation_error")
    drained = await api.client.post("/v1/admin/factories/alpha/drain", json={"reason": "slurmctld upgrade"})
    assert drained.status_code == 200
    assert (drained.json()["drained"], drained.json()["drained_reason"]) == (True, "slurmctld upgrade")
    undrained = await api.client.post("/v1/admin/factories/alpha/undrain")
    assert (undrained.json()["drained"], undrained.json()["drained_reason"]) == (False, None)
    events = await FactoryStateRepository(api.db).events("alpha")
    assert [(e.kind, e.actor) for e in events] == [("factory_drained", "dev"), ("factory_undrained", "dev")]


async def test_probes_and_metrics(api: Api) -> None:
    assert (await api.anonymous.get("/healthz")).json() == {"status": "ok"}
    ready = await api.anonymous.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    await submit(api.client)
    await submit(api.client)
    await api.client.post("/v1/admin/factories/bravo/drain", json={"reason": "r"})
    metrics = await api.anonymous.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = metrics.text.splitlines()
    assert "conveyor_queue_depth 2" in lines
    assert 'conveyor_jobs{factory="",state="queued"} 2' in lines
    assert 'conveyor_factory_drained{factory="bravo"} 1' in lines
    assert "# TYPE conveyor_queue_depth gauge" in lines
    # One after the other, each accept was its own group commit.
    assert {"conveyor_accept_batches_total 2", "conveyor_accept_batched_jobs_total 2"} <= set(lines)


def test_runtime_figures_become_prometheus_families() -> None:
    from app.metrics import render
    from broker.loops.runtime import RuntimeFigures

    figures: RuntimeFigures = {
        "worker_id": "w1",
        "dispatch_queue_depth": 3,
        "dispatch_lag_seconds": 1.5,
        "dispatch_cycle_seconds": None,
        "dispatch_errors": {"alpha": 2.0},
        "reconcile_cycle_seconds": {"alpha": 0.02},
        "reconcile_last_cycle_timestamp_seconds": {"alpha": 1_800_000_000.0},
        "reconcile_lag_seconds": {"alpha": 4.25},
        "reconcile_errors": {"alpha": 1.0},
        "reconcile_held_jobs": {"alpha": 2.0},
        "loop_errors": {"health": 3},
    }
    lines = render({}, [], figures).splitlines()
    assert "conveyor_dispatch_lag_seconds 1.5" in lines
    assert 'conveyor_reconcile_lag_seconds{factory="alpha"} 4.25' in lines
    assert 'conveyor_reconcile_cycle_seconds{factory="alpha"} 0.02' in lines
    assert 'conveyor_errors_total{factory="alpha",loop="dispatch"} 2' in lines
    assert 'conveyor_errors_total{factory="alpha",loop="reconcile"} 1' in lines
    assert 'conveyor_loop_errors_total{loop="health"} 3' in lines
    assert 'conveyor_held_jobs{factory="alpha"} 2' in lines
    assert "# TYPE conveyor_errors_total counter" in lines
    assert not any(line.startswith("conveyor_dispatch_cycle_seconds") for line in lines)


async def test_unknown_routes_and_methods_are_problems(api: Api) -> None:
    problem_of(await api.client.get("/v1/nowhere"), 404, "not_found")
    response = await api.client.delete("/v1/jobs")
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/problem+json"


async def test_defect_19_405_lists_every_allowed_method(api: Api) -> None:
    """For every path of the OpenAPI document, a method it does not serve is a 405 problem whose Allow header
    names every method the path serves (GET and POST on /v1/jobs are two routes)."""
    for template, operations in api.app.openapi()["paths"].items():
        allowed = {method.upper() for method in operations}
        path = re.sub(r"\{[^}]+\}", "x", template)
        wrong = next(method for method in ("PATCH", "PUT", "DELETE", "POST", "GET") if method not in allowed)
        response = await api.client.request(wrong, path)
        assert response.status_code == 405, (wrong, path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert set(response.headers["allow"].split(", ")) == allowed, (wrong, path)


async def test_an_unexpected_error_is_a_500_problem_without_internals(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_: object) -> None:
        raise RuntimeError("secret internals: password=hunter2")

    monkeypatch.setattr(api.app.state.conveyor.jobs, "get", broken)
    transport = httpx.ASGITransport(app=api.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=api.client.headers) as client:
        response = await client.get("/v1/jobs/job_aaaaaaaaaaaaaaaaaaaa")
    problem = problem_of(response, 500, "internal_error")
    assert "hunter2" not in response.text
    assert "RuntimeError" not in response.text
    assert problem.detail is not None


@only_sqlite
async def test_a_locked_database_is_a_503_with_retry_after(api: Api, database_url: str, tmp_path: Path) -> None:
    path = make_url(database_url).database
    assert path is not None
    settings = api_settings(tmp_path, database_url, sqlite_busy_timeout_ms=50)
    app = create_app(settings, authenticator=api.app.state.conveyor.authenticator, adapters=api.adapters)
    holder = sqlite3.connect(path, isolation_level=None)
    async with app.router.lifespan_context(app), client_for(app, "dev-token-for-api-tests-0123456789") as client:
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock beyond busy_timeout
        try:
            response = await client.post("/v1/jobs", json=job_body())
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        problem_of(response, 503, "unavailable.database")
        assert response.headers["retry-after"] == "5"
        assert (await client.post("/v1/jobs", json=job_body())).status_code == 201


async def test_startup_refuses_an_old_schema_and_unsafe_settings(tmp_path: Path) -> None:
    empty = api_settings(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
    app = create_app(empty)
    with pytest.raises(StartupRefused, match="alembic upgrade head"):
        async with app.router.lifespan_context(app):
            pass
    unsafe = api_settings(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", dev_mode=False)
    with pytest.raises(StartupRefused, match="DEV_MODE is off"):
        async with create_app(unsafe).router.lifespan_context(create_app(unsafe)):
            pass


async def test_openapi_documents_every_route_with_examples(api: Api) -> None:
    schema = (await api.anonymous.get("/openapi.json")).json()
    paths = schema["paths"]
    for path in ("/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel", "/v1/jobs/{job_id}/events",
                 "/v1/jobs/{job_id}/output", "/v1/factories", "/v1/admin/factories/{factory_id}/drain",
                 "/healthz", "/readyz", "/metrics"):  # fmt: skip
        assert path in paths, path
    components = schema["components"]["schemas"]
    assert components["Job"]["examples"]
    assert components["JobSpec"]["examples"]
    assert "Idempotency-Key" in {p["name"] for p in paths["/v1/jobs"]["post"]["parameters"]}
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    # Problems are documented with the media type they are sent with; only the /v1 routes authenticate.
    assert list(paths["/v1/jobs/{job_id}"]["get"]["responses"]["404"]["content"]) == ["application/problem+json"]
    assert list(paths["/metrics"]["get"]["responses"]["503"]["content"]) == ["application/problem+json"]
    assert "401" in paths["/v1/jobs"]["get"]["responses"]
    assert "401" not in paths["/healthz"]["get"]["responses"]
