"""Antenna assertions: the signed statement an Antenna gateway attaches to every request it forwards.

An Antenna authenticates its national users itself; the broker never sees their credentials. Instead each
forwarded request carries ``Authorization: Antenna <JWS>``, a short-lived JWT the Antenna signed with a key
whose public half an admin registered. This module is both halves of that contract, so the gateway and the
broker cannot drift; the rules every request-bound assertion follows (registered key and algorithm, audience,
times, a jti accepted once, the request binding) are :mod:`broker.identity.assertions`'. An Antenna's own:

* ``typ`` = :data:`TYP` (a Conveyor Antenna assertion, never an ID or access token), ``exp`` at most
  :data:`MAX_LIFETIME_S` ahead;
* ``iss`` = the Antenna = ``act.sub`` (RFC 8693 actor: who acts), ``sub`` = the national user (on whose
  behalf; a :data:`NationalSubject`, the one grammar the gateway and the broker share).

Every refusal is an :class:`InvalidAssertion` with a stable :class:`Reason` code (the HTTP layer answers 401).
"""

from __future__ import annotations

import re
import secrets
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import jwt
from pydantic import AfterValidator, StringConstraints

from broker.identity.assertions import (
    LEEWAY_S,
    MAX_ASSERTION_CHARS,
    MAX_CLAIM_CHARS,
    MAX_KEYS,
    BoundRequest,
    Expected,
    InvalidAssertion,
    Reason,
    RegisteredKey,
    body_hash,
    canonical,
    parse_jwks,
    public_jwks,
    unverified_issuer,
    verify_assertion,
)

TYP = "conveyor-antenna+jwt"
SCHEME = "Antenna"  # Authorization: Antenna <assertion>
MAX_LIFETIME_S = 300  # exp at most this far ahead of the broker's clock
DEFAULT_LIFETIME_S = 60  # what the gateway asks for: enough for a slow request, short for a stolen one


# Unicode categories no subject contains: controls, format characters (bidi overrides, zero-width, BOM),
# surrogates, private use, line and paragraph separators. A subject is a path segment of the broker's API
# (hence no "/") and a user's name in listings and audits, where such characters forge or hide text.
_NOT_IN_SUBJECTS = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})
# The same rule, as far as a pattern in the OpenAPI document can say it (the common cases of each category).
SUBJECT_PATTERN = r"^[^/\x00-\x1f\x7f-\x9f\u00ad\u061c\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]+$"
_SUBJECT = re.compile(SUBJECT_PATTERN)


def subject_error(subject: str) -> str | None:
    """Why ``subject`` is no national user's subject, or None: 1 to :data:`MAX_CLAIM_CHARS` characters, no
    ``/``, none of the categories in ``_NOT_IN_SUBJECTS``, each character one :data:`SUBJECT_PATTERN` takes."""
    if not 0 < len(subject) <= MAX_CLAIM_CHARS:
        return f"a subject has 1 to {MAX_CLAIM_CHARS} characters"
    for char in subject:
        if char == "/" or unicodedata.category(char) in _NOT_IN_SUBJECTS or not _SUBJECT.match(char):
            return f"a subject has no '/', control, format or separator character; this one has U+{ord(char):04X}"
    return None


def _valid_subject(subject: str) -> str:
    error = subject_error(subject)
    if error is not None:
        raise ValueError(error)
    return subject


# A national user's subject, as the gateway's users file and OIDC mapping, the broker's routes and
# :func:`verify` all take it.
NationalSubject = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_CLAIM_CHARS, pattern=SUBJECT_PATTERN),
    AfterValidator(_valid_subject),
]


def unverified_antenna(assertion: str) -> str:
    """The ``iss`` of an assertion, read without verifying it, only to find whose keys verify it."""
    return unverified_issuer(assertion, typ=TYP, what="the Antenna")


@dataclass(frozen=True, slots=True)
class AssertionClaims:
    """What a verified assertion says: ``antenna`` acts for its national user ``subject``."""

    antenna: str
    subject: str
    jti: str
    expires_at: float


def verify(
    assertion: str,
    keys: Mapping[str, RegisteredKey],
    *,
    antenna: str,
    audience: str,
    request: BoundRequest,
    now: float | None = None,
) -> AssertionClaims:
    """Check ``assertion`` from ``antenna`` against its registered ``keys`` and the request it came with.

    The jti is not checked here (that needs the database): the caller must accept each one once.
    """
    expected = Expected(typ=TYP, issuer=antenna, what=f"Antenna {antenna}", audience=audience,
                        max_lifetime_s=MAX_LIFETIME_S, unknown_issuer=Reason.UNKNOWN_ANTENNA)  # fmt: skip
    verified = verify_assertion(assertion, keys, expected, request, time.time() if now is None else now)
    claims = verified.claims
    actor = claims.get("act")
    if not isinstance(actor, dict) or actor.get("sub") != antenna:
        raise InvalidAssertion(Reason.BAD_ACTOR, "act.sub must name the Antenna that signed (iss)")
    subject = claims["sub"]
    if not isinstance(subject, str) or (error := subject_error(subject)) is not None:
        raise InvalidAssertion(Reason.BAD_CLAIM, f"sub is no national user's subject: {error or 'not a string'}")
    return AssertionClaims(antenna=antenna, subject=subject, jti=verified.jti, expires_at=verified.expires_at)


def sign(
    private_key: Any,
    *,
    kid: str,
    alg: str,
    antenna: str,
    subject: str,
    audience: str,
    request: BoundRequest,
    lifetime_s: int = DEFAULT_LIFETIME_S,
    now: float | None = None,
) -> str:
    """An assertion for one forwarded request (the gateway's half). ``private_key``: what PyJWT signs with."""
    now = time.time() if now is None else now
    payload = {
        "iss": antenna,
        "sub": subject,
        "aud": audience,
        "act": {"sub": antenna},
        "iat": int(now),
        "exp": int(now) + lifetime_s,
        "jti": secrets.token_urlsafe(16),
        **request.claims(),
    }
    return jwt.encode(payload, private_key, algorithm=alg, headers={"kid": kid, "typ": TYP})


__all__ = [
    "DEFAULT_LIFETIME_S", "LEEWAY_S", "MAX_ASSERTION_CHARS", "MAX_CLAIM_CHARS", "MAX_KEYS", "MAX_LIFETIME_S", "SCHEME",
    "SUBJECT_PATTERN", "TYP", "AssertionClaims", "BoundRequest", "InvalidAssertion", "NationalSubject", "Reason",
    "RegisteredKey", "body_hash", "canonical", "parse_jwks", "public_jwks", "sign", "subject_error",
    "unverified_antenna", "verify",
]  # fmt: skip
