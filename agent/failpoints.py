"""Failpoints (tests only): ``CONVEYOR_AGENT_FAILPOINTS=before_submit,after_submit`` makes the agent SIGKILL
itself right before a Slurm submit call, or right after Slurm answered it (before anything is reported), to
prove the crash paths with a real crash. An unknown name is an error: a typo must not pass silently."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Mapping

log = logging.getLogger("conveyor.agent")

FAILPOINTS_ENV = "CONVEYOR_AGENT_FAILPOINTS"
FAILPOINTS = frozenset({"before_submit", "after_submit"})


class UnknownFailpoint(ValueError):
    """``CONVEYOR_AGENT_FAILPOINTS`` names a failpoint the agent does not have."""


def active_failpoints(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """The failpoints the environment enables; :class:`UnknownFailpoint` for a name the agent lacks."""
    raw = (os.environ if environ is None else environ).get(FAILPOINTS_ENV, "")
    names = frozenset(name.strip() for name in raw.split(",") if name.strip())
    unknown = names - FAILPOINTS
    if unknown:
        raise UnknownFailpoint(f"{FAILPOINTS_ENV}: unknown failpoints {sorted(unknown)}; known: {sorted(FAILPOINTS)}")
    return names


def failpoint(active: frozenset[str], name: str) -> None:
    """SIGKILL this process if ``name`` is active (no cleanup runs: exactly like a crash)."""
    assert name in FAILPOINTS, name
    if name in active:
        log.critical("failpoint %s: killing this process", name)
        os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["FAILPOINTS", "FAILPOINTS_ENV", "UnknownFailpoint", "active_failpoints", "failpoint"]
