"""Antenna assertions: the signed statement an Antenna gateway attaches to every request it forwards.

An Antenna authenticates its national users itself; the broker never sees their credentials. Instead each
forwarded request carries ``Authorization: Antenna <JWS>``, a short-lived JWT the Antenna signed with a key
whose public half an admin registered (a JWKS uploaded through the admin API; the broker fetches nothing).
This module is both halves of that contract, so the gateway and the broker cannot drift:

* header: ``typ`` = :data:`TYP` (a Conveyor Antenna assertion, never an ID or access token), ``kid`` of a
  registered key, and ``alg`` = the algorithm registered with that key (asymmetric only);
* ``iss`` = the Antenna = ``act.sub`` (RFC 8693 actor: who acts), ``sub`` = the national user (on whose
  behalf; a :data:`NationalSubject`, the one grammar the gateway and the broker share), ``aud`` = this
  broker, ``exp`` at most :data:`MAX_LIFETIME_S` ahead, a ``jti`` (accepted once, which the caller checks in
  the database); ``exp``, ``nbf`` and ``iat`` are JSON numbers, and ``nbf`` and ``iat`` are not ahead of the
  broker's clock by more than :data:`LEEWAY_S`;
* ``htm``, ``htu`` and ``bh`` bind it to one request: method, path with query, and the SHA-256 of the body
  (base64url), so a captured assertion cannot be replayed against another request (after DPoP, RFC 9449).

Every refusal is an :class:`InvalidAssertion` with a stable :class:`Reason` code (the HTTP layer answers 401).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import math
import re
import secrets
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import jwt
from pydantic import AfterValidator, StringConstraints

from broker.identity.oidc import ASYMMETRIC_ALGORITHMS, InvalidToken, map_pyjwt_error, verifier_for, verifies_signatures
from conveyor.models import MAX_JWKS_KEYS

TYP = "conveyor-antenna+jwt"
SCHEME = "Antenna"  # Authorization: Antenna <assertion>
MAX_LIFETIME_S = 300  # exp at most this far ahead of the broker's clock
DEFAULT_LIFETIME_S = 60  # what the gateway asks for: enough for a slow request, short for a stolen one
LEEWAY_S = 30  # clock skew tolerated between an Antenna and the broker
MAX_ASSERTION_CHARS = 16_384
MAX_CLAIM_CHARS = 255
MAX_KEYS = MAX_JWKS_KEYS


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


class Reason(enum.StrEnum):
    """Why an assertion was refused (stable codes: logs, the audit, ``unauthorized.<reason>`` problems)."""

    MALFORMED = "malformed"
    BAD_TYPE = "bad_type"
    BAD_ALGORITHM = "bad_algorithm"
    UNKNOWN_ANTENNA = "unknown_antenna"
    UNKNOWN_KEY = "unknown_key"
    BAD_KEY = "bad_key"
    BAD_SIGNATURE = "bad_signature"
    BAD_AUDIENCE = "bad_audience"
    BAD_ACTOR = "bad_actor"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    TOO_LONG_LIVED = "too_long_lived"
    MISSING_CLAIM = "missing_claim"
    BAD_CLAIM = "bad_claim"
    WRONG_REQUEST = "wrong_request"
    REPLAYED = "replayed"


class InvalidAssertion(Exception):
    """The assertion is refused; ``detail`` is for logs and the problem body (it never echoes a signature)."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def body_hash(body: bytes) -> str:
    """The ``bh`` claim: base64url SHA-256 of the exact body bytes, without padding."""
    return base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class BoundRequest:
    """The request an assertion is bound to, as the broker receives it: ``target`` is path plus query."""

    method: str
    target: str
    body: bytes = b""

    def claims(self) -> dict[str, str]:
        return {"htm": self.method.upper(), "htu": self.target, "bh": body_hash(self.body)}


@dataclass(frozen=True, slots=True)
class RegisteredKey:
    """One public key of an Antenna, with the one algorithm it is registered for."""

    kid: str
    alg: str
    verifier: jwt.PyJWK


def parse_jwks(document: Any) -> dict[str, RegisteredKey]:
    """The registered keys of an uploaded JWKS, or ValueError saying what is wrong with it.

    Every key must name its ``kid`` and its ``alg`` (asymmetric), be a public signing key, and be usable for
    that algorithm: an upload is refused as a whole rather than registered in part.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list) or not document["keys"]:
        raise ValueError("not a JWK Set: an object with a non-empty 'keys' list")
    if len(document["keys"]) > MAX_KEYS:
        raise ValueError(f"at most {MAX_KEYS} keys")
    keys: dict[str, RegisteredKey] = {}
    for index, jwk in enumerate(document["keys"]):
        where = f"keys[{index}]"
        if not isinstance(jwk, dict):
            raise ValueError(f"{where} is not an object")
        kid, alg = jwk.get("kid"), jwk.get("alg")
        if not isinstance(kid, str) or not 0 < len(kid) <= MAX_CLAIM_CHARS:
            raise ValueError(f"{where} needs a kid (1 to {MAX_CLAIM_CHARS} characters)")
        if kid in keys:
            raise ValueError(f"{where}: kid {kid!r} appears twice")
        if alg not in ASYMMETRIC_ALGORITHMS:
            raise ValueError(f"{where} needs an asymmetric alg, one of {sorted(ASYMMETRIC_ALGORITHMS)}")
        if not verifies_signatures(jwk, "antenna upload"):
            raise ValueError(f"{where} is not a public signing key (private or secret material, or not for 'sig')")
        verifier = verifier_for(jwk, alg, "antenna upload")
        if verifier is None:
            raise ValueError(f"{where} cannot verify {alg} (another key type, or an RSA key under 2048 bits)")
        keys[kid] = RegisteredKey(kid=kid, alg=alg, verifier=verifier)
    return keys


def unverified_antenna(assertion: str) -> str:
    """The ``iss`` of an assertion, read without verifying it, only to find whose keys verify it."""
    if not assertion or len(assertion) > MAX_ASSERTION_CHARS or assertion.count(".") != 2:
        raise InvalidAssertion(Reason.MALFORMED, "not a JWS compact serialization of a sane size")
    try:
        header = jwt.get_unverified_header(assertion)
        payload = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise InvalidAssertion(Reason.MALFORMED, f"unreadable: {exc}") from None
    if header.get("typ") != TYP:
        raise InvalidAssertion(Reason.BAD_TYPE, f"typ must be {TYP!r}")
    issuer = payload.get("iss")
    if not isinstance(issuer, str) or not issuer:
        raise InvalidAssertion(Reason.MISSING_CLAIM, "iss (the Antenna) is required")
    return issuer


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
    now = time.time() if now is None else now
    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.PyJWTError as exc:
        raise InvalidAssertion(Reason.MALFORMED, f"unreadable header: {exc}") from None
    if header.get("typ") != TYP:
        raise InvalidAssertion(Reason.BAD_TYPE, f"typ must be {TYP!r}")
    alg, kid = header.get("alg"), header.get("kid")
    if not isinstance(alg, str) or alg not in ASYMMETRIC_ALGORITHMS:
        raise InvalidAssertion(Reason.BAD_ALGORITHM, "only asymmetric algorithms are accepted (never none or HS*)")
    if not isinstance(kid, str) or kid not in keys:
        raise InvalidAssertion(Reason.UNKNOWN_KEY, f"Antenna {antenna} has no registered key with that kid")
    key = keys[kid]
    if alg != key.alg:
        raise InvalidAssertion(Reason.BAD_ALGORITHM, f"key {kid!r} is registered for {key.alg}, not {alg}")
    try:
        claims = jwt.decode(
            assertion,
            key=key.verifier,
            algorithms=[key.alg],  # the registered one, never the header's
            audience=audience,
            issuer=antenna,
            leeway=LEEWAY_S,
            # The time claims are checked by _times on the broker's clock, types first (PyJWT takes "123" and
            # true for numbers).
            options={
                "require": ["iss", "sub", "aud", "exp", "jti"],
                "verify_sub": False,
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except jwt.MissingRequiredClaimError as exc:
        raise InvalidAssertion(Reason.MISSING_CLAIM, str(exc)) from None
    except jwt.PyJWTError as exc:
        refused: InvalidToken = map_pyjwt_error(exc)
        reason = Reason.UNKNOWN_ANTENNA if refused.reason.value == "unknown_issuer" else Reason(refused.reason.value)
        raise InvalidAssertion(reason, refused.detail) from None
    return _checked(claims, antenna=antenna, request=request, now=now)


def _number(claims: Mapping[str, Any], name: str) -> int | float | None:
    """The time claim ``name`` (None when absent): a JSON number, never a string, a bool, NaN or an infinity."""
    if name not in claims:
        return None
    value = claims[name]
    finite = not isinstance(value, float) or math.isfinite(value)  # isfinite overflows on a huge int
    if isinstance(value, int | float) and not isinstance(value, bool) and finite:
        return value
    raise InvalidAssertion(Reason.BAD_CLAIM, f"{name} must be a JSON number (seconds since the epoch)")


def _times(claims: Mapping[str, Any], now: float) -> float:
    """``exp``: not passed and at most :data:`MAX_LIFETIME_S` ahead; ``nbf`` and ``iat`` (optional): not in
    the future; each within :data:`LEEWAY_S` of the broker's clock ``now``. Returns ``exp``."""
    exp, nbf, iat = (_number(claims, name) for name in ("exp", "nbf", "iat"))
    assert exp is not None  # required: PyJWT refused its absence
    if exp <= now - LEEWAY_S:
        raise InvalidAssertion(Reason.EXPIRED, "the assertion has expired")
    if exp > now + MAX_LIFETIME_S + LEEWAY_S:
        raise InvalidAssertion(Reason.TOO_LONG_LIVED, f"exp is more than {MAX_LIFETIME_S} s ahead of the broker")
    for name, value in (("nbf", nbf), ("iat", iat)):
        if value is not None and value > now + LEEWAY_S:
            raise InvalidAssertion(Reason.NOT_YET_VALID, f"{name} is more than {LEEWAY_S} s ahead of the broker")
    return float(exp)


def _checked(claims: dict[str, Any], *, antenna: str, request: BoundRequest, now: float) -> AssertionClaims:
    """The claims PyJWT does not check: times, actor, subject, jti and the request binding."""
    exp = _times(claims, now)
    actor = claims.get("act")
    if not isinstance(actor, dict) or actor.get("sub") != antenna:
        raise InvalidAssertion(Reason.BAD_ACTOR, "act.sub must name the Antenna that signed (iss)")
    subject, jti = claims["sub"], claims["jti"]
    if not isinstance(subject, str) or (error := subject_error(subject)) is not None:
        raise InvalidAssertion(Reason.BAD_CLAIM, f"sub is no national user's subject: {error or 'not a string'}")
    if not isinstance(jti, str) or not 0 < len(jti) <= MAX_CLAIM_CHARS:
        raise InvalidAssertion(Reason.BAD_CLAIM, f"jti must be a string of 1 to {MAX_CLAIM_CHARS} characters")
    for name, expected in request.claims().items():
        if claims.get(name) != expected:
            raise InvalidAssertion(Reason.WRONG_REQUEST, f"{name} does not match this request")
    return AssertionClaims(antenna=antenna, subject=subject, jti=jti, expires_at=exp)


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


def public_jwks(private_jwks: Mapping[str, Any]) -> dict[str, Any]:
    """The public half of a JWKS of private keys, as an admin uploads it (private members dropped, and the
    private key's ``key_ops`` ["sign"] with them: the public key only verifies)."""
    private = {"d", "p", "q", "dp", "dq", "qi", "oth", "k", "key_ops"}
    return {"keys": [{k: v for k, v in jwk.items() if k not in private} for jwk in private_jwks["keys"]]}


def canonical(document: Any) -> str:
    """A JWKS as stored: canonical JSON, so an unchanged upload compares equal."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"))
