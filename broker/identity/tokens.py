"""Personal access tokens: their format, and the digest that is all the broker keeps of them.

A token reads ``cvy_<prefix>_<secret>``. The prefix (10 base32 characters, 50 bits) is stored in clear and
indexed, so a presented token is found with one indexed read; the secret carries 256 random bits. Only the
SHA-256 of the whole token is stored: a fast digest is right here (unlike for passwords, the secret is
random and long, so there is nothing to brute-force), and it keeps the accept path cheap. Comparison is
constant-time. The token is shown once, when it is made.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import re
import secrets
from collections.abc import Collection, Iterable
from dataclasses import dataclass

TOKEN_PREFIX = "cvy_"  # noqa: S105 - the public marker of every personal token, not a secret
PREFIX_LENGTH = 10
_SECRET_BYTES = 32
_FORMAT = re.compile(rf"^{TOKEN_PREFIX}([a-z2-7]{{{PREFIX_LENGTH}}})_([A-Za-z0-9_-]{{43}})$")


class Scope(enum.StrEnum):
    """What a token may do. ``admin`` also needs an admin user: a scope never grants a role."""

    READ = "read"
    SUBMIT = "submit"
    ADMIN = "admin"


ALL_SCOPES = frozenset(Scope)


@dataclass(frozen=True, slots=True)
class MintedToken:
    """A new token: ``text`` goes to its owner once; ``prefix`` and ``digest`` go to the database."""

    text: str
    prefix: str
    digest: str


def mint() -> MintedToken:
    prefix = base64.b32encode(secrets.token_bytes(10)).decode().lower()[:PREFIX_LENGTH]
    secret = base64.urlsafe_b64encode(secrets.token_bytes(_SECRET_BYTES)).decode().rstrip("=")
    text = f"{TOKEN_PREFIX}{prefix}_{secret}"
    return MintedToken(text=text, prefix=prefix, digest=digest_of(text))


def digest_of(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def prefix_of(text: str) -> str | None:
    """The lookup prefix of a well-formed token; None for anything else (it is then no personal token)."""
    match = _FORMAT.match(text)
    return match.group(1) if match else None


def looks_like_token(text: str) -> bool:
    """Whether the caller meant a personal token (as opposed to an OIDC JWT): it starts like one."""
    return text.startswith(TOKEN_PREFIX)


def digest_matches(text: str, stored: str) -> bool:
    return hmac.compare_digest(digest_of(text).encode(), stored.encode())


def parse_scopes(values: Iterable[str]) -> frozenset[Scope]:
    """Known scopes only; an unknown one is an error, never silently dropped."""
    scopes: set[Scope] = set()
    for value in values:
        try:
            scopes.add(Scope(value))
        except ValueError:
            known = ", ".join(sorted(ALL_SCOPES))
            raise ValueError(f"unknown scope {value!r}; the scopes are: {known}") from None
    return frozenset(scopes)


def scope_names(scopes: Collection[Scope]) -> list[str]:
    return sorted(scope.value for scope in scopes)


__all__ = [
    "ALL_SCOPES",
    "TOKEN_PREFIX",
    "MintedToken",
    "Scope",
    "digest_matches",
    "digest_of",
    "looks_like_token",
    "mint",
    "parse_scopes",
    "prefix_of",
    "scope_names",
]
