"""Slurm JWT minting: the claims slurmctld's auth/jwt reads, a signature it can verify, short lifetimes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path

import pytest

from slurm_adapters.tokens import MAX_LIFETIME_S, TokenError, TokenMinter, mint_token, verify_token

KEY = b"\x01\x02secret-key-bytes\xff" * 2


def _part(token: str, index: int) -> dict[str, object]:
    text = token.split(".")[index]
    decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    return decoded


def test_claims_are_what_slurm_reads() -> None:
    token = mint_token(KEY, "alice", lifetime_s=30, now=1_000_000.7)
    assert _part(token, 0) == {"alg": "HS256", "typ": "JWT"}
    assert _part(token, 1) == {"iat": 1_000_000, "exp": 1_000_030, "sun": "alice"}


def test_signature_is_hs256_over_header_and_claims_with_the_raw_key() -> None:
    token = mint_token(KEY, "alice", now=1_000_000)
    header, claims, signature = token.split(".")
    expected = hmac.new(KEY, f"{header}.{claims}".encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)) == expected
    assert "=" not in token  # base64url without padding, as JWT requires


def test_verify_round_trip_and_rejections() -> None:
    token = mint_token(KEY, "bob", lifetime_s=10, now=1_000)
    assert verify_token(token, KEY, now=1_005)["sun"] == "bob"
    with pytest.raises(TokenError, match="signature"):
        verify_token(token, b"another key", now=1_005)
    with pytest.raises(TokenError, match="expired"):
        verify_token(token, KEY, now=1_010)
    header, _claims, signature = token.split(".")
    forged_claims = base64.urlsafe_b64encode(b'{"exp":9999999999,"iat":1000,"sun":"root"}').rstrip(b"=").decode()
    with pytest.raises(TokenError, match="signature"):
        verify_token(f"{header}.{forged_claims}.{signature}", KEY, now=1_005)
    with pytest.raises(TokenError, match="malformed"):
        verify_token("not-a-token", KEY)


@pytest.mark.parametrize("lifetime", [0, -5, MAX_LIFETIME_S + 1, 3600])
def test_long_or_empty_lifetimes_are_refused(lifetime: int) -> None:
    with pytest.raises(TokenError):
        mint_token(KEY, "alice", lifetime_s=lifetime)
    with pytest.raises(TokenError):
        TokenMinter("/nonexistent", lifetime_s=lifetime)


def test_empty_key_or_user_is_refused() -> None:
    with pytest.raises(TokenError):
        mint_token(b"", "alice")
    with pytest.raises(TokenError):
        mint_token(KEY, "")


def test_minter_reads_the_key_file_lazily_and_uses_its_clock(tmp_path: Path) -> None:
    key_file = tmp_path / "jwt_hs256.key"
    minter = TokenMinter(key_file, lifetime_s=20, clock=lambda: 5_000.0)  # no file yet: construction is fine
    with pytest.raises(FileNotFoundError):
        minter.mint("alice")
    key_file.write_bytes(KEY)
    token = minter.mint("alice")
    assert verify_token(token, KEY, now=5_001) == {"iat": 5_000, "exp": 5_020, "sun": "alice"}
    assert verify_token(minter.mint("carol"), KEY, now=5_001)["sun"] == "carol"


def test_minter_picks_up_a_rotated_key(tmp_path: Path) -> None:
    key_file = tmp_path / "jwt_hs256.key"
    key_file.write_bytes(KEY)
    minter = TokenMinter(key_file, clock=lambda: 5_000.0)
    verify_token(minter.mint("alice"), KEY, now=5_001)
    new_key = b"rotated key, a different length"
    key_file.write_bytes(new_key)
    token = minter.mint("alice")
    assert verify_token(token, new_key, now=5_001)["sun"] == "alice"
    with pytest.raises(TokenError):
        verify_token(token, KEY, now=5_001)


def test_minter_refuses_an_empty_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "empty.key"
    key_file.write_bytes(b"")
    with pytest.raises(TokenError, match="empty"):
        TokenMinter(key_file).mint("alice")


def test_default_lifetime_is_short() -> None:
    token = mint_token(KEY, "alice", now=0)
    claims = _part(token, 1)
    assert isinstance(claims["exp"], int)
    assert 0 < claims["exp"] <= MAX_LIFETIME_S
