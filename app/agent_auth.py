"""The Factory agent's authentication at the HTTP edge: ``Authorization: Agent <JWS>`` -> an :class:`AgentCaller`.

A route of the agent's link takes :data:`AgentCallerDep` (no bearer token, no Principal: an agent is no user).
The assertion is checked against the request as received: method, the raw path and query, the exact body
bytes (already bounded by the edge's body limit; the assertion itself by ``MAX_ASSERTION_CHARS``). Every
refusal is a 401 ``unauthorized.<reason>`` problem (:class:`broker.identity.assertions.Reason`) with an
``Agent`` challenge, counted against the caller's address like any failed authentication (429 beyond the
limit).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.auth import challenge
from app.deps import StateDep, bound_request, client_address, refuse_if_failing, scheme_credential
from app.problems import Unauthenticated
from broker.agents.auth import AgentCaller
from broker.identity.assertions import InvalidAssertion
from slurm_adapters.agent_protocol import SCHEME


async def get_agent_caller(request: Request, state: StateDep) -> AgentCaller:
    """The agent a request comes from, or 401 (429 after too many failures from its address)."""
    assertion = scheme_credential(request, SCHEME)
    if not assertion:
        raise Unauthenticated(f"send 'Authorization: {SCHEME} <assertion>'", challenge(scheme=SCHEME))
    source = client_address(request)
    refuse_if_failing(state, source)
    try:
        return await state.agent_auth.authenticate(assertion, await bound_request(request), source=source)
    except InvalidAssertion as exc:
        state.auth_failures.failed(source)
        reason = exc.reason.value
        raise Unauthenticated(f"the agent assertion is not valid: {exc.detail}",
                              challenge("invalid_token", reason, scheme=SCHEME), reason=reason) from None  # fmt: skip


AgentCallerDep = Annotated[AgentCaller, Depends(get_agent_caller)]

__all__ = ["AgentCallerDep", "get_agent_caller"]
