"""Job ids: random, never sequential, so an id reveals neither how many jobs exist nor another job's id."""

from __future__ import annotations

import base64
import re
import secrets

JOB_ID_PREFIX = "job_"
_RANDOM_CHARS = 20  # 100 bits: collisions are not a concern, guessing is hopeless
JOB_ID_PATTERN = re.compile(rf"^{JOB_ID_PREFIX}[a-z2-7]{{{_RANDOM_CHARS}}}$")


def new_job_id() -> str:
    """``job_`` and 20 lowercase base32 characters from the OS's CSPRNG."""
    text = base64.b32encode(secrets.token_bytes(13)).decode("ascii").lower()
    return JOB_ID_PREFIX + text[:_RANDOM_CHARS]


def is_job_id(text: str) -> bool:
    return JOB_ID_PATTERN.fullmatch(text) is not None
