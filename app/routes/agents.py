"""The Factory agent's routes: its keys (for the Factory's operators and admins), the link itself (sessions,
heartbeats, the long poll for orders, reports; :mod:`slurm_adapters.agent_protocol` is the contract), and the
link's connectivity check, ``POST /v1/agent/whoami``, which an agent operator calls to see that the agent's key,
clock and the broker's audience agree (it answers the Factory and kid the broker authenticated, or a 401 saying
why not). Every link route is signed by the agent (``Authorization: Agent <JWS>``) and acts for the Factory the
assertion names, never another."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request

from app.agent_auth import AgentCallerDep
from app.deps import AgentKeysDep, AgentsDep, Reader, Submitter, client_address
from app.problems import BODY_UNREADABLE
from app.routes.antennas import jwks_document
from broker.db.models import AgentKeys
from conveyor.models import AgentIdentity, AgentKeysView, PublicJwks
from conveyor.problems import Problem
from conveyor.spec import FactoryId
from slurm_adapters.agent_protocol import (
    Heartbeat,
    HeartbeatAnswer,
    Hello,
    Listing,
    ListingAnswer,
    Orders,
    Poll,
    Reports,
    ReportsAnswer,
    SessionGranted,
    SiteAnswer,
    SiteState,
)

router = APIRouter(tags=["agents"])
FactoryPath = Annotated[FactoryId, Path()]
SessionPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
_ERRORS: dict[int | str, dict[str, Any]] = {403: {"model": Problem}, 404: {"model": Problem}}


def agent_keys_view(keys: AgentKeys) -> AgentKeysView:
    kids = [str(jwk["kid"]) for jwk in keys.jwks["keys"]]
    return AgentKeysView(factory=keys.factory_id, kids=sorted(kids), jwks=keys.jwks, updated_at=keys.updated_at,
                         updated_by=keys.updated_by)  # fmt: skip


@router.put("/factories/{factory_id}/agent-keys", summary="Register or replace a Factory agent's public keys",
            responses={**_ERRORS, **BODY_UNREADABLE})  # fmt: skip
async def replace_agent_keys(
    factory_id: FactoryPath, jwks: PublicJwks, request: Request, caller: Submitter, keys: AgentKeysDep
) -> AgentKeysView:
    """For the Factory's operators and admins. The set replaces the registered one: a kid left out is refused
    from the agent's next request on (to rotate, upload old and new, then the new alone)."""
    stored = await keys.replace(caller, factory_id, jwks_document(jwks), source=client_address(request))
    return agent_keys_view(stored)


@router.get("/factories/{factory_id}/agent-keys", summary="A Factory agent's registered public keys",
            responses=_ERRORS)  # fmt: skip
async def get_agent_keys_of(factory_id: FactoryPath, caller: Reader, keys: AgentKeysDep) -> AgentKeysView:
    return agent_keys_view(await keys.keys(caller, factory_id))


@router.post("/agent/whoami", summary="The agent link's connectivity check: who the broker takes the agent for",
             responses={401: {"model": Problem}})  # fmt: skip
async def agent_whoami(agent: AgentCallerDep) -> AgentIdentity:
    """Signed like every request of the agent (``Authorization: Agent <JWS>``, any body, usually empty)."""
    return AgentIdentity(factory=agent.factory_id, kid=agent.kid)


_LINK_ERRORS: dict[int | str, dict[str, Any]] = {401: {"model": Problem}, 404: {"model": Problem}}


@router.post("/agent/sessions", summary="Open an agent session (the agent's hello)", status_code=201,
             responses={**_LINK_ERRORS, **BODY_UNREADABLE})  # fmt: skip
async def open_agent_session(hello: Hello, agent: AgentCallerDep, agents: AgentsDep) -> SessionGranted:
    """A new session for the agent's Factory. It holds no lease yet: its first heartbeat competes for it."""
    return await agents.open_session(agent.factory_id, agent.kid, hello)


@router.post("/agent/sessions/{session_id}/heartbeat", summary="Keep an agent session alive; compete for the lease",
             responses={**_LINK_ERRORS, 409: {"model": Problem}, **BODY_UNREADABLE})  # fmt: skip
async def agent_heartbeat(
    session_id: SessionPath, beat: Heartbeat, agent: AgentCallerDep, agents: AgentsDep
) -> HeartbeatAnswer:
    """409 ``agent_session_ended`` once the session has lapsed: the agent opens a new one."""
    return await agents.heartbeat(agent.factory_id, session_id, beat)


@router.post("/agent/sessions/{session_id}/orders", summary="Long-poll for the session's orders",
             responses={**_LINK_ERRORS, 409: {"model": Problem}, **BODY_UNREADABLE})  # fmt: skip
async def agent_orders(session_id: SessionPath, poll: Poll, agent: AgentCallerDep, agents: AgentsDep) -> Orders:
    """Waits up to ``wait_s`` for orders above ``ack``; submit and cancel orders go to the lease holder only."""
    return await agents.poll(agent.factory_id, session_id, poll)


@router.post("/agent/sessions/{session_id}/reports", summary="Report what came of orders",
             responses={**_LINK_ERRORS, 409: {"model": Problem}, **BODY_UNREADABLE})  # fmt: skip
async def agent_reports(
    session_id: SessionPath, reports: Reports, agent: AgentCallerDep, agents: AgentsDep
) -> ReportsAnswer:
    """Facts, from any live session of the Factory: applied once each, repeats ignored."""
    return await agents.report(agent.factory_id, session_id, reports)


@router.post("/agent/sessions/{session_id}/listing", summary="Push Slurm's view of the Factory's active jobs",
             responses={**_LINK_ERRORS, 409: {"model": Problem}, **BODY_UNREADABLE})  # fmt: skip
async def agent_listing(
    session_id: SessionPath, listing: Listing, agent: AgentCallerDep, agents: AgentsDep
) -> ListingAnswer:
    """A full snapshot (``seq`` 0) or a delta against the one the broker holds; ``want_full`` when it holds
    another."""
    return await agents.listing(agent.factory_id, session_id, listing)


@router.post("/agent/sessions/{session_id}/site", summary="Push the site's Slurm health and cluster information",
             responses={**_LINK_ERRORS, 409: {"model": Problem}, **BODY_UNREADABLE})  # fmt: skip
async def agent_site_state(
    session_id: SessionPath, state: SiteState, agent: AgentCallerDep, agents: AgentsDep
) -> SiteAnswer:
    """Stored unless the broker holds a state taken later (``applied: false``)."""
    return await agents.site_state(agent.factory_id, session_id, state)
