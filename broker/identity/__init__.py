"""Who is calling: the principal every request is made on behalf of.

Personal access tokens (:mod:`broker.identity.tokens`), OIDC and Antenna assertions (:mod:`broker.antennas`)
all end in a :class:`Principal`, so the job service never learns how a caller authenticated.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.identity.tokens import ALL_SCOPES, Scope


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. ``id`` owns jobs and scopes Idempotency-Keys; ``admin`` is the user's role;
    ``scopes`` is what the credential presented allows (a token's scopes; every scope for other ways in).
    ``any_project``: a dev-mode principal, which is no user and belongs to no project, may use any project.
    ``antenna``: the Antenna acting for this national user (None: a direct caller), ``subject`` the user's id
    at that Antenna, and ``factories`` the only Factories its jobs may go to (None: no such restriction)."""

    id: str
    admin: bool = False
    scopes: frozenset[Scope] = ALL_SCOPES
    name: str | None = None
    token_id: str | None = None
    any_project: bool = False
    antenna: str | None = None
    subject: str | None = None
    factories: frozenset[str] | None = None

    def may(self, scope: Scope) -> bool:
        """Whether this credential carries ``scope``; ``admin`` needs the admin role as well."""
        return scope in self.scopes and (scope is not Scope.ADMIN or self.admin)


# The one principal of the static development token (dev mode only; see broker.settings.refuse_unsafe).
DEV_PRINCIPAL = Principal(id="dev", admin=True, name="dev", any_project=True)

__all__ = ["DEV_PRINCIPAL", "Principal", "Scope"]
