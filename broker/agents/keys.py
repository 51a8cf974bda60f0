"""The public keys a Factory's agent signs its requests with: registered and replaced by the Factory's
operators or an admin, and read back (public members only).

A JWKS is validated as an Antenna's is (:func:`broker.identity.assertions.parse_jwks`: asymmetric keys only,
each with its ``kid`` and ``alg``, at most ``MAX_KEYS``; refused as a whole). An upload replaces the stored set,
so a kid left out is revoked on the agent's very next request (:mod:`broker.agents.auth` reads the keys on
every request); to rotate, upload old and new together, then the new alone. Keys may be registered before the
Factory file says ``adapter: {kind: agent}``: they are used only once it does. Every change is audited
(``factory.agent_keys_replaced``, with the kids added and revoked), in the transaction that makes it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from broker.db.engine import Database
from broker.db.models import AgentKeys
from broker.db.repositories.agent_keys import AgentKeyRepository
from broker.db.repositories.identity import Audit
from broker.db.repositories.site_accounts import SiteAccountRepository
from broker.db.types import utc_now
from broker.errors import Forbidden, NotFound
from broker.factories.registry import FactoryRegistry
from broker.identity import Principal
from broker.identity.assertions import registered_keys


class AgentKeyService:
    def __init__(self, database: Database, registry: FactoryRegistry, clock: Callable[[], datetime] = utc_now) -> None:
        self._keys = AgentKeyRepository(database, clock)
        self._operators = SiteAccountRepository(database, clock)
        self._registry = registry

    async def replace(
        self, caller: Principal, factory_id: str, jwks: dict[str, Any], *, source: str | None = None
    ) -> AgentKeys:
        """Make ``jwks`` the Factory's agent keys (422 ``invalid_jwks`` if any key is unusable)."""
        await self._operated(caller, factory_id)
        kids = sorted(registered_keys(jwks, purpose="agent keys"))

        def audit(previous: dict[str, Any] | None) -> Audit:
            before = set() if previous is None else {str(jwk.get("kid")) for jwk in previous.get("keys", [])}
            detail = {"kids": kids, "added": sorted(set(kids) - before), "revoked": sorted(before - set(kids))}
            return Audit(action="factory.agent_keys_replaced", outcome="ok", actor=caller.id, target=factory_id,
                         source=source, detail=detail)  # fmt: skip

        return await self._keys.replace(factory_id, jwks, updated_by=caller.id, audit=audit)

    async def keys(self, caller: Principal, factory_id: str) -> AgentKeys:
        """The Factory's registered agent keys (404 when none are)."""
        await self._operated(caller, factory_id)
        stored = await self._keys.get(factory_id)
        if stored is None:
            raise NotFound("agent keys for Factory", factory_id)
        return stored

    async def _operated(self, caller: Principal, factory_id: str) -> None:
        """404 for a Factory this broker does not serve; 403 unless the caller is an admin or its operator (never
        through an Antenna)."""
        if self._registry.get(factory_id) is None:
            raise NotFound("Factory", factory_id)
        if caller.admin:
            return
        if caller.antenna is not None or not await self._operators.operates(caller.id, factory_id):
            raise Forbidden(f"only Factory {factory_id}'s operators (and admins) manage its agent keys")


__all__ = ["AgentKeyService"]
