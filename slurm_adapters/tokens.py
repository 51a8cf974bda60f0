"""Slurm JWTs minted locally from the cluster's HS256 key.

slurmctld's ``auth/jwt`` accepts any HS256 token signed with ``jwt_key`` whose claims name the user
(``sun``) and an expiry (``exp``). Minting them here, per request and short-lived, means the broker never
stores a long-lived credential and never runs ``scontrol token`` (which only root may do for others).
Standard library only: the format is three base64url parts and one HMAC.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_LIFETIME_S = 30
MAX_LIFETIME_S = 60  # a leaked token must be useless within a minute

_HEADER = {"alg": "HS256", "typ": "JWT"}


class TokenError(ValueError):
    """A token that does not verify, or a request for one we refuse to mint."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _compact_json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode("utf-8")


def mint_token(key: bytes, user: str, *, lifetime_s: int = DEFAULT_LIFETIME_S, now: float | None = None) -> str:
    """An HS256 token for ``user`` valid ``lifetime_s`` seconds (1..60) from ``now``."""
    if not key:
        raise TokenError("the JWT key is empty")
    if not user:
        raise TokenError("a token needs a user name")
    if not 0 < lifetime_s <= MAX_LIFETIME_S:
        raise TokenError(f"token lifetime must be 1..{MAX_LIFETIME_S} s, not {lifetime_s}")
    issued = int(time.time() if now is None else now)
    claims = {"iat": issued, "exp": issued + lifetime_s, "sun": user}
    signing_input = f"{_b64url(_compact_json(_HEADER))}.{_b64url(_compact_json(claims))}"
    signature = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(signature)}"


def verify_token(token: str, key: bytes, *, now: float | None = None) -> dict[str, Any]:
    """The claims of a token signed with ``key`` and not yet expired (for tests and diagnostics)."""
    try:
        header_b64, claims_b64, signature_b64 = token.split(".")
        header = json.loads(_b64url_decode(header_b64))
        claims = json.loads(_b64url_decode(claims_b64))
        signature = _b64url_decode(signature_b64)
    except ValueError as exc:  # wrong part count, bad base64, bad JSON
        raise TokenError(f"malformed token: {exc}") from exc
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise TokenError("token is not HS256")
    expected = hmac.new(key, f"{header_b64}.{claims_b64}".encode("ascii"), hashlib.sha256).digest()
    if not hmac.compare_digest(signature, expected):
        raise TokenError("bad token signature")
    if not isinstance(claims, dict):
        raise TokenError("token claims are not an object")
    current = time.time() if now is None else now
    exp = claims.get("exp")
    if not isinstance(exp, int) or exp <= current:
        raise TokenError("token expired")
    return claims


class TokenMinter:
    """Mints tokens from a key file, read on first use (so construction never fails) and again whenever
    the file changes (a rotated key is picked up without a restart)."""

    def __init__(
        self,
        key_file: str | Path,
        *,
        lifetime_s: int = DEFAULT_LIFETIME_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < lifetime_s <= MAX_LIFETIME_S:
            raise TokenError(f"token lifetime must be 1..{MAX_LIFETIME_S} s, not {lifetime_s}")
        self.key_file = Path(key_file)
        self.lifetime_s = lifetime_s
        self._clock = clock
        self._key: bytes | None = None
        self._key_stamp: tuple[int, int, int] | None = None

    def _load_key(self) -> bytes:
        info = self.key_file.stat()
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        if self._key is None or stamp != self._key_stamp:
            key = self.key_file.read_bytes()  # raw bytes, as slurmctld reads jwt_key
            if not key:
                raise TokenError(f"JWT key file {self.key_file} is empty")
            self._key, self._key_stamp = key, stamp
        return self._key

    def mint(self, user: str) -> str:
        """A fresh token for ``user``. Raises OSError if the key file cannot be read."""
        return mint_token(self._load_key(), user, lifetime_s=self.lifetime_s, now=self._clock())
