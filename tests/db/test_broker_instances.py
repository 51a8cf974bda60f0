"""Broker instances and their heartbeats, on SQLite and PostgreSQL, with a hand-moved clock (``at``).

A claim held by an instance whose heartbeat lapsed is due again at once, not when its lease ends; a claim of a
live instance whose Slurm call is in flight is renewed; an instance id is refused while a live process holds
it, and taken over once its heartbeat lapsed (its old claims with it).
"""

from __future__ import annotations

import pytest

from broker.db.engine import Database
from broker.db.repositories import JobRepository
from tests.db.helpers import at, new_job

TTL_S = 15.0  # an instance is dead once its last heartbeat is this old
LEASE_S = 120.0


async def _queued(jobs: JobRepository) -> str:
    return (await jobs.insert_job_with_event(new_job(), actor="test", now=at(0))).id


async def test_defect_15_a_dead_instances_claim_is_taken_over_once_its_heartbeat_lapses(
    db: Database, jobs: JobRepository
) -> None:
    from broker.db.repositories.instances import InstanceRepository

    instances = InstanceRepository(db)
    await instances.register("a", worker_id="a", ttl_s=TTL_S, now=at(0))
    await instances.register("b", worker_id="b", ttl_s=TTL_S, now=at(0))
    job_id = await _queued(jobs)
    [claimed] = await jobs.claim_queued("a", 10, LEASE_S, now=at(1))
    assert claimed.id == job_id
    # a is alive (it beat at 10 s): its claim holds, whatever b's clock says.
    assert await instances.beat("a", ttl_s=TTL_S, now=at(10))
    assert await jobs.claim_queued("b", 10, LEASE_S, now=at(24)) == []
    # a died after that beat: 15 s later its claim is b's, long before the 120 s lease would end.
    [taken] = await jobs.claim_queued("b", 10, LEASE_S, now=at(25))
    assert (taken.id, taken.lease_owner) == (job_id, "b")


async def test_defect_15_a_lease_is_renewed_while_its_holders_call_is_in_flight(
    db: Database, jobs: JobRepository
) -> None:
    from broker.db.repositories.instances import InstanceRepository

    instances = InstanceRepository(db)
    await instances.register("a", worker_id="a", ttl_s=TTL_S, now=at(0))
    in_flight, idle = await _queued(jobs), await _queued(jobs)
    assert len(await jobs.claim_queued("a", 10, 30, now=at(1))) == 2
    # a's Slurm call for one job outlasts the 30 s lease; a's heartbeat renews that lease, and only that one.
    assert await instances.beat("a", ttl_s=TTL_S, now=at(25), renew=[in_flight], lease_s=30)
    [due] = await jobs.claim_queued("b", 10, 30, now=at(35))  # a beat 10 s ago: alive
    assert due.id == idle
    job = await jobs.get(in_flight)
    assert job is not None
    assert (job.lease_owner, job.lease_until) == ("a", at(55))


async def test_defect_15_an_instance_id_is_refused_while_a_live_process_holds_it(
    db: Database, jobs: JobRepository
) -> None:
    from broker.db.repositories.instances import InstanceIdInUse, InstanceRepository

    instances = InstanceRepository(db)
    await instances.register("broker-1", worker_id="broker-1#first", ttl_s=TTL_S, now=at(0))
    job_id = await _queued(jobs)
    assert len(await jobs.claim_queued("broker-1#first", 10, LEASE_S, now=at(1))) == 1
    with pytest.raises(InstanceIdInUse):
        await instances.register("broker-1", worker_id="broker-1#second", ttl_s=TTL_S, now=at(14))
    # The first process stopped beating at 0 s: at 15 s the id is free, and its claims go with it.
    await instances.register("broker-1", worker_id="broker-1#second", ttl_s=TTL_S, now=at(15))
    assert not await instances.beat("broker-1#first", ttl_s=TTL_S, now=at(16))  # it is not that process's any more
    [again] = await jobs.claim_queued("broker-1#second", 10, LEASE_S, now=at(16))
    assert (again.id, again.lease_owner) == (job_id, "broker-1#second")
