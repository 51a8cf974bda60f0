"""Typed dependencies: what a route may ask for (the caller, the services), so routes stay one-liners."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Protocol

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.auth import Authenticator, challenge
from app.problems import Unauthenticated
from broker.db.engine import Database
from broker.db.repositories import JobStats
from broker.factories import FactoryRegistry
from broker.factory_service import Capacity, FactoryService
from broker.identity import Principal
from broker.jobs.service import JobService
from broker.settings import Settings


class RuntimeLike(Protocol):
    """The background loops (``broker.runtime.Runtime``) as the HTTP edge uses them."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def capacity(self, factory_id: str) -> Capacity | None: ...
    def notify_new_job(self) -> None: ...
    def metrics(self) -> dict[str, Any]: ...


@dataclass
class AppState:
    """What the lifespan built; one per process, reached through ``request.app.state.conveyor``."""

    settings: Settings
    database: Database
    registry: FactoryRegistry
    authenticator: Authenticator
    jobs: JobService
    factories: FactoryService
    stats: JobStats
    runtime: RuntimeLike | None


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.conveyor
    return state


StateDep = Annotated[AppState, Depends(get_state)]
_bearer = HTTPBearer(auto_error=False, description="The development token (dev mode); issue #4 adds real ones.")


def get_principal(
    state: StateDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    if credentials is None:
        raise Unauthenticated("send 'Authorization: Bearer <token>'", challenge())
    principal = state.authenticator.authenticate(credentials.credentials)
    if principal is None:
        raise Unauthenticated("the bearer token is not valid", challenge("invalid_token", "unknown token"))
    return principal


def get_jobs(state: StateDep) -> JobService:
    return state.jobs


def get_factories(state: StateDep) -> FactoryService:
    return state.factories


def get_database(state: StateDep) -> Database:
    return state.database


PrincipalDep = Annotated[Principal, Depends(get_principal)]
JobServiceDep = Annotated[JobService, Depends(get_jobs)]
FactoryServiceDep = Annotated[FactoryService, Depends(get_factories)]
DbDep = Annotated[Database, Depends(get_database)]
