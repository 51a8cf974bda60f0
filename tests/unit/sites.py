"""Site policies over made-up accounts, for tests that need no passwd file."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from slurm_adapters.safety import PasswdEntry, SitePolicy


def people(uids: Mapping[str, int]) -> dict[str, PasswdEntry]:
    """Login accounts (bash, a home under /home) with the given uids."""
    return {name: PasswdEntry(name, uid, f"/home/{name}", "/bin/bash") for name, uid in uids.items()}


def policy_of(uids: Mapping[str, int], **changes: Any) -> SitePolicy:
    """A site where exactly these people exist; UID_MIN is the default (no login.defs)."""
    return SitePolicy(lookup=people(uids).get, login_defs=None, **changes)
