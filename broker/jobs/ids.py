"""Job ids: random, never sequential, so an id reveals neither how many jobs exist nor another job's id."""

from __future__ import annotations

import re

from broker.ids import RANDOM_CHARS, random_id

JOB_ID_PREFIX = "job_"
JOB_ID_PATTERN = re.compile(rf"^{JOB_ID_PREFIX}[a-z2-7]{{{RANDOM_CHARS}}}$")


def new_job_id() -> str:
    """``job_`` and 20 lowercase base32 characters from the OS's CSPRNG."""
    return random_id(JOB_ID_PREFIX)


def is_job_id(text: str) -> bool:
    return JOB_ID_PATTERN.fullmatch(text) is not None
