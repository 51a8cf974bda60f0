"""Local authentication of national users: gateway tokens from the users file, and optionally OIDC tokens.

The users file holds SHA-256 digests, never tokens, so a leaked file grants nothing. A presented token is
compared with every digest with :func:`hmac.compare_digest` (as the broker's ``StaticTokens`` does), so neither
its content nor which entry matched shows in the timing. A token that is no gateway token and looks like a JWT
is verified by :class:`broker.identity.oidc.OidcVerifier` when issuers are configured.

Subjects are what the broker knows national users by (with this Antenna): a gateway token's ``sub`` as the
users file says, an OIDC user's as ``<issuer host>:<sub>``, so an identity provider's user can never pass for a
gateway-token user or for another provider's user (the settings refuse two issuers on one host, and gateway
subs that start with an issuer's host and a colon). Both must be ``NationalSubject`` values (no ``/``, no
control, format or separator character: the one grammar the broker checks too), which the Antenna's operator
registers at the broker.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from broker.antennas.assertion import NationalSubject
from broker.config_files import ConfigFileError, dotted, explain_all, read_document
from broker.identity.oidc import MAX_TOKEN_CHARS, InvalidToken, IssuerUnavailable, OidcVerifier

REALM = "conveyor-gateway"
_SUBJECT: TypeAdapter[str] = TypeAdapter(NationalSubject)


class TokenEntry(BaseModel):
    """One national user's gateway token, as its SHA-256 (hex) digest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$", description="hex SHA-256 of the token's UTF-8 bytes")
    sub: NationalSubject = Field(description="the national user's subject at the broker")


class UsersFile(BaseModel):
    """The users file: ``{"tokens": [{"sha256": ..., "sub": ...}, ...]}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tokens: tuple[TokenEntry, ...]


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def load_users(path: Path) -> tuple[TokenEntry, ...]:
    """The entries of a users file; every problem in it reported at once, as :class:`ConfigFileError`."""
    document = read_document(path)
    try:
        entries = UsersFile.model_validate(document).tokens
    except ValidationError as exc:
        raise ConfigFileError(str(path), [f"{dotted(loc)}: {msg}" for loc, msg in explain_all(exc)]) from None
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        if entry.sha256.lower() in seen:
            raise ConfigFileError(str(path), [f"tokens[{index}]: the same digest appears twice"])
        seen.add(entry.sha256.lower())
    return entries


class AuthenticationFailed(Exception):
    """The caller is not a national user of this Antenna (401); ``reason`` becomes ``unauthorized.<reason>``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    @property
    def challenge(self) -> str:
        """The WWW-Authenticate value (RFC 6750 section 3): no error member when no credential was sent."""
        if self.reason == "missing":
            return f'Bearer realm="{REALM}"'
        return f'Bearer realm="{REALM}", error="invalid_token", error_description="{self.message}"'


class IdentityProviderUnavailable(Exception):
    """An OIDC issuer's keys cannot be had now: not the caller's fault (503 with Retry-After)."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class NationalUsers:
    """Turns an ``Authorization`` header into the national user's subject, or raises why not."""

    def __init__(self, tokens: Iterable[TokenEntry], oidc: OidcVerifier | None = None) -> None:
        self._tokens = [(bytes.fromhex(entry.sha256), entry.sub) for entry in tokens]
        self._oidc = oidc

    async def authenticate(self, authorization: str | None) -> str:
        token = bearer_token(authorization)
        presented = digest(token)
        found: str | None = None
        for expected, subject in self._tokens:  # every entry, every time: constant time in the match
            if hmac.compare_digest(presented, expected):
                found = subject
        if found is not None:
            return found
        if self._oidc is not None and token.count(".") == 2:  # a JWS compact serialization
            return await self._oidc_subject(self._oidc, token)
        raise AuthenticationFailed("unknown", "the token is not valid")

    @staticmethod
    async def _oidc_subject(oidc: OidcVerifier, token: str) -> str:
        try:
            identity = await oidc.verify(token)
        except InvalidToken as exc:
            raise AuthenticationFailed(exc.reason.value, f"the token is not valid ({exc.reason.value})") from None
        except IssuerUnavailable as exc:
            raise IdentityProviderUnavailable(
                "the token's issuer cannot be checked now; retry later", max(1, math.ceil(exc.retry_after_s))
            ) from None
        subject = oidc_subject(identity.issuer, identity.subject)
        try:
            return _SUBJECT.validate_python(subject)
        except ValidationError:
            raise AuthenticationFailed("bad_claim", "the token's sub cannot name a national user") from None


def issuer_tag(issuer: str) -> str:
    """What an issuer's users' subjects start with: its host (the settings refuse two issuers on one host)."""
    return f"{(urlsplit(issuer).hostname or '').lower()}:"


def oidc_subject(issuer: str, subject: str) -> str:
    """An OIDC user's subject at the broker: apart from other issuers' users and from gateway-token users."""
    return issuer_tag(issuer) + subject


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header (the scheme is case-insensitive)."""
    if not authorization:
        raise AuthenticationFailed("missing", "an Authorization: Bearer token is required")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token or len(token) > MAX_TOKEN_CHARS:
        raise AuthenticationFailed("malformed", "expected Authorization: Bearer <token>")
    return token
