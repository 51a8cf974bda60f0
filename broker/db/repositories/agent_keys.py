"""The public keys a Factory's agent signs with, and the assertion ids it used (each accepted once)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from broker.db.engine import Database
from broker.db.models import AgentAssertionSeen, AgentKeys, AuditEvent
from broker.db.repositories.identity import Audit
from broker.db.repositories.sql import accept_once, insert_ignoring_conflict
from broker.db.types import utc_now


class AgentKeyRepository:
    def __init__(self, database: Database, clock: Callable[[], datetime] = utc_now) -> None:
        self._db = database
        self._clock = clock

    async def replace(
        self, factory_id: str, jwks: dict[str, Any], *, updated_by: str,
        audit: Callable[[dict[str, Any] | None], Audit],
    ) -> AgentKeys:  # fmt: skip
        """Store ``jwks`` as the Factory's agent keys, whatever was there (a key left out is revoked), with the
        audit record ``audit`` makes of the previous JWKS (None: there was none), in one transaction."""
        async with self._db.write() as session:
            now = self._clock()
            values = {"jwks": jwks, "updated_at": now, "updated_by": updated_by}
            inserted = await session.scalar(
                insert_ignoring_conflict(session, AgentKeys, factory_id=factory_id, **values).returning(
                    AgentKeys.factory_id
                )
            )
            previous: dict[str, Any] | None = None
            if inserted is None:  # there were keys: replace them under the row's lock
                keys = await session.get(AgentKeys, factory_id, with_for_update=True, populate_existing=True)
                assert keys is not None  # rows are never deleted
                previous = keys.jwks
                keys.jwks, keys.updated_at, keys.updated_by = jwks, now, updated_by
            record = audit(previous)
            session.add(AuditEvent(at=now, actor=record.actor, action=record.action, target=record.target,
                                   source=record.source, outcome=record.outcome, detail=record.detail))  # fmt: skip
        return AgentKeys(factory_id=factory_id, **values)

    async def accept_once(self, factory_id: str, jti: str, expires_at: datetime) -> bool:
        """Record (Factory, jti) as used; False if it was used before, by this replica or any other."""
        async with self._db.write() as session:
            return await accept_once(session, AgentAssertionSeen, "factory_id", factory_id, jti, expires_at,
                                     self._clock())  # fmt: skip

    async def get(self, factory_id: str) -> AgentKeys | None:
        """The Factory's registered agent keys, as stored now (one primary-key read)."""
        async with self._db.read() as session:
            return await session.get(AgentKeys, factory_id)


__all__ = ["AgentKeyRepository"]
