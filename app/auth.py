"""Bearer-token authentication: personal access tokens, OIDC JWTs, and in dev mode one static development token.

A token that looks like a personal one (``cvy_...``) is checked against the database
(:class:`broker.identity.service.IdentityService`); anything else is compared with the static tokens, as
SHA-256 digests with :func:`hmac.compare_digest`, every configured token on every request, so neither the
token's content nor which token matched shows in the timing. Outside dev mode the broker refuses to start
with a static token (``Settings.refuse_unsafe``).
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Mapping
from typing import Protocol

from broker.errors import IdentityProviderUnavailable
from broker.identity import DEV_PRINCIPAL, Principal
from broker.identity.oidc import InvalidToken, IssuerUnavailable, OidcVerifier
from broker.identity.service import AuthenticationFailed, IdentityService
from broker.identity.tokens import looks_like_token
from broker.settings import Settings

REALM = "conveyor"


class Authenticator(Protocol):
    """Turns a presented bearer token into a principal, or raises :class:`AuthenticationFailed`."""

    async def authenticate(self, token: str, *, source: str | None = None) -> Principal: ...


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class StaticTokens:
    """A fixed table of tokens -> principals (dev mode only; tests may configure a second principal)."""

    def __init__(self, tokens: Mapping[str, Principal]) -> None:
        self._tokens = [(_digest(token), principal) for token, principal in tokens.items()]

    async def authenticate(self, token: str, *, source: str | None = None) -> Principal:
        presented = _digest(token)
        found: Principal | None = None
        for digest, principal in self._tokens:
            if hmac.compare_digest(presented, digest):
                found = principal
        if found is None:
            raise AuthenticationFailed("unknown", "the token is not valid")
        return found


class Tokens:
    """Personal access tokens from the database; OIDC JWTs where issuers are configured; the static ones (dev
    mode) for anything else. Which kind a token is follows from its shape, so each is checked once."""

    def __init__(
        self, identities: IdentityService, static: StaticTokens | None = None, oidc: OidcVerifier | None = None
    ) -> None:
        self._identities = identities
        self._static = static
        self._oidc = oidc

    async def authenticate(self, token: str, *, source: str | None = None) -> Principal:
        if looks_like_token(token):
            return await self._identities.authenticate(token, source=source)
        if self._oidc is not None and token.count(".") == 2:  # a JWS compact serialization
            return await self._oidc_principal(self._oidc, token, source)
        if self._static is not None:
            return await self._static.authenticate(token, source=source)
        return await self._identities.authenticate(token, source=source)  # refused as malformed, and audited

    async def _oidc_principal(self, oidc: OidcVerifier, token: str, source: str | None) -> Principal:
        try:
            identity = await oidc.verify(token)
        except InvalidToken as exc:
            raise await self._identities.oidc_failed(exc.reason.value, source) from None
        except IssuerUnavailable as exc:
            raise IdentityProviderUnavailable(
                f"the token's issuer cannot be checked now: {exc}", max(1, math.ceil(exc.retry_after_s))
            ) from None
        return await self._identities.oidc_principal(identity)


def authenticator_from_settings(
    settings: Settings, identities: IdentityService, oidc: OidcVerifier | None = None
) -> Authenticator:
    """Personal tokens always (through ``identities``, the process's one identity service); OIDC when ``oidc``
    is given; the dev token as well in dev mode."""
    static = None
    if settings.dev_mode and settings.dev_token is not None:
        static = StaticTokens({settings.dev_token.get_secret_value(): DEV_PRINCIPAL})
    return Tokens(identities, static, oidc)


def oidc_verifier(settings: Settings) -> OidcVerifier | None:
    """One verifier per process for the configured issuers (None: OIDC is off); closed by the lifespan."""
    if not settings.oidc_issuers:
        return None
    verify: str | bool = str(settings.oidc_ca_file) if settings.oidc_ca_file else True
    return OidcVerifier(settings.oidc_issuers, verify=verify)


def challenge(error: str | None = None, description: str | None = None, *, scheme: str = "Bearer") -> str:
    """A WWW-Authenticate value (RFC 6750 section 3): no error member when no credential was sent at all."""
    parts = [f'realm="{REALM}"']
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append(f'error_description="{description}"')
    return f"{scheme} " + ", ".join(parts)
