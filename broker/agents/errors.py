"""What the agent link refuses, as typed errors the HTTP routes map to answers."""

from __future__ import annotations

from broker.errors import BrokerError


class AgentLinkError(BrokerError):
    """Base of the link's refusals; ``message`` is safe to show to the agent."""


class UnknownFactory(AgentLinkError):
    """The Factory is not in the registry (404)."""


class UnknownSession(AgentLinkError):
    """No such session, or one of another Factory (404: another Factory's sessions are not told apart from
    missing ones). The agent opens a new session."""


class SessionExpired(AgentLinkError):
    """The session's last heartbeat is older than its TTL: it is over for good (409). The agent opens a new
    session; orders bound to the old one are never delivered to it again."""


class NoAgent(AgentLinkError):
    """The Factory has no connected agent to take the order (no live lease holder, or for a read no live
    session); nothing was written."""


__all__ = ["AgentLinkError", "NoAgent", "SessionExpired", "UnknownFactory", "UnknownSession"]
