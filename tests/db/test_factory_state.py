"""Drain, undrain and health of Factories: persisted (every replica agrees) and audited."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from broker.db.engine import Database, create_database
from broker.db.repositories import FactoryStateRepository
from broker.jobs.events import EventKind
from tests.db.helpers import at


async def test_a_drain_is_seen_by_another_replica_and_recorded_once(
    database_url: str, factory_states: FactoryStateRepository
) -> None:
    assert await factory_states.drain("alpha", reason="maintenance 2026-03-01", actor="admin:ops")
    assert not await factory_states.drain("alpha", reason="again", actor="admin:ops")

    replica = create_database(database_url)
    try:
        other = FactoryStateRepository(replica)
        assert await other.drained() == {"alpha"}
        state = await other.get("alpha")
        assert state is not None
        assert (state.drained, state.drained_reason) == (True, "maintenance 2026-03-01")
        assert await other.undrain("alpha", actor="admin:ops")
    finally:
        await replica.dispose()

    assert await factory_states.drained() == frozenset()
    assert not await factory_states.undrain("alpha", actor="admin:ops")
    events = await factory_states.events("alpha")
    assert [(e.kind, e.actor) for e in events] == [
        (EventKind.FACTORY_DRAINED, "admin:ops"),
        (EventKind.FACTORY_UNDRAINED, "admin:ops"),
    ]
    assert events[0].detail == {"reason": "maintenance 2026-03-01"}


async def test_health_checks_are_stored_and_only_changes_are_events(factory_states: FactoryStateRepository) -> None:
    assert await factory_states.record_health("bravo", healthy=True, detail=None, actor="health", now=at(1))
    assert not await factory_states.record_health("bravo", healthy=True, detail=None, actor="health", now=at(2))
    assert await factory_states.record_health(
        "bravo", healthy=False, detail="slurmctld: timeout", actor="health", now=at(3)
    )
    state = await factory_states.get("bravo")
    assert state is not None
    assert (state.healthy, state.health_detail, state.checked_at, state.drained) == (
        False,
        "slurmctld: timeout",
        at(3),
        False,
    )
    events = await factory_states.events("bravo")
    assert [e.detail["healthy"] for e in events] == [True, False]
    assert [f.factory_id for f in await factory_states.all()] == ["bravo"]


async def test_factory_events_are_append_only(db: Database, factory_states: FactoryStateRepository) -> None:
    await factory_states.drain("alpha", reason="x", actor="admin")
    with pytest.raises(DBAPIError, match="append-only"):
        async with db.write() as session:
            await session.execute(text("DELETE FROM factory_events"))
