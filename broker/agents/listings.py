"""The listings the Factories' agents push: Slurm's view of each agent Factory's active jobs, kept as the agent
sent it, and served to the reconciler in place of a listing order.

Rules every method keeps:

- A listing is applied only on top of what it builds on. A full snapshot (``seq`` 0) replaces the view; a
  delta (``snapshot``, n) applies only onto (``snapshot``, n - 1) pushed by the same session, else nothing is
  applied and the agent is told to send a full one. So the view is always one listing the agent took, never a
  mix with a gap in it.
- A job leaves the view only with a full snapshot that lacks it: absence is concluded from full listings only.
- A listing that began before the view's is ignored (listings of two sessions cannot go back in time).
- Any live session of the Factory may push (a listing is a fact); writers of one Factory serialize.
- The view is served only if its listing began after the caller asked (:meth:`ListingRepository.listed_after`),
  allowing for the Factory's clock skew: a job the broker recorded before asking is in it unless Slurm no longer
  listed it. No fresh view in time (no agent pushing, a gap): None, and the caller sends a listing order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from broker.agents.bell import Bell
from broker.agents.metrics import AgentMetrics
from broker.agents.orders import serialize_writers
from broker.agents.pushed import when_fresh
from broker.agents.sessions import live_session
from broker.db.engine import Database
from broker.db.models import AgentListedJob, AgentListing
from broker.db.types import utc_now
from broker.errors import Invalid, InvalidInput
from slurm_adapters.agent_protocol import Listing, ListingAnswer
from slurm_adapters.codec import ProtocolError, record_from_json, record_to_json
from slurm_adapters.records import JobRecord

MAX_JOB_ID = 2**53 - 1  # exact in every JSON parser, and within the column


@dataclass(frozen=True, slots=True)
class ListingHead:
    """What the view of a Factory stands on."""

    session_id: str
    snapshot: int
    seq: int
    version: int
    listed_at: datetime
    full_listed_at: datetime
    received_at: datetime


def _decoded(listing: Listing) -> list[tuple[int, dict[str, Any]]]:
    """Each listed job as (Slurm id, record as the codec reads it); :class:`InvalidInput`
    for a record that does not decode, an id out of range or listed twice."""
    problems: list[Invalid] = []
    jobs: dict[int, dict[str, Any]] = {}
    for index, data in enumerate(listing.jobs):
        loc: tuple[str | int, ...] = ("body", "jobs", index)
        try:
            record = record_from_json(data)
        except ProtocolError as exc:
            problems.append(Invalid(loc, str(exc)))
            continue
        if not 0 <= record.job_id <= MAX_JOB_ID:
            problems.append(Invalid(loc, f"Slurm job id {record.job_id} is out of range"))
        elif record.job_id in jobs:
            problems.append(Invalid(loc, f"Slurm job {record.job_id} is listed twice"))
        else:
            jobs[record.job_id] = record_to_json(record)  # as read: a key the codec does not read is not kept
        if len(problems) >= 10:
            break
    if problems:
        raise InvalidInput(problems)
    return list(jobs.items())


class ListingRepository:
    """Applying the agents' listings and serving the views. ``bell`` is rung after each applied listing."""

    def __init__(
        self,
        database: Database,
        bell: Bell,
        clock: Callable[[], datetime] = utc_now,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self._db = database
        self._bell = bell
        self._clock = clock
        self._metrics = metrics or AgentMetrics()

    async def apply(
        self, factory_id: str, session_id: str, listing: Listing, *, now: datetime | None = None
    ) -> ListingAnswer:
        """Apply ``listing`` to the Factory's view if it builds on it (see the module's rules)."""
        jobs = _decoded(listing)
        now = now or self._clock()
        async with self._db.write() as session:
            await live_session(session, factory_id, session_id, now)
            await serialize_writers(session, factory_id, "listing")
            row = await session.get(AgentListing, factory_id, populate_existing=True)
            answer = self._verdict(row, session_id, listing)
            if answer.applied:
                await _store(session, row, (factory_id, session_id), listing, jobs, now=now)
        self._metrics.listed(factory_id, full=listing.full, applied=answer.applied, jobs=len(jobs))
        if answer.applied:
            self._bell.ring_pushed(factory_id)
        return answer

    @staticmethod
    def _verdict(row: AgentListing | None, session_id: str, listing: Listing) -> ListingAnswer:
        if row is not None and listing.listed_at < row.listed_at:  # older than the view: ignored
            return ListingAnswer(applied=False, want_full=listing.snapshot != row.snapshot)
        if listing.full:
            return ListingAnswer(applied=True, want_full=False)
        builds_on_view = (
            row is not None
            and row.session_id == session_id
            and row.snapshot == listing.snapshot
            and row.seq == listing.seq - 1
        )
        return ListingAnswer(applied=builds_on_view, want_full=not builds_on_view)

    async def head(self, factory_id: str) -> ListingHead | None:
        """What the Factory's view stands on (None: no listing yet)."""
        async with self._db.read() as session:
            return await _head(session, factory_id)

    async def listed_after(
        self, factory_id: str, after: datetime, *, timeout_s: float, stale_s: float
    ) -> list[JobRecord] | None:
        """The Factory's view once it stands on a listing that began at ``after`` or later (``after`` already
        allows for the clock skew); None at once when no listing was received for ``stale_s`` (no agent is
        pushing), or when none comes within ``timeout_s``."""

        async def look(session: AsyncSession) -> tuple[bool, list[JobRecord] | None]:
            head = await _head(session, factory_id)
            if head is None or self._clock() - head.received_at > timedelta(seconds=stale_s):
                return True, None
            if head.listed_at < after:
                return False, None
            data = (
                await session.scalars(
                    select(AgentListedJob.record)
                    .where(AgentListedJob.factory_id == factory_id)
                    .order_by(AgentListedJob.slurm_job_id)
                )
            ).all()
            return True, [record_from_json(record) for record in data]

        return await when_fresh(self._bell, self._db, factory_id, look, timeout_s=timeout_s)


async def _store(
    session: AsyncSession,
    row: AgentListing | None,
    owner: tuple[str, str],
    listing: Listing,
    jobs: Sequence[tuple[int, dict[str, Any]]],
    *,
    now: datetime,
) -> None:
    """Write ``listing`` as the view of ``owner`` (Factory, session): its jobs, and the head it now stands on."""
    factory_id, session_id = owner
    if listing.full:
        await session.execute(delete(AgentListedJob).where(AgentListedJob.factory_id == factory_id))
    elif jobs:  # a delta replaces the records of the jobs it names, and removes none
        await session.execute(
            delete(AgentListedJob).where(
                AgentListedJob.factory_id == factory_id,
                AgentListedJob.slurm_job_id.in_([job_id for job_id, _ in jobs]),
            )
        )
    if jobs:
        await session.execute(
            insert(AgentListedJob),
            [{"factory_id": factory_id, "slurm_job_id": job_id, "record": data} for job_id, data in jobs],
        )
    if row is None:
        row = AgentListing(factory_id=factory_id, version=0, full_listed_at=listing.listed_at)
        session.add(row)
    row.session_id = session_id
    row.snapshot = listing.snapshot
    row.seq = listing.seq
    row.version += 1
    row.listed_at = listing.listed_at
    if listing.full:
        row.full_listed_at = listing.listed_at
    row.received_at = now


async def _head(session: AsyncSession, factory_id: str) -> ListingHead | None:
    row = (
        await session.execute(
            select(
                AgentListing.session_id,
                AgentListing.snapshot,
                AgentListing.seq,
                AgentListing.version,
                AgentListing.listed_at,
                AgentListing.full_listed_at,
                AgentListing.received_at,
            ).where(AgentListing.factory_id == factory_id)
        )
    ).one_or_none()
    return None if row is None else ListingHead(*row)


__all__ = ["ListingHead", "ListingRepository"]
