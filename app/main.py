"""The app factory: ``create_app(settings)`` wires the HTTP edge to the broker, and its lifespan owns startup.

Startup refuses, with one clear message, anything that would make the broker unsafe or wrong: a static token
outside dev mode, an unreadable Factory file or secrets key file, an unreachable database, or a
schema that is not at the code's head (migrations run before start, as a separate step: ``alembic upgrade
head``; the broker never migrates or creates tables itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI

from app import problems
from app.auth import Authenticator, authenticator_from_settings, oidc_verifier
from app.deps import AppState, RuntimeLike
from app.limits import EDGE_ERRORS, EdgeLimits, RequestLimits
from app.routes import admin, agents, allocations, antennas, factories, health, jobs, projects, site_accounts, tokens
from broker.agents.auth import AgentAuthenticator
from broker.agents.keys import AgentKeyService
from broker.agents.link import AgentLink
from broker.agents.service import AgentService
from broker.antennas.service import AntennaService
from broker.db.engine import database_from_settings
from broker.db.migrate import schema_is_current
from broker.db.repositories import JobStats
from broker.db.repositories.instances import InstanceIdInUse
from broker.factories.adapters import AdapterPool
from broker.factories.registry import load_factories
from broker.factories.service import FactoryService
from broker.identity.limits import FailureLimiter, RequestRate
from broker.identity.service import IdentityService
from broker.jobs.service import JobService
from broker.loops.runtime import Runtime
from broker.secret_box import SecretKeyError, secret_box_from_settings
from broker.settings import Settings
from broker.tenancy.allocations import AllocationService
from broker.tenancy.projects import ProjectService
from broker.tenancy.site_accounts import SiteAccountService
from broker.ttl_cache import TtlCache
from conveyor.models import API_ROOT
from conveyor.problems import Problem

log = logging.getLogger("conveyor.api")


# Answers every /v1 operation may give (the health routes are unauthenticated: they add the edge's to their own).
API_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "No or an invalid bearer token", "model": Problem},
    403: {"description": "The token's scopes or the caller's role do not allow this", "model": Problem},
    429: {
        "description": "Too many failed authentications from this address; retry after Retry-After",
        "model": Problem,
    },
    422: {"description": "Invalid request", "model": Problem},
    503: {"description": "The database is unavailable; retry after Retry-After", "model": Problem},
    **EDGE_ERRORS,
}


class StartupRefused(RuntimeError):
    """The broker will not start with this configuration; the message says why and what to do."""


def create_app(
    settings: Settings, *, authenticator: Authenticator | None = None, adapters: AdapterPool | None = None
) -> FastAPI:
    """The broker's ASGI app. ``authenticator`` and ``adapters`` replace the configured ones (tests: a second
    principal; a pool whose adapters need no Slurm, closed by whoever made it); production passes neither."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with _running(settings, authenticator, adapters) as state:
            app.state.loop = asyncio.get_running_loop()
            app.state.conveyor = state
            yield
            app.state.conveyor = None

    app = FastAPI(
        title="Conveyor",
        summary="One job API in front of the EuroHPC AI Factories' Slurm clusters.",
        version="0.1.0",
        lifespan=lifespan,
    )
    problems.install(app)
    app.add_middleware(RequestLimits, limits=EdgeLimits.from_settings(settings))
    for router in (
        jobs.router,
        factories.router,
        admin.router,
        tokens.router,
        projects.router,
        allocations.router,
        site_accounts.router,
        antennas.router,
        agents.router,
    ):
        app.include_router(router, prefix=API_ROOT, responses=API_ERRORS)
    app.include_router(health.router, responses=EDGE_ERRORS)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = problems.document_problem_media_type(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def stop_notice(app: FastAPI) -> Callable[[], None]:
    """What the server calls, from its signal handler, as it starts to stop: the agents' long polls answer at
    once, so none holds the shutdown for as long as its wait."""

    def notice() -> None:
        state: AppState | None = getattr(app.state, "conveyor", None)
        loop: asyncio.AbstractEventLoop | None = getattr(app.state, "loop", None)
        if state is not None and loop is not None:
            loop.call_soon_threadsafe(state.agents.stop_polls)

    return notice


def _refuse(message: str) -> StartupRefused:
    log.error("refusing to start: %s", message)
    return StartupRefused(message)


@contextlib.asynccontextmanager
async def _running(
    settings: Settings, authenticator: Authenticator | None, adapters: AdapterPool | None
) -> AsyncIterator[AppState]:
    try:
        settings.refuse_unsafe()
    except ValueError as exc:
        raise _refuse(str(exc)) from None
    try:
        registry = load_factories(settings.factories_file)
    except (OSError, ValueError) as exc:
        raise _refuse(f"cannot load the Factory file {settings.factories_file}: {exc}") from None
    try:
        secret_box = secret_box_from_settings(settings)  # None: jobs with secrets are refused
    except SecretKeyError as exc:
        raise _refuse(str(exc)) from None
    database = database_from_settings(settings)
    try:
        try:
            current = await schema_is_current(database)
        except Exception as exc:
            raise _refuse(f"the database does not answer ({type(exc).__name__}: {exc})") from None
        if not current:
            raise _refuse(
                "the database schema is not at this broker's version: run `alembic upgrade head` "
                "(with the same CONVEYOR_* settings) before starting the broker"
            )
        async with contextlib.AsyncExitStack() as stack:
            agent_link = AgentLink.from_settings(database, settings, secret_box=secret_box)
            stack.push_async_callback(agent_link.aclose)
            if adapters is None:
                pool = AdapterPool(registry, agents=agent_link)
                stack.push_async_callback(pool.aclose)
                adapters = pool
            oidc = oidc_verifier(settings)
            if oidc is not None:
                stack.push_async_callback(oidc.aclose)
            identities = IdentityService(database, credentials=TtlCache(settings.auth_cache_s))
            runtime: RuntimeLike | None = None
            if settings.run_loops:
                runtime = Runtime(settings, database, registry, adapters, secret_box=secret_box)
                try:
                    await runtime.start()
                except InstanceIdInUse as exc:
                    raise _refuse(str(exc)) from None
                stack.push_async_callback(runtime.stop)
            agents = AgentService(agent_link, registry)
            yield AppState(
                settings=settings,
                database=database,
                registry=registry,
                authenticator=authenticator or authenticator_from_settings(settings, identities, oidc),
                identities=identities,
                auth_failures=FailureLimiter(settings.auth_failures_per_minute, 60.0),
                caller_rate=RequestRate(),
                projects=ProjectService(database),
                allocations=AllocationService(database, registry),
                site_accounts=SiteAccountService(database, registry),
                antennas=AntennaService(database, registry, audience=settings.antenna_audience),
                agent_auth=AgentAuthenticator(database, registry, audience=settings.antenna_audience),
                agent_keys=AgentKeyService(database, registry),
                jobs=JobService(
                    database,
                    registry,
                    adapters,
                    on_new_job=runtime.notify_new_job if runtime else None,
                    accept_batch=settings.accept_batch,
                    secret_box=secret_box,
                ),
                factories=FactoryService(
                    database, registry, runtime.capacity if runtime else None, connections=agents.connections
                ),
                stats=JobStats(database),
                runtime=runtime,
                agents=agents,
            )
    finally:
        await database.dispose()
