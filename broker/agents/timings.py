"""The agent link's timing rules, from the broker's settings."""

from __future__ import annotations

from dataclasses import dataclass

from broker.settings import Settings


@dataclass(frozen=True, slots=True)
class AgentTimings:
    """Seconds: a session lives ``session_ttl_s`` after its last heartbeat; a heartbeat keeps the lease
    ``lease_s``; agents beat every ``heartbeat_s`` and long-poll up to ``poll_wait_s``; one check per process
    every ``bell_interval_s`` sees other replicas' writes; reads wait ``read_timeout_s``; a report may still
    arrive ``report_grace_s`` after an order's not_after. Agents push their listing every ``listing_interval_s``
    (the reconciler's interval), a full one at least every ``listing_full_s``, and the site's state every
    ``site_interval_s`` (the health checks' interval)."""

    session_ttl_s: float = 30.0
    lease_s: float = 15.0
    heartbeat_s: float = 5.0
    poll_wait_s: float = 20.0
    bell_interval_s: float = 0.15
    read_timeout_s: float = 30.0
    report_grace_s: float = 5.0
    listing_interval_s: float = 5.0
    listing_full_s: float = 120.0
    site_interval_s: float = 15.0

    @classmethod
    def from_settings(cls, settings: Settings) -> AgentTimings:
        return cls(
            session_ttl_s=settings.agent_session_ttl_s,
            lease_s=settings.agent_lease_s,
            heartbeat_s=settings.agent_heartbeat_s,
            poll_wait_s=settings.agent_poll_wait_s,
            bell_interval_s=settings.agent_bell_interval_s,
            read_timeout_s=settings.agent_read_timeout_s,
            report_grace_s=settings.agent_report_grace_s,
            listing_interval_s=settings.reconciler_interval_s,
            listing_full_s=settings.agent_listing_full_s,
            site_interval_s=settings.health_interval_s,
        )


__all__ = ["AgentTimings"]
