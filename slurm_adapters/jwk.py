"""Private JWKs that sign requests: the Factory agent's (its link to the broker) and an Antenna gateway's.

One check for both signers, so each refuses the same keys the broker would refuse in their public halves: an
asymmetric ``alg`` only, a private key that can sign with it (``d`` present, ``key_ops`` if given naming
``sign``), and RSA of at least :data:`MIN_RSA_BITS`.
"""

from __future__ import annotations

from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

# Asymmetric JWS algorithms PyJWT verifies with a public key. Nothing else may ever be configured.
ASYMMETRIC_ALGORITHMS: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
MIN_RSA_BITS: Final = 2048  # NIST SP 800-131A; enforced here rather than by PyJWT (whose check is 2.10+ and optional)
_PRIVATE_KEY_TYPES = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)


class UnusableKey(ValueError):
    """The JWK cannot sign as required; the message says where and why."""


def private_signing_key(jwk: object, where: str, *, signer: str) -> tuple[str, str, Any]:
    """(kid, alg, private key) of one private JWK; :class:`UnusableKey` naming ``where`` otherwise. ``signer``
    (e.g. "the agent") completes the message for a public key given where a private one is needed."""
    if not isinstance(jwk, dict):
        raise UnusableKey(f"{where} is not a JSON object")
    kid, alg = jwk.get("kid"), jwk.get("alg")
    if not isinstance(kid, str) or not kid:
        raise UnusableKey(f"{where} has no kid")
    if alg not in ASYMMETRIC_ALGORITHMS:
        raise UnusableKey(f"{where} (kid {kid!r}) needs an asymmetric alg, one of {sorted(ASYMMETRIC_ALGORITHMS)}")
    if jwk.get("kty") == "oct" or "d" not in jwk:
        raise UnusableKey(f"{where} (kid {kid!r}) is not a private key: {signer} signs, so it needs 'd'")
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "sign" not in key_ops):
        raise UnusableKey(f"{where} (kid {kid!r}) has key_ops without 'sign'")
    try:
        key = jwt.PyJWK(jwk, algorithm=alg).key
    except jwt.PyJWTError as exc:
        raise UnusableKey(f"{where} (kid {kid!r}) cannot sign {alg}: {exc}") from None
    if not isinstance(key, _PRIVATE_KEY_TYPES):
        raise UnusableKey(f"{where} (kid {kid!r}) is not a private key")
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
        raise UnusableKey(f"{where} (kid {kid!r}) has {key.key_size} bits; at least {MIN_RSA_BITS}")
    return kid, str(alg), key


__all__ = ["ASYMMETRIC_ALGORITHMS", "MIN_RSA_BITS", "UnusableKey", "private_signing_key"]
