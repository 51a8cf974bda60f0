"""Who is calling: the principal every request is made on behalf of.

Issue #4 brings personal access tokens, OIDC and Antenna assertions; they will all end in a :class:`Principal`,
so the job service never learns how a caller authenticated.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. ``id`` owns jobs and scopes Idempotency-Keys; ``admin`` may drain Factories."""

    id: str
    admin: bool = False


# The one principal of the static development token (dev mode only; see broker.settings.refuse_unsafe).
DEV_PRINCIPAL = Principal(id="dev", admin=True)
