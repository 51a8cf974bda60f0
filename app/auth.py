"""Bearer-token authentication for now: one static development token (issue #4 brings real identities).

Tokens are compared as SHA-256 digests with :func:`hmac.compare_digest`, and every configured token is
compared on every request, so neither the token's content nor which token matched shows in the timing.
Outside dev mode the broker refuses to start with a static token (``Settings.refuse_unsafe``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Protocol

from broker.identity import DEV_PRINCIPAL, Principal
from broker.settings import Settings

REALM = "conveyor"


class Authenticator(Protocol):
    """Turns a presented bearer token into a principal, or None."""

    def authenticate(self, token: str) -> Principal | None: ...


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class StaticTokens:
    """A fixed table of tokens -> principals (dev mode only; tests may configure a second principal)."""

    def __init__(self, tokens: Mapping[str, Principal]) -> None:
        self._tokens = [(_digest(token), principal) for token, principal in tokens.items()]

    def authenticate(self, token: str) -> Principal | None:
        presented = _digest(token)
        found: Principal | None = None
        for digest, principal in self._tokens:
            if hmac.compare_digest(presented, digest):
                found = principal
        return found


def authenticator_from_settings(settings: Settings) -> Authenticator | None:
    """The dev token's authenticator in dev mode; None when no way to authenticate is configured."""
    if settings.dev_mode and settings.dev_token is not None:
        return StaticTokens({settings.dev_token.get_secret_value(): DEV_PRINCIPAL})
    return None


def challenge(error: str | None = None, description: str | None = None) -> str:
    """A WWW-Authenticate value (RFC 6750 section 3): no error member when no credential was sent at all."""
    parts = [f'realm="{REALM}"']
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append(f'error_description="{description}"')
    return "Bearer " + ", ".join(parts)
