"""A Factory agent's sessions and the fenced lease, on SQLite and PostgreSQL, with a hand-moved clock (``at``).

The lease is taken only when free or expired, by compare-and-set, every take-over raising the epoch by one; a
live holder keeps it (same epoch); a paused session gives it up; an expired, unknown or another Factory's
session is refused; two sessions racing for it: exactly one wins.
"""

from __future__ import annotations

import asyncio

import pytest

from broker.agents.errors import SessionExpired, UnknownSession
from broker.agents.sessions import SessionRepository
from broker.agents.timings import AgentTimings
from broker.db.engine import Database
from slurm_adapters.agent_protocol import Heartbeat
from tests.db.agent_helpers import beat, hello
from tests.db.helpers import at

TIMINGS = AgentTimings(session_ttl_s=30, lease_s=15, heartbeat_s=5)


@pytest.fixture
def sessions(db: Database) -> SessionRepository:
    return SessionRepository(db, TIMINGS)


async def _open(sessions: SessionRepository, factory_id: str = "alpha", t: float = 0) -> str:
    return (await sessions.open(factory_id, "key-1", hello(at(t)), now=at(t))).id


async def test_the_first_heartbeat_takes_the_lease_at_epoch_1_and_renews_it_at_the_same_epoch(
    sessions: SessionRepository,
) -> None:
    a, b = await _open(sessions), await _open(sessions)
    first = await sessions.heartbeat("alpha", a, beat(), now=at(1))
    assert (first.holder, first.epoch, first.lease_expires_at) == (True, 1, at(16))
    # b is a standby while a's lease is live, however often it beats.
    for t in (2, 10, 15.9):
        assert not (await sessions.heartbeat("alpha", b, beat(), now=at(t))).holder
    renewed = await sessions.heartbeat("alpha", a, beat(), now=at(14))
    assert (renewed.holder, renewed.epoch, renewed.lease_expires_at) == (True, 1, at(29))
    assert not (await sessions.heartbeat("alpha", b, beat(), now=at(28.9))).holder


async def test_a_lapsed_lease_is_taken_over_at_the_next_epoch_and_the_old_holder_is_fenced(
    sessions: SessionRepository,
) -> None:
    a, b = await _open(sessions), await _open(sessions)
    assert (await sessions.heartbeat("alpha", a, beat(), now=at(1))).epoch == 1
    # a's lease ends at 16 s (its session lives on until 31 s): exactly then, b takes it at epoch 2.
    assert not (await sessions.heartbeat("alpha", b, beat(), now=at(15.999))).holder
    taken = await sessions.heartbeat("alpha", b, beat(), now=at(16))
    assert (taken.holder, taken.epoch) == (True, 2)
    back = await sessions.heartbeat("alpha", a, beat(), now=at(17))  # a's session is live, its lease is not
    assert (back.holder, back.epoch) == (False, None)
    # b lapses too; a takes over again: epoch 3, never a reused one.
    again = await sessions.heartbeat("alpha", a, beat(), now=at(31))  # b took it at 16 s for 15 s
    assert (again.holder, again.epoch) == (True, 3)


async def test_a_holder_that_lets_its_own_lease_lapse_takes_it_back_at_a_new_epoch(
    sessions: SessionRepository,
) -> None:
    a = await _open(sessions)
    assert (await sessions.heartbeat("alpha", a, beat(), now=at(1))).epoch == 1
    late = await sessions.heartbeat("alpha", a, beat(), now=at(20))  # lease ended at 16 s
    assert (late.holder, late.epoch) == (True, 2)


async def test_a_paused_session_gives_the_lease_up_and_takes_none(sessions: SessionRepository) -> None:
    a, b = await _open(sessions), await _open(sessions)
    assert (await sessions.heartbeat("alpha", a, beat(), now=at(1))).holder
    assert not (await sessions.heartbeat("alpha", a, beat(paused=True), now=at(2))).holder
    taken = await sessions.heartbeat("alpha", b, beat(), now=at(3))  # no need to wait for 16 s
    assert (taken.holder, taken.epoch) == (True, 2)
    # b pauses and lets go; a, still paused, takes nothing although the lease is free.
    await sessions.heartbeat("alpha", b, beat(paused=True), now=at(4))
    assert not (await sessions.heartbeat("alpha", a, beat(paused=True), now=at(5))).holder
    resumed = await sessions.heartbeat("alpha", a, beat(), now=at(6))
    assert (resumed.holder, resumed.epoch) == (True, 3)


async def test_a_leaving_session_hands_the_lease_over_at_once_and_stays_live(sessions: SessionRepository) -> None:
    a, b = await _open(sessions), await _open(sessions)
    assert (await sessions.heartbeat("alpha", a, beat(), now=at(1))).holder
    assert not (await sessions.heartbeat("alpha", b, beat(), now=at(2))).holder  # a standby
    leaving = await sessions.heartbeat("alpha", a, Heartbeat(agent_time=at(3), leaving=True), now=at(3))
    assert not leaving.holder
    taken = await sessions.heartbeat("alpha", b, beat(), now=at(4))  # long before a's lease would lapse (16 s)
    assert (taken.holder, taken.epoch) == (True, 2)
    # a drains: its beats keep it live (for its reports) and never take the lease back, even when it is free.
    await sessions.heartbeat("alpha", b, beat(paused=True), now=at(5))
    for t in (20, 45):  # each beat renews the session (30 s TTL): live at 45 s only thanks to the one at 20 s
        assert not (await sessions.heartbeat("alpha", a, Heartbeat(agent_time=at(t), leaving=True), now=at(t))).holder


async def test_expired_unknown_and_other_factories_sessions_are_refused(sessions: SessionRepository) -> None:
    a = await _open(sessions)
    await sessions.heartbeat("alpha", a, beat(), now=at(20))  # alive until 50 s
    with pytest.raises(SessionExpired):
        await sessions.heartbeat("alpha", a, beat(), now=at(50))
    with pytest.raises(UnknownSession):
        await sessions.heartbeat("alpha", "no-such-session", beat(), now=at(1))
    b = await _open(sessions, "alpha", t=40)
    with pytest.raises(UnknownSession):  # bravo's agent cannot beat (or take a lease) for alpha's session
        await sessions.heartbeat("bravo", b, beat(), now=at(41))
    assert (await sessions.heartbeat("alpha", b, beat(), now=at(41))).holder  # nothing was taken for bravo


async def test_heartbeats_record_the_clock_offset_and_connections_show_the_live_sessions(
    sessions: SessionRepository,
) -> None:
    a, b = await _open(sessions), await _open(sessions)
    await _open(sessions, "bravo")
    await sessions.heartbeat("alpha", a, beat(at(0.5)), now=at(2))  # the agent's clock is 1.5 s behind
    await sessions.heartbeat("alpha", b, beat(at(2)), now=at(2))
    shown = await sessions.connections(now=at(3))
    assert sorted(shown) == ["alpha", "bravo"]
    by_id = {connection.session_id: connection for connection in shown["alpha"]}
    assert (by_id[a].holder, by_id[a].epoch, by_id[a].clock_offset_s) == (True, 1, 1.5)
    assert (by_id[b].holder, by_id[b].epoch, by_id[b].last_heartbeat_at) == (False, None, at(2))
    assert by_id[a].agent_version == "1.0.0"
    assert by_id[a].slurm_release == "24.11.1"
    # bravo's session never beat: gone after its TTL; alpha's sessions live on.
    later = await sessions.connections(now=at(31))
    assert sorted(later) == ["alpha"]


@pytest.mark.parametrize("racers", [2, 5])
async def test_sessions_racing_for_a_lapsed_lease_one_wins_each_time(sessions: SessionRepository, racers: int) -> None:
    ids = [await _open(sessions) for _ in range(racers)]
    t = 1.0
    for round_number in range(1, 16):
        # Every round: the lease has lapsed, every session beats at the same instant.
        answers = await asyncio.gather(*(sessions.heartbeat("alpha", s, beat(), now=at(t)) for s in ids))
        winners = [answer for answer in answers if answer.holder]
        assert len(winners) == 1, f"round {round_number}: {len(winners)} holders"
        assert winners[0].epoch == round_number
        t += 15.0  # the winner's lease ends then; every beat kept every session alive (30 s)
