"""Who a Factory agent's request comes from: the check of its ``Authorization: Agent <JWS>`` assertion.

The assertion is :func:`slurm_adapters.agent_protocol.sign`'s: ``typ`` = ``conveyor-agent+jwt``, ``iss`` =
``sub`` = the Factory, ``aud`` = this broker, at most ``MAX_LIFETIME_S`` long, bound to the request's method,
path with query and body, signed with a key of the Factory's registered agent JWKS (:mod:`broker.agents.keys`)
under the algorithm registered with it; the rules it shares with Antenna assertions are
:mod:`broker.identity.assertions`'. The Factory must be one this broker serves, configured with
``adapter: {kind: agent}``.

Revocation is immediate: the Factory's keys are read from the database on every request (one primary-key
read), so a replacement made through any replica refuses a dropped kid on the very next request everywhere;
only the parsing of a JWKS is cached, keyed by the stored document itself. Each ``jti`` is accepted once across
replicas (:class:`~broker.db.models.AgentAssertionSeen`; rows of expired assertions are dropped on the way).
Every refusal is an :class:`~broker.identity.assertions.InvalidAssertion` with a stable reason, and audited.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from broker.db.engine import Database
from broker.db.repositories.agent_keys import AgentKeyRepository
from broker.db.repositories.identity import Audit, IdentityRepository
from broker.db.types import utc_now
from broker.factories.registry import Factory, FactoryRegistry
from broker.identity.assertions import (
    LEEWAY_S,
    BoundRequest,
    Expected,
    InvalidAssertion,
    Reason,
    RegisteredKey,
    parse_jwks,
    unverified_issuer,
    verify_assertion,
)
from slurm_adapters.agent_protocol import MAX_LIFETIME_S, TYP

AGENT_KIND = "agent"  # the adapter kind of a Factory reached through its agent


@dataclass(frozen=True, slots=True)
class AgentCaller:
    """An authenticated request of a Factory's agent: which Factory, signed with which key, its assertion's
    id and expiry (the id is spent: a repeat is refused)."""

    factory_id: str
    kid: str
    jti: str
    expires_at: datetime


class AgentAuthenticator:
    """Checks agents' assertions; one per process, shared by every request."""

    def __init__(
        self, database: Database, registry: FactoryRegistry, *, audience: str, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self._registry = registry
        self._audience = audience
        self._keys = AgentKeyRepository(database, clock)
        self._identities = IdentityRepository(database, clock)
        self._clock = clock
        self._parsed: dict[str, tuple[dict[str, Any], dict[str, RegisteredKey]]] = {}

    async def authenticate(self, assertion: str, request: BoundRequest, *, source: str | None) -> AgentCaller:
        """The agent ``request`` comes from, or :class:`InvalidAssertion` (audited as ``auth.failed``)."""
        factory: Factory | None = None
        try:
            factory = self._agent_factory(unverified_issuer(assertion, typ=TYP, what="the Factory"))
            expected = Expected(typ=TYP, issuer=factory.id, what=f"Factory {factory.id}", audience=self._audience,
                                max_lifetime_s=MAX_LIFETIME_S, unknown_issuer=Reason.UNKNOWN_FACTORY)  # fmt: skip
            keys = await self._keys_of(factory.id)
            verified = verify_assertion(assertion, keys, expected, request, self._clock().timestamp())
            if verified.claims["sub"] != factory.id:
                raise InvalidAssertion(Reason.BAD_SUBJECT, "sub must be the Factory that signed (iss)")
            caller = AgentCaller(factory_id=factory.id, kid=verified.kid, jti=verified.jti,
                                 expires_at=datetime.fromtimestamp(verified.expires_at, UTC))  # fmt: skip
            # Kept until the assertion would be refused as expired anyway, leeway included.
            until = caller.expires_at + timedelta(seconds=LEEWAY_S)
            if not await self._keys.accept_once(factory.id, caller.jti, until):
                raise InvalidAssertion(Reason.REPLAYED, "this assertion (its jti) was used before")
        except InvalidAssertion as exc:
            detail = {"reason": exc.reason.value, "method": "agent", **({"factory": factory.id} if factory else {})}
            await self._identities.audit(Audit(action="auth.failed", outcome="denied", source=source, detail=detail))
            raise
        return caller

    def _agent_factory(self, factory_id: str) -> Factory:
        """The Factory an assertion claims to come from, if this broker serves it through an agent."""
        factory = self._registry.get(factory_id)
        if factory is None:
            raise InvalidAssertion(Reason.UNKNOWN_FACTORY, "this broker serves no such Factory")
        if factory.adapter.kind != AGENT_KIND:
            detail = f"Factory {factory.id} is not configured with adapter kind {AGENT_KIND!r}"
            raise InvalidAssertion(Reason.NOT_AN_AGENT_FACTORY, detail)
        return factory

    async def _keys_of(self, factory_id: str) -> dict[str, RegisteredKey]:
        """The Factory's agent keys as stored now; parsed once per stored document."""
        stored = await self._keys.get(factory_id)
        if stored is None:
            raise InvalidAssertion(Reason.UNKNOWN_KEY, f"Factory {factory_id} has no registered agent keys")
        cached = self._parsed.get(factory_id)
        if cached is None or cached[0] != stored.jwks:
            try:
                cached = (stored.jwks, parse_jwks(stored.jwks, purpose="agent keys"))
            except ValueError as exc:  # validated when uploaded; never expected
                raise InvalidAssertion(Reason.BAD_KEY, f"Factory {factory_id}'s stored agent keys: {exc}") from None
            self._parsed[factory_id] = cached
        return cached[1]


__all__ = ["AGENT_KIND", "AgentAuthenticator", "AgentCaller"]
