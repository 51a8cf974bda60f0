"""The naive accept path the broker's is measured against: what a first FastAPI version would do.

``POST /jobs``: parse the body with a small pydantic model, add one ORM row (a jobs-like table with a JSON spec
column) and commit it in its own transaction, answer 201 after the commit. No authentication, no tenancy, no
idempotency, no placement, no allocation. Served exactly as ``python -m app`` serves the broker (one uvicorn
worker, same options, access log on), so the ratio measures the accept path and nothing else.

Both sides get the same durability, so that a 201 means a committed row on each: on SQLite the same PRAGMAs
as broker/db/engine.py (WAL, synchronous=FULL, busy_timeout) but none of its single-writer machinery (each
request's transaction just contends for SQLite's lock); on PostgreSQL the server's defaults (synchronous
commit). Pool sizes are the broker's, so neither side waits for a connection the other would have had.

    NAIVE_DATABASE_URL=sqlite+aiosqlite:////tmp/naive.db NAIVE_PORT=8001 .venv/bin/python -m bench.naive_app

The table is made at startup with ``create_all`` (this app has no migrations: it is a benchmark fixture).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import JSON, DateTime, String, event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import ConnectionPoolEntry

from app.serving import serve

TABLE = "naive_jobs"


class Base(DeclarativeBase):
    pass


class NaiveJob(Base):
    """A jobs-like row: an id, who and what, the spec as JSON (JSONB on PostgreSQL, as the broker's)."""

    __tablename__ = TABLE

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # job_ + 32 hex digits
    name: Mapped[str] = mapped_column(String(128))
    project: Mapped[str] = mapped_column(String(64))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON().with_variant(JSONB(), "postgresql"))
    state: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class JobIn(BaseModel):
    """Just enough of a job spec to be a typed body; everything else passes through as JSON."""

    name: str = Field(max_length=128)
    project: str = Field(max_length=64)
    command: list[str] | None = None
    script: str | None = None
    resources: dict[str, Any] = Field(default_factory=dict)
    placement: dict[str, Any] | None = None
    labels: dict[str, str] = Field(default_factory=dict)


def _sqlite_pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    for pragma in ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL", "PRAGMA busy_timeout=5000"):
        cursor.execute(pragma)
    cursor.close()


def make_engine(url: str) -> AsyncEngine:
    """The broker's pool sizes (broker/db/engine.py) without its pre-ping: a naive app takes the defaults."""
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_async_engine(url, pool_size=5, max_overflow=5)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_size=10, max_overflow=20)


def create_app(url: str) -> FastAPI:
    engine = make_engine(url)
    sessions = async_sessionmaker(engine, expire_on_commit=False, class_=AsyncSession)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        yield
        await engine.dispose()

    app = FastAPI(title="naive accept path", lifespan=lifespan)

    @app.post("/jobs", status_code=201)
    async def submit(job: JobIn, request: Request) -> JSONResponse:
        row = NaiveJob(
            id=f"job_{uuid.uuid4().hex}",
            name=job.name,
            project=job.project,
            spec=job.model_dump(mode="json"),
            state="queued",
            created_at=datetime.now(UTC),
        )
        async with sessions() as session, session.begin():
            session.add(row)
        body = {"id": row.id, "state": row.state, "created_at": row.created_at.isoformat()}
        return JSONResponse(body, status_code=201, headers={"Location": f"{request.url.path}/{row.id}"})

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    serve(  # exactly as the broker is served
        create_app(os.environ["NAIVE_DATABASE_URL"]),
        host=os.environ.get("NAIVE_HOST", "127.0.0.1"),
        port=int(os.environ.get("NAIVE_PORT", "8001")),
    )


if __name__ == "__main__":
    main()
