"""The agent's signing key: a private JWK (or a JWK Set holding one) with ``kid`` and an asymmetric ``alg``.

The broker verifies the agent's assertions with the public half an operator registered through
``PUT /v1/factories/{id}/agent-keys``; the algorithm is fixed by the key, never by a token.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from slurm_adapters.jwk import UnusableKey, private_signing_key

_PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k", "key_ops"})


class KeyFileError(ValueError):
    """The key file cannot sign agent assertions; the message says why."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    """What :func:`slurm_adapters.agent_protocol.sign` needs: the key id, its algorithm, the private key."""

    kid: str
    alg: str
    key: Any  # a cryptography private key object, as PyJWT signs with
    public_jwks: dict[str, Any]


def public_jwk(jwk: dict[str, Any]) -> dict[str, Any]:
    """The public half of one private JWK: what the broker registers (it only verifies)."""
    return {name: value for name, value in jwk.items() if name not in _PRIVATE_MEMBERS}


def _private_key(jwk: object, where: str) -> SigningKey:
    try:
        kid, alg, key = private_signing_key(jwk, where, signer="the agent")
    except UnusableKey as exc:
        raise KeyFileError(str(exc)) from None
    assert isinstance(jwk, dict)  # checked by private_signing_key
    return SigningKey(kid=kid, alg=alg, key=key, public_jwks={"keys": [public_jwk(jwk)]})


def load_signing_key(path: Path) -> SigningKey:
    """The private key in ``path``: one JWK, or a JWK Set whose only key is it."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise KeyFileError(f"key file {path}: cannot read a JSON document: {exc}") from None
    if isinstance(document, dict) and "keys" in document:
        keys = document["keys"]
        if not isinstance(keys, list) or len(keys) != 1:
            raise KeyFileError(f"key file {path}: a JWK Set here holds exactly one private key")
        return _private_key(keys[0], f"key file {path}: keys[0]")
    return _private_key(document, f"key file {path}")


def generate_jwk(kid: str) -> dict[str, Any]:
    """A new EC P-256 private JWK for ES256, marked for signing."""
    if not kid or len(kid) > 255:
        raise KeyFileError("a kid is 1 to 255 characters")
    private = ec.generate_private_key(ec.SECP256R1())
    jwk: dict[str, Any] = ECAlgorithm.to_jwk(private, as_dict=True)
    return {**jwk, "kid": kid, "alg": "ES256", "use": "sig"}


def write_private_jwk(path: Path, jwk: dict[str, Any]) -> None:
    """Write ``jwk`` to a new file only its owner can read (mode 0600); an existing file is never replaced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(jwk, handle, indent=2)
        handle.write("\n")
