"""How the health loop judges a Factory reached through its agent from what the sessions table says."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from broker.agents.sessions import Presence
from broker.factories.health import judge_agent

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def presence(*, live: int = 0, paused: int = 0, silent_s: float | None = 0.0, holder: bool = False) -> Presence:
    return Presence(
        factory_id="alpha",
        live_sessions=live,
        paused_sessions=paused,
        last_heartbeat_at=None if silent_s is None else NOW - timedelta(seconds=silent_s),
        epoch=3,
        features=frozenset({"spec.name"}) if holder else None,
    )


def test_an_agent_never_seen_is_unhealthy_at_once() -> None:
    for seen in (None, presence(silent_s=None)):
        verdict = judge_agent("alpha", seen, NOW, 60)
        assert (verdict.healthy, verdict.ask_site) == (False, False)
        assert verdict.detail == "no agent has connected to Factory alpha"


def test_the_lease_holder_is_asked_for_the_sites_health() -> None:
    verdict = judge_agent("alpha", presence(live=1, holder=True), NOW, 60)
    assert (verdict.healthy, verdict.ask_site) == (None, True)


def test_silence_longer_than_allowed_is_unhealthy_and_shorter_changes_nothing() -> None:
    silent = judge_agent("alpha", presence(silent_s=61), NOW, 60)
    assert (silent.healthy, silent.ask_site) == (False, False)
    assert "silent for 61 s" in silent.detail
    assert "longer than 60 s" in silent.detail
    brief = judge_agent("alpha", presence(silent_s=59), NOW, 60)
    assert (brief.healthy, brief.ask_site) == (None, False)


def test_an_agent_paused_at_the_site_is_unhealthy() -> None:
    verdict = judge_agent("alpha", presence(live=2, paused=2), NOW, 60)
    assert (verdict.healthy, verdict.detail) == (False, "the agent of Factory alpha is paused at the site")
    assert judge_agent("alpha", presence(live=2, paused=1), NOW, 60).healthy is None
