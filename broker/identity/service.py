"""Personal access tokens end to end: the first admin, issuing, checking, listing and revoking tokens.

Checking a token is one indexed read and a constant-time digest comparison, and a token that passed is
remembered for a few seconds, so a busy client's next requests make no read at all. Failures are audited
(who tried what, from where); successes are not (reads must stay cheap). Every failure tells the caller
only "invalid token" with a reason code, never whether a prefix exists.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from broker.db.engine import Database
from broker.db.models import ApiToken, User
from broker.db.repositories.identity import Audit, IdentityRepository
from broker.db.types import utc_now
from broker.errors import BrokerError, Forbidden, NotFound
from broker.identity import Principal
from broker.identity.oidc import OidcIdentity
from broker.identity.tokens import ALL_SCOPES, Scope, digest_matches, mint, parse_scopes, prefix_of, scope_names
from broker.ttl_cache import TtlCache

log = logging.getLogger(__name__)

DEFAULT_TOKEN_DAYS = 90
MAX_TOKEN_DAYS = 366


class AuthenticationFailed(BrokerError):
    """The credential does not authenticate anyone. ``reason``: malformed, unknown, expired, revoked, disabled."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class AlreadyInitialized(BrokerError):
    """An admin exists: the first-admin command is for an empty broker only."""


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A new token: ``text`` is shown to its owner once and never stored."""

    token: ApiToken
    text: str


@dataclass(frozen=True, slots=True)
class Remembered:
    """What a token's last successful check found."""

    digest: str
    principal: Principal
    expires_at: datetime  # the token's own expiry


class IdentityService:
    """Tokens and users. One instance per process authenticates and revokes.

    ``credentials`` remembers the tokens that passed (off unless given). The presented secret is still
    compared with the remembered digest, in constant time, and the expiry with the clock, on every request,
    so a forged secret or an expired token never passes through it. What it can delay is news from another
    replica: a token revoked or a user disabled there is honoured here after at most ``credentials.ttl_s``.
    A token revoked through this instance is forgotten at once.
    """

    def __init__(
        self,
        database: Database,
        clock: Callable[[], datetime] = utc_now,
        *,
        credentials: TtlCache[str, Remembered] | None = None,
    ) -> None:
        self._repo = IdentityRepository(database, clock)
        self._clock = clock
        self._credentials: TtlCache[str, Remembered] = credentials if credentials is not None else TtlCache(0)

    async def create_first_admin(self, name: str, *, days: int = DEFAULT_TOKEN_DAYS) -> tuple[User, IssuedToken]:
        """The broker's first admin and a token with every scope; refused once any admin exists."""
        if await self._repo.admin_count() > 0:
            raise AlreadyInitialized("an admin exists already; admins manage users through the API")
        user = await self._repo.create_user(name, is_admin=True)
        issued = await self._issue(user.id, "first admin", ALL_SCOPES, days)
        await self._repo.audit(
            Audit(action="admin.created", outcome="ok", actor="server-command", target=user.id, detail={"name": name})
        )
        return user, issued

    async def authenticate(self, text: str, *, source: str | None = None) -> Principal:
        prefix = prefix_of(text)
        if prefix is None:
            raise await self._failed("malformed", "the token is not a Conveyor personal access token", source)
        remembered = self._credentials.get(prefix)
        if remembered is not None and remembered.expires_at > self._clock() and digest_matches(text, remembered.digest):
            return remembered.principal
        found = await self._repo.token_with_user(prefix)
        if found is None or not digest_matches(text, found[0].digest):
            raise await self._failed("unknown", "the token is not valid", source, prefix=prefix)
        token, user = found
        if token.revoked_at is not None:
            raise await self._failed("revoked", "the token was revoked", source, prefix=prefix, actor=user.id)
        if token.expires_at <= self._clock():
            raise await self._failed("expired", "the token has expired", source, prefix=prefix, actor=user.id)
        if user.disabled_at is not None:
            raise await self._failed("disabled", "the token's user is disabled", source, prefix=prefix, actor=user.id)
        principal = Principal(
            id=user.id, admin=user.is_admin, scopes=parse_scopes(token.scopes), name=user.name, token_id=token.id
        )
        self._credentials.put(prefix, Remembered(token.digest, principal, token.expires_at))
        return principal

    async def oidc_principal(self, identity: OidcIdentity) -> Principal:
        """The user of a verified OIDC identity, made on first sight (not an admin, member of nothing)."""
        user = await self._repo.user_by_identity(identity.issuer, identity.subject)
        if user is None:
            name = str(identity.claims.get("preferred_username") or identity.claims.get("name") or identity.subject)
            user = await self._repo.create_user_once(name[:255], issuer=identity.issuer, subject=identity.subject)
            await self._repo.audit(Audit(action="user.created", outcome="ok", actor=user.id, target=user.id,
                                         detail={"issuer": identity.issuer, "subject": identity.subject}))  # fmt: skip
        if user.disabled_at is not None:
            raise await self._failed("disabled", "the user is disabled", None, actor=user.id)
        return Principal(id=user.id, admin=user.is_admin, scopes=ALL_SCOPES, name=user.name)

    async def oidc_failed(self, reason: str, source: str | None) -> AuthenticationFailed:
        """An OIDC token was refused: audited like a token failure, with the verifier's reason code."""
        return await self._failed(reason, f"the OIDC token is not valid ({reason})", source, method="oidc")

    async def _failed(
        self, reason: str, message: str, source: str | None, *, prefix: str | None = None, actor: str | None = None,
        method: str = "token",
    ) -> AuthenticationFailed:  # fmt: skip
        detail = {"reason": reason, "method": method, **({"prefix": prefix} if prefix else {})}
        await self._repo.audit(Audit(action="auth.failed", outcome="denied", actor=actor, source=source, detail=detail))
        return AuthenticationFailed(reason, message)

    async def issue(
        self, caller: Principal, name: str, scopes: Collection[str], *, days: int = DEFAULT_TOKEN_DAYS,
        source: str | None = None,
    ) -> IssuedToken:  # fmt: skip
        """A new token for the caller, with no scope the caller's own credential lacks."""
        _holds_tokens(caller)
        if await self._repo.user(caller.id) is None:
            raise Forbidden(
                "personal access tokens belong to users, and this caller is none (the dev token?): "
                "make a user with `python -m broker create-admin NAME` on the server"
            )
        wanted = parse_scopes(scopes)
        missing = [scope for scope in wanted if not caller.may(scope)]
        if missing:
            raise Forbidden(f"this credential cannot grant {', '.join(scope_names(missing))}")
        if not 1 <= days <= MAX_TOKEN_DAYS:
            raise ValueError(f"a token lives 1 to {MAX_TOKEN_DAYS} days")
        issued = await self._issue(caller.id, name, wanted, days)
        detail = {"name": name, "scopes": scope_names(wanted), "expires_at": issued.token.expires_at.isoformat()}
        await self._repo.audit(
            Audit(action="token.created", outcome="ok", actor=caller.id, target=issued.token.id, source=source,
                  detail=detail)
        )  # fmt: skip
        return issued

    async def _issue(self, user_id: str, name: str, scopes: Collection[Scope], days: int) -> IssuedToken:
        minted = mint()
        token = await self._repo.add_token(
            user_id, name=name, prefix=minted.prefix, digest=minted.digest, scopes=scope_names(scopes),
            expires_at=self._clock() + timedelta(days=days),
        )  # fmt: skip
        return IssuedToken(token=token, text=minted.text)

    async def create_user(
        self, caller: Principal, name: str, *, admin: bool = False, source: str | None = None
    ) -> tuple[User, IssuedToken]:
        """A local user and its first token (admins only): read and submit, plus admin for an admin."""
        if not caller.admin:
            raise Forbidden("creating users is for broker admins")
        user = await self._repo.create_user(name, is_admin=admin)
        scopes = ALL_SCOPES if admin else frozenset({Scope.READ, Scope.SUBMIT})
        issued = await self._issue(user.id, "first token", scopes, DEFAULT_TOKEN_DAYS)
        await self._repo.audit(Audit(action="user.created", outcome="ok", actor=caller.id, target=user.id,
                                     source=source, detail={"name": name, "admin": admin}))  # fmt: skip
        return user, issued

    async def tokens(self, caller: Principal) -> Sequence[ApiToken]:
        _holds_tokens(caller)
        return await self._repo.tokens_of(caller.id)

    async def revoke(self, caller: Principal, token_id: str, *, source: str | None = None) -> ApiToken:
        _holds_tokens(caller)
        token = await self._repo.revoke_token(caller.id, token_id)
        if token is None:
            raise NotFound("token", token_id)
        self._credentials.forget(token.prefix)
        await self._repo.audit(
            Audit(action="token.revoked", outcome="ok", actor=caller.id, target=token_id, source=source)
        )
        return token

    async def user(self, user_id: str) -> User | None:
        return await self._repo.user(user_id)


def _holds_tokens(caller: Principal) -> None:
    """Personal access tokens are for direct users: a national user (acting through its Antenna) has none to
    make, list or revoke (403)."""
    if caller.antenna is not None:
        raise Forbidden("national users act through their Antenna and hold no broker credentials")


__all__ = ["AlreadyInitialized", "AuthenticationFailed", "IdentityService", "IssuedToken"]
