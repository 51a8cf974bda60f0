"""A Factory agent's sessions and the Factory's fenced agent lease.

Rules every method keeps:

- A session is live while its ``expires_at`` (last heartbeat + the session TTL) has not passed; once it has, the
  session is over for good (:class:`SessionExpired`) and the agent opens a new one. A session is only ever
  reached through its own Factory: another Factory's session answers :class:`UnknownSession`, like a missing one.
- The lease (one row per Factory) says which session receives submit and cancel orders, at which fencing
  ``epoch``. A heartbeat takes a free or expired lease by compare-and-set on the epoch it read, raising the
  epoch by one (1 for the first); renews it, same epoch, while it holds it; and leaves a live lease of another
  session alone. Two sessions racing for it: one update matches the epoch read, the other matches nothing.
  A paused session (the site's local switch) or a leaving one (its agent is stopping) gives its lease up at once
  and takes none; it stays live for its reports.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from broker.agents.errors import SessionExpired, UnknownSession
from broker.agents.timings import AgentTimings
from broker.db.engine import Database
from broker.db.models import AgentLease, AgentSession
from broker.db.repositories.sql import insert_ignoring_conflict
from broker.db.types import utc_now
from broker.factories.registry import FactoryRegistry
from slurm_adapters.agent_protocol import Heartbeat, HeartbeatAnswer, Hello
from slurm_adapters.factory import AgentConfig

# Rows of sessions over for this long are dropped when the Factory's agent opens another one.
FORGET_AFTER = timedelta(days=1)
_NO_UPDATE_SYNC = {"synchronize_session": False}


@dataclass(frozen=True, slots=True)
class LeaseView:
    """The Factory's lease as one transaction saw it."""

    session_id: str
    epoch: int
    expires_at: datetime

    def held_by(self, session_id: str, now: datetime) -> bool:
        return self.session_id == session_id and self.expires_at > now


@dataclass(frozen=True, slots=True)
class Connection:
    """One live session of a Factory's agent, for ``/v1/factories``."""

    factory_id: str
    session_id: str
    agent_version: str
    adapter: str
    slurm_release: str | None
    opened_at: datetime
    last_heartbeat_at: datetime
    clock_offset_s: float | None
    paused: bool
    holder: bool
    epoch: int | None


@dataclass(frozen=True, slots=True)
class Presence:
    """What the sessions table says of one Factory's agent at ``now``, for health, placement and /metrics.

    ``features`` are those the live lease holder announced at hello (None: no session holds the lease);
    ``last_heartbeat_at`` is the latest heartbeat of any of its sessions, live or not (None: never seen)."""

    factory_id: str
    live_sessions: int
    paused_sessions: int
    last_heartbeat_at: datetime | None
    epoch: int | None  # the lease's fencing epoch, held or not (None: never taken)
    features: frozenset[str] | None


async def presences(database: Database, now: datetime) -> dict[str, Presence]:
    """Every Factory that has sessions or a lease: two reads (sessions grouped, leases joined to their
    holders), whatever the number of Factories or sessions."""
    async with database.read() as session:
        seen = (
            await session.execute(
                select(
                    AgentSession.factory_id,
                    func.max(AgentSession.last_seen_at),
                    func.count().filter(AgentSession.expires_at > now),
                    func.count().filter(AgentSession.expires_at > now, AgentSession.paused.is_(True)),
                ).group_by(AgentSession.factory_id)
            )
        ).all()
        leases = (
            await session.execute(
                select(AgentLease.factory_id, AgentLease.epoch, AgentLease.expires_at, AgentSession.features).join(
                    AgentSession, AgentSession.id == AgentLease.session_id, isouter=True
                )
            )
        ).all()
    lease_of = {row[0]: row for row in leases}
    result: dict[str, Presence] = {}
    for factory_id in sorted({row[0] for row in seen} | set(lease_of)):
        sessions = next((row for row in seen if row[0] == factory_id), None)
        lease = lease_of.get(factory_id)
        held = lease is not None and lease.expires_at > now and lease.features is not None
        result[factory_id] = Presence(
            factory_id=factory_id,
            live_sessions=int(sessions[2]) if sessions else 0,
            paused_sessions=int(sessions[3]) if sessions else 0,
            last_heartbeat_at=sessions[1] if sessions else None,
            epoch=lease.epoch if lease is not None else None,
            features=frozenset(lease.features) if held and lease is not None else None,
        )
    return result


async def agent_features(
    database: Database, registry: FactoryRegistry, now: datetime
) -> dict[str, frozenset[str] | None]:
    """Per agent Factory of ``registry``, the features its live lease holder announced (None: no agent holds
    the lease), for placement (:data:`~broker.factories.placement.AgentFeatures`). No read without one."""
    ids = [factory.id for factory in registry if isinstance(factory.adapter, AgentConfig)]
    if not ids:
        return {}
    present = await presences(database, now)
    return {factory_id: present[factory_id].features if factory_id in present else None for factory_id in ids}


async def live_session(session: AsyncSession, factory_id: str, session_id: str, now: datetime) -> AgentSession:
    """The session ``session_id`` of ``factory_id`` if it is live; else :class:`UnknownSession` or
    :class:`SessionExpired`."""
    row = await session.get(AgentSession, session_id, populate_existing=True)
    if row is None or row.factory_id != factory_id:
        raise UnknownSession(f"no session {session_id!r} for Factory {factory_id!r}: open a new session")
    if row.expires_at <= now:
        raise SessionExpired(f"session {session_id!r} expired at {row.expires_at.isoformat()}: open a new session")
    return row


async def read_lease(session: AsyncSession, factory_id: str) -> LeaseView | None:
    row = (
        await session.execute(
            select(AgentLease.session_id, AgentLease.epoch, AgentLease.expires_at).where(
                AgentLease.factory_id == factory_id
            )
        )
    ).one_or_none()
    return None if row is None else LeaseView(row.session_id, row.epoch, row.expires_at)


class SessionRepository:
    """Opening sessions, their heartbeats, and the lease the heartbeats compete for."""

    def __init__(self, database: Database, timings: AgentTimings, clock: Callable[[], datetime] = utc_now) -> None:
        self._db = database
        self._timings = timings
        self._clock = clock

    async def open(self, factory_id: str, kid: str, hello: Hello, *, now: datetime | None = None) -> AgentSession:
        """A new session for ``factory_id``'s agent (signed with key ``kid``), live for the session TTL. It
        holds no lease yet: its first heartbeat competes for it."""
        now = now or self._clock()
        row = AgentSession(
            id=secrets.token_urlsafe(24),
            factory_id=factory_id,
            kid=kid,
            agent_version=hello.agent_version,
            adapter=hello.adapter,
            slurm_release=hello.slurm_release,
            features=list(hello.features),
            opened_at=now,
            last_seen_at=now,
            expires_at=now + timedelta(seconds=self._timings.session_ttl_s),
            paused=False,
            clock_offset_s=(now - hello.agent_time).total_seconds(),
        )
        async with self._db.write() as session:
            await session.execute(
                delete(AgentSession).where(
                    AgentSession.factory_id == factory_id, AgentSession.expires_at < now - FORGET_AFTER
                )
            )
            session.add(row)
        return row

    async def heartbeat(
        self, factory_id: str, session_id: str, beat: Heartbeat, *, now: datetime | None = None
    ) -> HeartbeatAnswer:
        """Renew the session and compete for the lease (see the module's rules)."""
        now = now or self._clock()
        async with self._db.write() as session:
            await live_session(session, factory_id, session_id, now)
            renewed = await session.scalar(
                update(AgentSession)
                .where(AgentSession.id == session_id, AgentSession.expires_at > now)
                .values(
                    last_seen_at=now,
                    expires_at=now + timedelta(seconds=self._timings.session_ttl_s),
                    paused=beat.paused,
                    clock_offset_s=(now - beat.agent_time).total_seconds(),
                )
                .returning(AgentSession.id),
                execution_options=_NO_UPDATE_SYNC,
            )
            if renewed is None:  # expired between the read and the update
                raise SessionExpired(f"session {session_id!r} expired: open a new session")
            if beat.paused or beat.leaving:
                await self._give_up(session, factory_id, session_id, now)
                return HeartbeatAnswer(broker_time=now, holder=False)
            lease = await self._compete(session, factory_id, session_id, now)
        if lease is not None and lease.held_by(session_id, now):
            return HeartbeatAnswer(broker_time=now, holder=True, epoch=lease.epoch, lease_expires_at=lease.expires_at)
        return HeartbeatAnswer(broker_time=now, holder=False)

    async def _compete(
        self, session: AsyncSession, factory_id: str, session_id: str, now: datetime
    ) -> LeaseView | None:
        """Take, renew or leave the lease; the lease as it stands afterwards."""
        until = now + timedelta(seconds=self._timings.lease_s)
        lease = await read_lease(session, factory_id)
        if lease is None:
            inserted = await session.scalar(
                insert_ignoring_conflict(
                    session, AgentLease, factory_id=factory_id, session_id=session_id, epoch=1, expires_at=until
                ).returning(AgentLease.epoch)
            )
            if inserted is not None:
                return LeaseView(session_id, 1, until)
            return await read_lease(session, factory_id)  # another session took it first
        if lease.held_by(session_id, now):
            condition = AgentLease.session_id == session_id
            values: dict[str, object] = {"expires_at": until}
            epoch = lease.epoch
        elif lease.expires_at <= now:
            condition = AgentLease.session_id == lease.session_id
            values = {"session_id": session_id, "epoch": lease.epoch + 1, "expires_at": until}
            epoch = lease.epoch + 1
        else:
            return lease  # another live session holds it
        won = await session.scalar(
            update(AgentLease)
            .where(AgentLease.factory_id == factory_id, AgentLease.epoch == lease.epoch, condition)
            .values(**values)
            .returning(AgentLease.epoch),
            execution_options=_NO_UPDATE_SYNC,
        )
        if won is not None:
            return LeaseView(session_id, epoch, until)
        return await read_lease(session, factory_id)

    async def _give_up(self, session: AsyncSession, factory_id: str, session_id: str, now: datetime) -> None:
        await session.execute(
            update(AgentLease)
            .where(
                AgentLease.factory_id == factory_id,
                AgentLease.session_id == session_id,
                AgentLease.expires_at > now,
            )
            .values(expires_at=now),
            execution_options=_NO_UPDATE_SYNC,
        )

    async def connections(self, *, now: datetime | None = None) -> dict[str, list[Connection]]:
        """Every Factory's live sessions (oldest first), with which one holds the lease."""
        now = now or self._clock()
        async with self._db.read() as session:
            rows = (
                await session.scalars(
                    select(AgentSession)
                    .where(AgentSession.expires_at > now)
                    .order_by(AgentSession.factory_id, AgentSession.opened_at, AgentSession.id)
                )
            ).all()
            leases = {
                lease.factory_id: LeaseView(lease.session_id, lease.epoch, lease.expires_at)
                for lease in (await session.scalars(select(AgentLease))).all()
            }
        result: dict[str, list[Connection]] = {}
        for row in rows:
            lease = leases.get(row.factory_id)
            holder = lease is not None and lease.held_by(row.id, now)
            result.setdefault(row.factory_id, []).append(
                Connection(
                    factory_id=row.factory_id,
                    session_id=row.id,
                    agent_version=row.agent_version,
                    adapter=row.adapter,
                    slurm_release=row.slurm_release,
                    opened_at=row.opened_at,
                    last_heartbeat_at=row.last_seen_at,
                    clock_offset_s=row.clock_offset_s,
                    paused=row.paused,
                    holder=holder,
                    epoch=lease.epoch if holder and lease is not None else None,
                )
            )
        return result


__all__ = [
    "Connection",
    "LeaseView",
    "Presence",
    "SessionRepository",
    "agent_features",
    "live_session",
    "presences",
    "read_lease",
]
