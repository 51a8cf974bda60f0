"""What the agent's HTTP routes call: one method per route, taking and returning the wire messages of
:mod:`slurm_adapters.agent_protocol`. The caller has authenticated the request as ``factory_id``'s agent.

Refusals are typed (:mod:`broker.agents.errors`): :class:`UnknownFactory` and :class:`UnknownSession` (404),
:class:`SessionExpired` (409; the agent opens a new session); a listing or site state that does not decode,
:class:`~broker.errors.InvalidInput` (422)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from broker.agents.errors import UnknownFactory
from broker.agents.link import AgentLink
from broker.agents.metrics import AgentMetrics
from broker.agents.sessions import Connection, Presence, presences
from broker.factories.registry import FactoryRegistry
from broker.jobs.ids import JOB_ID_PREFIX
from slurm_adapters.agent_protocol import (
    PUSH,
    Heartbeat,
    HeartbeatAnswer,
    Hello,
    Listing,
    ListingAnswer,
    Orders,
    Poll,
    PushPlan,
    Reports,
    ReportsAnswer,
    SessionGranted,
    SiteAnswer,
    SiteState,
)
from slurm_adapters.factory import AgentConfig


@dataclass(frozen=True, slots=True)
class AgentFigures:
    """The agent Factories (config order), what the sessions table said of each at ``now``, and this
    process's counts (:class:`AgentMetrics`)."""

    factories: tuple[str, ...]
    presences: Mapping[str, Presence]
    counted: AgentMetrics
    now: datetime


class AgentService:
    """Sessions, heartbeats, long polls and reports of the Factories' agents."""

    def __init__(self, link: AgentLink, registry: FactoryRegistry) -> None:
        self._link = link
        self._registry = registry
        self._polls_stopped = False

    def stop_polls(self) -> None:
        """The process is stopping: every long poll answers now with what is due, and later ones do not wait (an
        open poll would hold the server's shutdown for as long as its wait)."""
        self._polls_stopped = True
        self._link.bell.ring_polls()

    def _agent_factory(self, factory_id: str) -> float:
        """The Factory's clock_skew_s; :class:`UnknownFactory` unless it is reached through an agent."""
        factory = self._registry.get(factory_id)
        if factory is None or not isinstance(factory.adapter, AgentConfig):
            raise UnknownFactory(f"Factory {factory_id!r} is not reached through an agent")
        return factory.clock_skew_s

    async def open_session(self, factory_id: str, kid: str, hello: Hello) -> SessionGranted:
        """A new session (its first heartbeat competes for the lease)."""
        skew = self._agent_factory(factory_id)
        row = await self._link.sessions.open(factory_id, kid, hello)
        timings = self._link.timings
        return SessionGranted(
            session_id=row.id,
            factory=factory_id,
            broker_time=row.opened_at,
            heartbeat_s=timings.heartbeat_s,
            lease_s=timings.lease_s,
            poll_wait_s=timings.poll_wait_s,
            clock_skew_s=skew,
            push=self._push_plan() if PUSH in hello.features else None,
        )

    def _push_plan(self) -> PushPlan:
        timings = self._link.timings
        return PushPlan(
            tag_prefix=JOB_ID_PREFIX,
            listing_interval_s=timings.listing_interval_s,
            full_every_s=timings.listing_full_s,
            site_interval_s=timings.site_interval_s,
        )

    async def heartbeat(self, factory_id: str, session_id: str, beat: Heartbeat) -> HeartbeatAnswer:
        self._agent_factory(factory_id)
        return await self._link.sessions.heartbeat(factory_id, session_id, beat)

    async def poll(self, factory_id: str, session_id: str, poll: Poll) -> Orders:
        """The session's due orders, waiting up to ``poll.wait_s`` for some (not once the process is stopping); an
        empty answer after the wait."""
        self._agent_factory(factory_id)
        orders = self._link.orders
        deadline = time.monotonic() + poll.wait_s
        async with self._link.bell.listen(factory_id=factory_id) as signal:
            while True:
                answer = await orders.take(factory_id, session_id, poll)
                remaining = deadline - time.monotonic()
                if answer.orders or remaining <= 0 or self._polls_stopped:
                    return answer
                await signal.wait(remaining)

    async def report(self, factory_id: str, session_id: str, reports: Reports) -> ReportsAnswer:
        self._agent_factory(factory_id)
        return await self._link.orders.apply_reports(factory_id, session_id, reports)

    async def listing(self, factory_id: str, session_id: str, listing: Listing) -> ListingAnswer:
        self._agent_factory(factory_id)
        return await self._link.listings.apply(factory_id, session_id, listing)

    async def site_state(self, factory_id: str, session_id: str, state: SiteState) -> SiteAnswer:
        self._agent_factory(factory_id)
        return await self._link.sites.apply(factory_id, session_id, state)

    async def figures(self) -> AgentFigures:
        """For ``/metrics``: what this process counted on the link and, from the sessions table (two reads),
        each agent Factory's live sessions, lease epoch and last heartbeat."""
        ids = tuple(factory.id for factory in self._registry if isinstance(factory.adapter, AgentConfig))
        now = self._link.clock()
        present = await presences(self._link.database, now) if ids else {}
        return AgentFigures(factories=ids, presences=present, counted=self._link.metrics, now=now)

    async def connections(self) -> dict[str, list[Connection]]:
        """Per Factory, its agent's live sessions (id, version, adapter, Slurm release, last heartbeat, lease)."""
        return await self._link.sessions.connections()


__all__ = ["AgentFigures", "AgentService"]
