"""Random identifiers: never sequential, so an id reveals neither how many exist nor any other id."""

from __future__ import annotations

import base64
import secrets

RANDOM_CHARS = 20  # 100 bits: collisions are not a concern, guessing is hopeless


def random_id(prefix: str) -> str:
    """``prefix`` and 20 lowercase base32 characters from the OS's CSPRNG."""
    return prefix + base64.b32encode(secrets.token_bytes(13)).decode("ascii").lower()[:RANDOM_CHARS]
