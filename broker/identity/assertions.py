"""Request-bound signed assertions: what an Antenna gateway and a Factory agent attach to every request.

A caller that is not a person (an Antenna, a Factory's agent) signs each request with a short-lived JWT whose
public key an admin or operator registered (a JWKS uploaded through the API; the broker fetches nothing). Both
kinds share this core, each with its own ``typ`` and its own rules for ``sub``:

* header: ``typ`` of the kind, ``kid`` of a registered key, ``alg`` = the algorithm registered with that key
  (asymmetric only; never ``none``, never HS*);
* ``iss`` = the registered caller, ``aud`` = this broker, ``exp`` at most the kind's lifetime ahead, a ``jti``
  (accepted once: the caller checks it in the database); ``exp``, ``nbf`` and ``iat`` are JSON numbers, and
  ``nbf`` and ``iat`` are not ahead of the broker's clock by more than :data:`LEEWAY_S`;
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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt

from broker.errors import Invalid, InvalidInput
from broker.identity.oidc import InvalidToken, map_pyjwt_error, verifier_for, verifies_signatures
from conveyor.models import MAX_JWKS_KEYS
from slurm_adapters.jwk import ASYMMETRIC_ALGORITHMS

LEEWAY_S = 30  # clock skew tolerated between a signer and the broker
MAX_ASSERTION_CHARS = 16_384
MAX_CLAIM_CHARS = 255
MAX_KEYS = MAX_JWKS_KEYS


class Reason(enum.StrEnum):
    """Why an assertion was refused (stable codes: logs, the audit, ``unauthorized.<reason>`` problems)."""

    MALFORMED = "malformed"
    BAD_TYPE = "bad_type"
    BAD_ALGORITHM = "bad_algorithm"
    UNKNOWN_ANTENNA = "unknown_antenna"
    UNKNOWN_FACTORY = "unknown_factory"  # iss names no Factory of this broker
    NOT_AN_AGENT_FACTORY = "not_an_agent_factory"  # iss names a Factory the broker reaches without an agent
    UNKNOWN_KEY = "unknown_key"
    BAD_KEY = "bad_key"
    BAD_SIGNATURE = "bad_signature"
    BAD_AUDIENCE = "bad_audience"
    BAD_ACTOR = "bad_actor"  # an Antenna's act.sub is not its iss
    BAD_SUBJECT = "bad_subject"  # an agent's sub is not its iss
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
    """One registered public key, with the one algorithm it is registered for."""

    kid: str
    alg: str
    verifier: jwt.PyJWK


def parse_jwks(document: Any, *, purpose: str = "upload") -> dict[str, RegisteredKey]:
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
        if not verifies_signatures(jwk, purpose):
            raise ValueError(f"{where} is not a public signing key (private or secret material, or not for 'sig')")
        verifier = verifier_for(jwk, alg, purpose)
        if verifier is None:
            raise ValueError(f"{where} cannot verify {alg} (another key type, or an RSA key under 2048 bits)")
        keys[kid] = RegisteredKey(kid=kid, alg=alg, verifier=verifier)
    return keys


def registered_keys(jwks: dict[str, Any], *, purpose: str = "upload") -> dict[str, RegisteredKey]:
    """:func:`parse_jwks` for a service: an unusable upload is a 422 (``invalid_jwks``) naming the key."""
    try:
        return parse_jwks(jwks, purpose=purpose)
    except ValueError as exc:
        raise InvalidInput([Invalid(("body", "jwks"), str(exc), "invalid_jwks")]) from None


def unverified_issuer(assertion: str, *, typ: str, what: str) -> str:
    """The ``iss`` of an assertion of type ``typ``, read without verifying it, only to find whose keys verify
    it (``what`` the issuer is, for the message)."""
    if not assertion or len(assertion) > MAX_ASSERTION_CHARS or assertion.count(".") != 2:
        raise InvalidAssertion(Reason.MALFORMED, "not a JWS compact serialization of a sane size")
    try:
        header = jwt.get_unverified_header(assertion)
        payload = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise InvalidAssertion(Reason.MALFORMED, f"unreadable: {exc}") from None
    if header.get("typ") != typ:
        raise InvalidAssertion(Reason.BAD_TYPE, f"typ must be {typ!r}")
    issuer = payload.get("iss")
    if not isinstance(issuer, str) or not issuer:
        raise InvalidAssertion(Reason.MISSING_CLAIM, f"iss ({what}) is required")
    return issuer


@dataclass(frozen=True, slots=True)
class Verified:
    """A verified assertion: the key that signed it, its ``jti`` and ``exp``, and every claim it carries."""

    kid: str
    claims: dict[str, Any] = field(repr=False)  # kept out of logs
    jti: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class Expected:
    """What an assertion must be: its ``typ``, whose (``issuer``, a ``what``), for which ``audience``, how long
    at most (``max_lifetime_s``), and the ``unknown_issuer`` reason of its kind."""

    typ: str
    issuer: str
    what: str
    audience: str
    max_lifetime_s: int
    unknown_issuer: Reason


def verify_assertion(
    assertion: str, keys: Mapping[str, RegisteredKey], expected: Expected, request: BoundRequest, now: float
) -> Verified:
    """Check ``assertion`` against the issuer's registered ``keys``, the ``expected`` kind and the ``request``
    it came with, on the broker's clock ``now``. The jti is not checked here (that needs the database): the
    caller must accept each one once; nor ``sub``, whose meaning is the kind's."""
    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.PyJWTError as exc:
        raise InvalidAssertion(Reason.MALFORMED, f"unreadable header: {exc}") from None
    if header.get("typ") != expected.typ:
        raise InvalidAssertion(Reason.BAD_TYPE, f"typ must be {expected.typ!r}")
    alg, kid = header.get("alg"), header.get("kid")
    if not isinstance(alg, str) or alg not in ASYMMETRIC_ALGORITHMS:
        raise InvalidAssertion(Reason.BAD_ALGORITHM, "only asymmetric algorithms are accepted (never none or HS*)")
    if not isinstance(kid, str) or kid not in keys:
        raise InvalidAssertion(Reason.UNKNOWN_KEY, f"{expected.what} has no registered key with that kid")
    key = keys[kid]
    if alg != key.alg:
        raise InvalidAssertion(Reason.BAD_ALGORITHM, f"key {kid!r} is registered for {key.alg}, not {alg}")
    try:
        claims = jwt.decode(
            assertion,
            key=key.verifier,
            algorithms=[key.alg],  # the registered one, never the header's
            audience=expected.audience,
            issuer=expected.issuer,
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
        unknown = refused.reason.value == "unknown_issuer"
        raise InvalidAssertion(expected.unknown_issuer if unknown else Reason(refused.reason.value),
                               refused.detail) from None  # fmt: skip
    exp = _times(claims, now, expected.max_lifetime_s)
    jti = claims["jti"]
    if not isinstance(jti, str) or not 0 < len(jti) <= MAX_CLAIM_CHARS:
        raise InvalidAssertion(Reason.BAD_CLAIM, f"jti must be a string of 1 to {MAX_CLAIM_CHARS} characters")
    for name, value in request.claims().items():
        if claims.get(name) != value:
            raise InvalidAssertion(Reason.WRONG_REQUEST, f"{name} does not match this request")
    return Verified(kid=kid, jti=jti, expires_at=exp, claims=claims)


def _number(claims: Mapping[str, Any], name: str) -> int | float | None:
    """The time claim ``name`` (None when absent): a JSON number, never a string, a bool, NaN or an infinity."""
    if name not in claims:
        return None
    value = claims[name]
    finite = not isinstance(value, float) or math.isfinite(value)  # isfinite overflows on a huge int
    if isinstance(value, int | float) and not isinstance(value, bool) and finite:
        return value
    raise InvalidAssertion(Reason.BAD_CLAIM, f"{name} must be a JSON number (seconds since the epoch)")


def _times(claims: Mapping[str, Any], now: float, max_lifetime_s: int) -> float:
    """``exp``: not passed and at most ``max_lifetime_s`` ahead; ``nbf`` and ``iat`` (optional): not in the
    future; each within :data:`LEEWAY_S` of the broker's clock ``now``. Returns ``exp``."""
    exp, nbf, iat = (_number(claims, name) for name in ("exp", "nbf", "iat"))
    assert exp is not None  # required: PyJWT refused its absence
    if exp <= now - LEEWAY_S:
        raise InvalidAssertion(Reason.EXPIRED, "the assertion has expired")
    if exp > now + max_lifetime_s + LEEWAY_S:
        raise InvalidAssertion(Reason.TOO_LONG_LIVED, f"exp is more than {max_lifetime_s} s ahead of the broker")
    for name, value in (("nbf", nbf), ("iat", iat)):
        if value is not None and value > now + LEEWAY_S:
            raise InvalidAssertion(Reason.NOT_YET_VALID, f"{name} is more than {LEEWAY_S} s ahead of the broker")
    return float(exp)


def public_jwks(private_jwks: Mapping[str, Any]) -> dict[str, Any]:
    """The public half of a JWKS of private keys, as it is uploaded (private members dropped, and the private
    key's ``key_ops`` ["sign"] with them: the public key only verifies)."""
    private = {"d", "p", "q", "dp", "dq", "qi", "oth", "k", "key_ops"}
    return {"keys": [{k: v for k, v in jwk.items() if k not in private} for jwk in private_jwks["keys"]]}


def canonical(document: Any) -> str:
    """A JWKS as stored: canonical JSON, so an unchanged upload compares equal."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


__all__ = [
    "LEEWAY_S", "MAX_ASSERTION_CHARS", "MAX_CLAIM_CHARS", "MAX_KEYS", "BoundRequest", "Expected", "InvalidAssertion",
    "Reason", "RegisteredKey", "Verified", "body_hash", "canonical", "parse_jwks", "public_jwks",
    "registered_keys", "unverified_issuer", "verify_assertion",
]  # fmt: skip
