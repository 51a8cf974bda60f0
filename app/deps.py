"""Typed dependencies: what a route may ask for (the caller, the services), so routes stay one-liners."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Protocol

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.auth import Authenticator, challenge
from app.problems import Unauthenticated
from broker.agents.auth import AgentAuthenticator
from broker.agents.keys import AgentKeyService
from broker.agents.service import AgentService
from broker.antennas.assertion import SCHEME, BoundRequest
from broker.antennas.service import AntennaService
from broker.db.engine import Database
from broker.db.repositories import JobStats
from broker.errors import Forbidden, TooManyRequests
from broker.factories.registry import FactoryRegistry
from broker.factories.service import Capacity, FactoryService
from broker.identity import Principal, Scope
from broker.identity.limits import FailureLimiter, RequestRate
from broker.identity.service import AuthenticationFailed, IdentityService
from broker.jobs.service import JobService
from broker.loops.runtime import RuntimeFigures
from broker.settings import Settings
from broker.tenancy.allocations import AllocationService
from broker.tenancy.projects import ProjectService
from broker.tenancy.site_accounts import SiteAccountService


class RuntimeLike(Protocol):
    """The background loops (``broker.loops.runtime.Runtime``) as the HTTP edge uses them."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def capacity(self, factory_id: str) -> Capacity | None: ...
    def notify_new_job(self) -> None: ...
    def metrics(self) -> RuntimeFigures: ...


@dataclass
class AppState:
    """What the lifespan built; one per process, reached through ``request.app.state.conveyor``."""

    settings: Settings
    database: Database
    registry: FactoryRegistry
    authenticator: Authenticator
    identities: IdentityService
    auth_failures: FailureLimiter
    caller_rate: RequestRate
    projects: ProjectService
    allocations: AllocationService
    site_accounts: SiteAccountService
    antennas: AntennaService
    agent_auth: AgentAuthenticator
    agent_keys: AgentKeyService
    jobs: JobService
    factories: FactoryService
    stats: JobStats
    runtime: RuntimeLike | None
    agents: AgentService


async def get_state(request: Request) -> AppState:
    """The app's services. Every dependency here is ``async def``, even one that awaits nothing: FastAPI runs a
    plain ``def`` dependency in its thread pool, a thread hop per call on every request."""
    state: AppState = request.app.state.conveyor
    return state


StateDep = Annotated[AppState, Depends(get_state)]
_bearer = HTTPBearer(auto_error=False, description="A personal access token (cvy_...), or the dev token in dev mode.")


async def get_principal(
    request: Request, state: StateDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    assertion = _antenna_assertion(request)
    if credentials is None and assertion is None:
        raise Unauthenticated("send 'Authorization: Bearer <token>'", challenge())
    source = client_address(request)
    refuse_if_failing(state, source)
    try:
        if assertion is not None:
            caller = await state.antennas.authenticate(assertion, await bound_request(request), source=source)
        else:
            assert credentials is not None
            caller = await state.authenticator.authenticate(credentials.credentials, source=source)
    except AuthenticationFailed as exc:
        state.auth_failures.failed(source)
        raise Unauthenticated(exc.message, challenge("invalid_token", exc.reason), reason=exc.reason) from None
    per_minute = state.settings.requests_per_minute
    wait_s = state.caller_rate.take(caller.id, per_minute) if per_minute else None
    if wait_s is not None:
        raise TooManyRequests(f"more than {per_minute} requests per minute; slow down", math.ceil(wait_s),
                              kind="caller")  # fmt: skip
    return caller


def _antenna_assertion(request: Request) -> str | None:
    """The assertion of ``Authorization: Antenna <JWS>`` (an Antenna gateway's request), else None."""
    return scheme_credential(request, SCHEME)


def scheme_credential(request: Request, scheme: str) -> str | None:
    """The credential of ``Authorization: <scheme> <credential>`` (scheme case-insensitive), else None."""
    name, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if name.lower() == scheme.lower() else None


async def bound_request(request: Request) -> BoundRequest:
    """The request as an Antenna assertion is bound to it: method, the raw path and query, the body bytes."""
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    query = request.scope.get("query_string", b"")
    target = raw_path.decode("latin-1") + (f"?{query.decode('latin-1')}" if query else "")
    return BoundRequest(method=request.method, target=target, body=await request.body())


def refuse_if_failing(state: AppState, source: str | None) -> None:
    """429 for an address that failed to authenticate too often lately."""
    retry_after = state.auth_failures.retry_after_s(source)
    if retry_after is not None:
        raise TooManyRequests("too many failed authentications from this address; wait and retry", retry_after)


def client_address(request: Request) -> str | None:
    """Where the call came from, for the audit log (the socket's peer: no proxy headers are trusted)."""
    return request.client.host if request.client else None


def require(scope: Scope) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency: the caller, provided its credential carries ``scope`` (admin also needs the role)."""

    async def allowed(caller: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not caller.may(scope):
            if scope is Scope.ADMIN and scope in caller.scopes:
                raise Forbidden("this needs a broker admin")
            raise Forbidden(f"this token lacks the {scope.value!r} scope")
        return caller

    return allowed


async def get_jobs(state: StateDep) -> JobService:
    return state.jobs


async def get_factories(state: StateDep) -> FactoryService:
    return state.factories


async def get_identities(state: StateDep) -> IdentityService:
    return state.identities


async def get_projects(state: StateDep) -> ProjectService:
    return state.projects


async def get_allocations(state: StateDep) -> AllocationService:
    return state.allocations


async def get_site_accounts(state: StateDep) -> SiteAccountService:
    return state.site_accounts


async def get_agent_keys(state: StateDep) -> AgentKeyService:
    return state.agent_keys


async def get_agents(state: StateDep) -> AgentService:
    return state.agents


async def get_database(state: StateDep) -> Database:
    return state.database


PrincipalDep = Annotated[Principal, Depends(get_principal)]
Reader = Annotated[Principal, Depends(require(Scope.READ))]
Submitter = Annotated[Principal, Depends(require(Scope.SUBMIT))]
Admin = Annotated[Principal, Depends(require(Scope.ADMIN))]
JobServiceDep = Annotated[JobService, Depends(get_jobs)]
FactoryServiceDep = Annotated[FactoryService, Depends(get_factories)]
DbDep = Annotated[Database, Depends(get_database)]
IdentitiesDep = Annotated[IdentityService, Depends(get_identities)]
ProjectsDep = Annotated[ProjectService, Depends(get_projects)]
AllocationsDep = Annotated[AllocationService, Depends(get_allocations)]
SiteAccountsDep = Annotated[SiteAccountService, Depends(get_site_accounts)]
AgentKeysDep = Annotated[AgentKeyService, Depends(get_agent_keys)]
AgentsDep = Annotated[AgentService, Depends(get_agents)]
