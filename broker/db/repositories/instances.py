"""Broker instances and their heartbeats: who holds the dispatcher's claims, and whether it is still alive.

Rules every method keeps:

- An instance id belongs to one live process: :meth:`InstanceRepository.register` refuses it while the row's
  ``expires_at`` (its last heartbeat + the TTL) has not passed, and takes it over once it has.
- A claim (``jobs.lease_owner``) held by a process whose heartbeat lapsed is due again at once
  (``JobRepository.claim_queued`` reads ``expires_at``); a process that took over a lapsed id frees the
  claims of the process it replaces. Either way an attempt left open is settled by the dispatcher's rule
  (not before its start + call deadline + MessageTimeout + clock skew), never by the heartbeat.
- A heartbeat renews the leases of the claims whose Slurm call is in flight, in the same transaction.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Collection
from datetime import datetime, timedelta

from sqlalchemy import delete, update

from broker.db.engine import Database
from broker.db.models import BrokerInstance, Job
from broker.db.repositories import job_writes
from broker.db.repositories.sql import insert_ignoring_conflict
from broker.db.types import utc_now
from conveyor.spec import JobState

# Rows of instances dead for this long are dropped when another registers (their leases ended long ago).
FORGET_AFTER = timedelta(days=1)


class InstanceIdInUse(Exception):
    """The instance id is held by a process whose heartbeat has not lapsed."""

    def __init__(self, instance_id: str, holder: str, expires_at: datetime) -> None:
        super().__init__(
            f"broker instance id {instance_id!r} is held by a live process ({holder}, heartbeat valid until "
            f"{expires_at:%Y-%m-%d %H:%M:%S} UTC); refusing to run a second process under it"
        )
        self.instance_id = instance_id
        self.holder = holder
        self.expires_at = expires_at


class InstanceRepository:
    """Registration, heartbeats and retirement of broker processes."""

    def __init__(self, database: Database, clock: Callable[[], datetime] = utc_now) -> None:
        self._db = database
        self._clock = clock

    async def get(self, instance_id: str) -> BrokerInstance | None:
        async with self._db.read() as session:
            return await session.get(BrokerInstance, instance_id)

    async def register(self, instance_id: str, *, worker_id: str, ttl_s: float, now: datetime | None = None) -> None:
        """Take ``instance_id`` for this process (whose claims carry ``worker_id``), heartbeat valid ``ttl_s``.

        Raises :class:`InstanceIdInUse` while another process holds it with a live heartbeat. Taking over a
        lapsed id frees the claims that process held on queued jobs.
        """
        now = now or self._clock()
        values = {"worker_id": worker_id, "host": socket.gethostname(), "pid": os.getpid(), "started_at": now,
                  "heartbeat_at": now, "expires_at": now + timedelta(seconds=ttl_s)}  # fmt: skip
        async with self._db.write() as session:
            await session.execute(delete(BrokerInstance).where(BrokerInstance.expires_at < now - FORGET_AFTER))
            current = await session.get(BrokerInstance, instance_id, populate_existing=True)
            if current is None:
                inserted = await session.scalar(
                    insert_ignoring_conflict(session, BrokerInstance, id=instance_id, **values).returning(
                        BrokerInstance.id
                    )
                )
                if inserted is None:  # registered by another process meanwhile
                    raise InstanceIdInUse(instance_id, "a process registering at the same moment", now)
                return
            if current.expires_at > now:
                raise InstanceIdInUse(instance_id, f"{current.host} pid {current.pid}", current.expires_at)
            previous = current.worker_id
            taken = await session.scalar(
                update(BrokerInstance)
                .where(
                    BrokerInstance.id == instance_id,
                    BrokerInstance.worker_id == previous,
                    BrokerInstance.expires_at <= job_writes.utc_literal(now),
                )
                .values(**values)
                .returning(BrokerInstance.id),
                execution_options={"synchronize_session": False},
            )
            if taken is None:
                raise InstanceIdInUse(instance_id, "a process registering at the same moment", now)
            await session.execute(
                update(Job)
                .where(Job.lease_owner == previous, Job.state == JobState.QUEUED)
                .values(lease_owner=None, lease_until=None, updated_at=now),
                execution_options={"synchronize_session": False},
            )

    async def beat(
        self,
        worker_id: str,
        *,
        ttl_s: float,
        now: datetime | None = None,
        renew: Collection[str] = (),
        lease_s: float = 0.0,
    ) -> bool:
        """The process ``worker_id`` is alive for ``ttl_s`` more; the leases it holds on the queued jobs in
        ``renew`` (their Slurm calls are in flight) now end ``lease_s`` from now. False when the process no
        longer holds an instance row (another process took its id over): it renews nothing then."""
        now = now or self._clock()
        async with self._db.write() as session:
            alive = await session.scalar(
                update(BrokerInstance)
                .where(BrokerInstance.worker_id == worker_id)
                .values(heartbeat_at=now, expires_at=now + timedelta(seconds=ttl_s))
                .returning(BrokerInstance.id),
                execution_options={"synchronize_session": False},
            )
            if alive is None:
                return False
            if renew:
                await session.execute(
                    update(Job)
                    .where(Job.id.in_(list(renew)), Job.lease_owner == worker_id, Job.state == JobState.QUEUED)
                    .values(lease_until=now + timedelta(seconds=lease_s), updated_at=now),
                    execution_options={"synchronize_session": False},
                )
            return True

    async def retire(self, worker_id: str, *, now: datetime | None = None) -> None:
        """A clean stop: the heartbeat lapses now, so any claim left behind is due at once."""
        now = now or self._clock()
        async with self._db.write() as session:
            await session.execute(
                update(BrokerInstance)
                .where(BrokerInstance.worker_id == worker_id)
                .values(expires_at=now)
                .execution_options(synchronize_session=False)
            )


__all__ = ["InstanceIdInUse", "InstanceRepository"]
