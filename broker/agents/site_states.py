"""The site's state the Factories' agents push: Slurm's health and the cluster's information, served to the
health checks (and to a settle's evidence) in place of read orders.

Rules every method keeps:

- A state is stored only as the codec reads it (:class:`~broker.errors.InvalidInput` otherwise), and only if it
  was taken no earlier than the stored one (states of two sessions cannot go back in time).
- Any live session of the Factory may push (a state is a fact); writers of one Factory serialize.
- A state is served to the adapter only if it was taken after the caller asked, allowing for the Factory's
  clock skew (:meth:`SiteStateRepository.health_after`): evidence is never older than the question. No fresh
  state in time (no agent pushing, none taken yet): None, and the caller sends a read order. The health checks
  alone take the latest state received recently (:func:`latest_site_state`): they judge the recent past.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from broker.agents.bell import Bell
from broker.agents.orders import serialize_writers
from broker.agents.pushed import when_fresh
from broker.agents.sessions import live_session
from broker.db.engine import Database
from broker.db.models import AgentSiteState
from broker.db.types import utc_now
from broker.errors import Invalid, InvalidInput
from slurm_adapters.agent_protocol import SiteAnswer, SiteState
from slurm_adapters.codec import (
    ProtocolError,
    cluster_info_from_json,
    cluster_info_to_json,
    error_from_json,
    error_to_json,
    health_from_json,
    health_to_json,
)
from slurm_adapters.records import ClusterInfo, Health


@dataclass(frozen=True, slots=True)
class PushedSite:
    """A site state as the broker holds it: when it was taken, its health or the error of the health call (as
    ``codec.error_to_json`` data, for the caller to raise as its own), and its cluster information."""

    taken_at: datetime
    health: Health | None
    error: dict[str, Any] | None
    cluster_info: ClusterInfo | None


def _read(state: SiteState) -> PushedSite:
    """The state as the codec reads it; :class:`InvalidInput` naming the part that does not decode."""
    part = "health"
    try:
        health = health_from_json(state.health) if state.health is not None else None
        part = "error"
        error = error_to_json(error_from_json(state.error)) if state.error is not None else None
        part = "cluster_info"
        info = cluster_info_from_json(state.cluster_info) if state.cluster_info is not None else None
    except ProtocolError as exc:
        raise InvalidInput([Invalid(("body", part), str(exc))]) from None
    return PushedSite(state.taken_at, health, error, info)


class SiteStateRepository:
    """Applying the agents' site states and serving them. ``bell`` is rung after each applied state."""

    def __init__(self, database: Database, bell: Bell, clock: Callable[[], datetime] = utc_now) -> None:
        self._db = database
        self._bell = bell
        self._clock = clock

    async def apply(
        self, factory_id: str, session_id: str, state: SiteState, *, now: datetime | None = None
    ) -> SiteAnswer:
        """Store ``state`` unless the Factory's stored one was taken later."""
        site = _read(state)
        now = now or self._clock()
        async with self._db.write() as session:
            await live_session(session, factory_id, session_id, now)
            await serialize_writers(session, factory_id, "site")
            row = await session.get(AgentSiteState, factory_id, populate_existing=True)
            if row is not None and state.taken_at < row.taken_at:
                return SiteAnswer(applied=False)
            if row is None:
                row = AgentSiteState(factory_id=factory_id, version=0)
                session.add(row)
            row.session_id = session_id
            row.version += 1
            row.taken_at = state.taken_at
            row.received_at = now
            row.health = health_to_json(site.health) if site.health is not None else None
            row.error = site.error
            row.cluster_info = cluster_info_to_json(site.cluster_info) if site.cluster_info is not None else None
        self._bell.ring_pushed(factory_id)
        return SiteAnswer(applied=True)

    async def health_after(
        self, factory_id: str, after: datetime, *, timeout_s: float, stale_s: float
    ) -> PushedSite | None:
        """The Factory's state once one taken at ``after`` or later is held; None at once when no state was
        received for ``stale_s``, or when none comes within ``timeout_s``."""
        return await self._fresh(factory_id, after, needs_info=False, timeout_s=timeout_s, stale_s=stale_s)

    async def cluster_info_after(
        self, factory_id: str, after: datetime, *, timeout_s: float, stale_s: float
    ) -> ClusterInfo | None:
        """As :meth:`health_after`, for the cluster's information (a state without it does not serve)."""
        site = await self._fresh(factory_id, after, needs_info=True, timeout_s=timeout_s, stale_s=stale_s)
        return site.cluster_info if site is not None else None

    async def _fresh(
        self, factory_id: str, after: datetime, *, needs_info: bool, timeout_s: float, stale_s: float
    ) -> PushedSite | None:
        async def look(session: AsyncSession) -> tuple[bool, PushedSite | None]:
            row = await session.get(AgentSiteState, factory_id, populate_existing=True)
            if row is None or self._clock() - row.received_at > timedelta(seconds=stale_s):
                return True, None
            if row.taken_at < after or (needs_info and row.cluster_info is None):
                return False, None
            return True, _site(row)

        return await when_fresh(self._bell, self._db, factory_id, look, timeout_s=timeout_s)


async def latest_site_state(database: Database, factory_id: str, *, received_after: datetime) -> PushedSite | None:
    """The Factory's last pushed state if it was received after ``received_after`` (no waiting: for the health
    checks, which judge the site as it recently was, never for evidence that must postdate a question)."""
    async with database.read() as session:
        row = await session.get(AgentSiteState, factory_id, populate_existing=True)
        if row is None or row.received_at <= received_after:
            return None
        return _site(row)


def _site(row: AgentSiteState) -> PushedSite:
    return PushedSite(
        taken_at=row.taken_at,
        health=health_from_json(row.health) if row.health is not None else None,
        error=row.error,
        cluster_info=cluster_info_from_json(row.cluster_info) if row.cluster_info is not None else None,
    )


__all__ = ["PushedSite", "SiteStateRepository", "latest_site_state"]
