"""Liveness, readiness and metrics: unauthenticated, outside /v1 (probes and scrapers are not API clients)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse

from app import metrics
from app.deps import StateDep
from app.problems import problem_response
from broker.db.migrate import schema_is_current
from conveyor.problems import UNAVAILABLE, Problem

router = APIRouter(tags=["health"])
_READY = {
    "type": "object",
    "properties": {"status": {"const": "ready"}, "database": {"type": "string"}},
    "required": ["status", "database"],
}


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    """Says nothing about the database: a liveness probe must not restart a broker over a database outage."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: the database answers and its schema is current",
    response_model=None,
    responses={
        200: {"description": "Ready", "content": {"application/json": {"schema": _READY}}},
        503: {"description": "Not ready: the database does not answer or its schema is old", "model": Problem},
    },
)
async def readyz(state: StateDep) -> JSONResponse:
    try:
        current = await schema_is_current(state.database)
    except Exception as exc:  # readiness reports any failure to reach the database as not ready
        detail = f"the database does not answer: {type(exc).__name__}"
        return problem_response(
            UNAVAILABLE.problem(detail, code="unavailable.database", instance="/readyz", retry_after_s=5)
        )
    if not current:
        detail = "the database schema is not at this broker's version (run alembic upgrade head)"
        return problem_response(UNAVAILABLE.problem(detail, code="unavailable.schema", instance="/readyz"))
    return JSONResponse({"status": "ready", "database": state.database.dialect})


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=PlainTextResponse,
    responses={503: {"description": "The database is unavailable; retry after Retry-After", "model": Problem}},
)
async def prometheus(state: StateDep) -> PlainTextResponse:
    counts = await state.stats.by_factory_and_state()
    views = await state.factories.views()
    runtime = state.runtime.metrics() if state.runtime is not None else None
    rendered = metrics.render(counts, views, runtime, state.jobs.accept_batches(), await state.agents.figures())
    return PlainTextResponse(rendered, media_type=metrics.CONTENT_TYPE)
