"""Antennas as the broker knows them: registration, keys, operators, national users, and the check of every
assertion an Antenna sends.

Trust is exactly this wide: an Antenna acts only for its own national users (identity ("antenna:<id>", sub)),
only on user routes (its principal has read and submit scopes, never admin), only towards the Factories it is
linked to, within its rate limit and its quota of active jobs. Membership of projects is the broker's: a
project's PI or the Antenna's operator grants it; nothing an assertion says can.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from broker.antennas.assertion import (
    LEEWAY_S,
    AssertionClaims,
    BoundRequest,
    InvalidAssertion,
    Reason,
    RegisteredKey,
    unverified_antenna,
    verify,
)
from broker.db.engine import Database
from broker.db.models import Antenna, User
from broker.db.repositories.antennas import AntennaRepository, national_antenna, national_issuer
from broker.db.repositories.identity import Audit, IdentityRepository
from broker.db.types import utc_now
from broker.errors import AlreadyExists, Forbidden, Invalid, InvalidInput, NotFound, TooManyRequests
from broker.factories.registry import FactoryRegistry
from broker.identity import Principal, Scope
from broker.identity.assertions import registered_keys
from broker.identity.limits import RequestRate
from broker.identity.service import AuthenticationFailed

NATIONAL_SCOPES = frozenset({Scope.READ, Scope.SUBMIT})  # never admin, whatever the assertion says
DEFAULT_REQUESTS_PER_MINUTE = 600


class AntennaService:
    def __init__(
        self,
        database: Database,
        registry: FactoryRegistry,
        *,
        audience: str,
        clock: Callable[[], datetime] = utc_now,
        rate: RequestRate | None = None,
    ) -> None:
        self._antennas = AntennaRepository(database, clock)
        self._identities = IdentityRepository(database, clock)
        self._registry = registry
        self._audience = audience
        self._clock = clock
        self._rate = rate or RequestRate()
        self._key_cache: dict[str, tuple[datetime, dict[str, RegisteredKey]]] = {}

    # -- administration --------------------------------------------------------------------------------

    async def register(
        self, caller: Principal, antenna_id: str, *, country: str, title: str, factories: Sequence[str],
        jwks: dict[str, Any], requests_per_minute: int = DEFAULT_REQUESTS_PER_MINUTE,
        max_active_jobs: int | None = None, source: str | None = None,
    ) -> Antenna:  # fmt: skip
        self._admin(caller)
        self._check_factories(factories)
        _keys(jwks)
        now = self._clock()
        antenna = Antenna(
            id=antenna_id, country=country, title=title, factories=sorted(set(factories)), jwks=jwks,
            requests_per_minute=requests_per_minute, max_active_jobs=max_active_jobs, created_at=now,
            updated_at=now, disabled_at=None,
        )  # fmt: skip
        if not await self._antennas.create(antenna):
            raise AlreadyExists(f"Antenna {antenna_id!r} exists already")
        await self._audit(caller, "antenna.registered", antenna_id, source, factories=antenna.factories,
                          kids=sorted(_keys(jwks)))  # fmt: skip
        return antenna

    async def replace_keys(
        self, caller: Principal, antenna_id: str, jwks: dict[str, Any], *, source: str | None = None
    ) -> Antenna:
        """Rotation: the uploaded set replaces the old one (keep the outgoing key in it until the Antenna
        stops using it)."""
        self._admin(caller)
        kids = sorted(_keys(jwks))
        antenna = await self._antennas.update(antenna_id, jwks=jwks)
        if antenna is None:
            raise NotFound("Antenna", antenna_id)
        await self._audit(caller, "antenna.keys_replaced", antenna_id, source, kids=kids)
        return antenna

    async def update(self, caller: Principal, antenna_id: str, *, source: str | None = None, **changes: Any) -> Antenna:
        """Change linked Factories, limits or title (``None`` values are left as they are)."""
        self._admin(caller)
        values = {name: value for name, value in changes.items() if value is not None}
        if "factories" in values:
            self._check_factories(values["factories"])
            values["factories"] = sorted(set(values["factories"]))
        antenna = await self._antennas.update(antenna_id, **values)
        if antenna is None:
            raise NotFound("Antenna", antenna_id)
        await self._audit(caller, "antenna.updated", antenna_id, source, **{k: str(v) for k, v in values.items()})
        return antenna

    async def antennas(self, caller: Principal) -> Sequence[Antenna]:
        self._admin(caller)
        return await self._antennas.all()

    async def antenna(self, caller: Principal, antenna_id: str) -> Antenna:
        if not caller.admin and not await self._antennas.operates(caller.id, antenna_id):
            raise NotFound("Antenna", antenna_id)
        return await self._existing(antenna_id)

    async def add_operator(self, caller: Principal, antenna_id: str, user_id: str, *, source: str | None) -> None:
        self._admin(caller)
        await self._existing(antenna_id)
        user = await self._identities.user(user_id)
        if user is None:
            raise NotFound("user", user_id)
        if national_antenna(user) is not None:
            raise Forbidden("a national user cannot operate an Antenna")
        if await self._antennas.add_operator(antenna_id, user_id):
            await self._audit(caller, "antenna.operator_added", antenna_id, source, user=user_id)

    async def national_user(
        self, caller: Principal, antenna_id: str, subject: str, *, source: str | None = None
    ) -> User:
        """The broker user of (Antenna, sub), made if missing, so a PI or the operator can add it to projects."""
        if caller.antenna is not None or not (caller.admin or await self._antennas.operates(caller.id, antenna_id)):
            raise NotFound("Antenna", antenna_id)
        await self._existing(antenna_id)
        issuer = national_issuer(antenna_id)
        user = await self._identities.user_by_identity(issuer, subject)
        if user is None:
            user = await self._identities.create_user_once(f"{subject}@{antenna_id}"[:255], issuer=issuer,
                                                           subject=subject)  # fmt: skip
            await self._audit(caller, "user.created", user.id, source, antenna=antenna_id, subject=subject)
        return user

    # -- every forwarded request -----------------------------------------------------------------------

    async def authenticate(self, assertion: str, request: BoundRequest, *, source: str | None) -> Principal:
        """The national user a request comes from, or :class:`AuthenticationFailed` (401) / 429."""
        antenna_id: str | None = None
        try:
            antenna_id = unverified_antenna(assertion)
            antenna = await self._antennas.get(antenna_id)
            if antenna is None or antenna.disabled_at is not None:
                raise InvalidAssertion(Reason.UNKNOWN_ANTENNA, "no such Antenna is registered")
            claims = verify(assertion, self._keys_of(antenna), antenna=antenna.id, audience=self._audience,
                            request=request, now=self._clock().timestamp())  # fmt: skip
            await self._accept_once(claims)
        except InvalidAssertion as exc:
            known = antenna_id if exc.reason is not Reason.UNKNOWN_ANTENNA else None
            raise await self._failed(exc, known, source) from None
        retry_after = self._rate.take(antenna.id, antenna.requests_per_minute)
        if retry_after is not None:
            raise TooManyRequests(f"Antenna {antenna.id} is over its rate limit of {antenna.requests_per_minute} "
                                  "requests per minute", math.ceil(retry_after), kind="antenna")  # fmt: skip
        user = await self._identities.user_by_identity(national_issuer(antenna.id), claims.subject)
        if user is None:  # first sight: a user of no project, until a PI or the operator adds it
            user = await self._identities.create_user_once(f"{claims.subject}@{antenna.id}"[:255],
                                                           issuer=national_issuer(antenna.id),
                                                           subject=claims.subject)  # fmt: skip
        if user.disabled_at is not None:
            raise AuthenticationFailed("disabled", "the user is disabled")
        principal = Principal(
            id=user.id, scopes=NATIONAL_SCOPES, name=user.name, antenna=antenna.id, subject=claims.subject,
            factories=frozenset(antenna.factories),
        )  # fmt: skip
        if request.method.upper() not in {"GET", "HEAD", "OPTIONS"}:
            await self._identities.audit(Audit(
                action="antenna.call", outcome="authenticated", actor=user.id, target=request.target[:255],
                source=source, detail={"antenna": antenna.id, "subject": claims.subject, "method": request.method},
            ))  # fmt: skip
        return principal

    def _keys_of(self, antenna: Antenna) -> dict[str, RegisteredKey]:
        """The Antenna's keys, parsed once per upload (the row is read on every request, so a rotation made
        through any replica takes effect on the next request everywhere)."""
        cached = self._key_cache.get(antenna.id)
        if cached is None or cached[0] != antenna.updated_at:
            cached = (antenna.updated_at, _keys(antenna.jwks))
            self._key_cache[antenna.id] = cached
        return cached[1]

    async def _accept_once(self, claims: AssertionClaims) -> None:
        # Kept until the assertion would be refused as expired anyway, leeway included.
        until = datetime.fromtimestamp(claims.expires_at, UTC) + timedelta(seconds=LEEWAY_S)
        if not await self._antennas.accept_once(claims.antenna, claims.jti, until):
            raise InvalidAssertion(Reason.REPLAYED, "this assertion (its jti) was used before")

    async def _failed(self, exc: InvalidAssertion, antenna_id: str | None, source: str | None) -> AuthenticationFailed:
        detail = {"reason": exc.reason.value, "method": "antenna", **({"antenna": antenna_id} if antenna_id else {})}
        await self._identities.audit(Audit(action="auth.failed", outcome="denied", source=source, detail=detail))
        return AuthenticationFailed(exc.reason.value, f"the Antenna assertion is not valid: {exc.detail}")

    # -- helpers -----------------------------------------------------------------------------------------

    async def _existing(self, antenna_id: str) -> Antenna:
        antenna = await self._antennas.get(antenna_id)
        if antenna is None:
            raise NotFound("Antenna", antenna_id)
        return antenna

    def _check_factories(self, factories: Sequence[str]) -> None:
        unknown = sorted(f for f in factories if self._registry.get(f) is None)
        if unknown:
            raise InvalidInput([Invalid(("body", "factories"), f"no such Factory: {unknown}", "unknown_factory")])

    @staticmethod
    def _admin(caller: Principal) -> None:
        if not caller.admin:
            raise Forbidden("managing Antennas is for broker admins")

    async def _audit(self, caller: Principal, action: str, target: str, source: str | None, **detail: Any) -> None:
        await self._identities.audit(
            Audit(action=action, outcome="ok", actor=caller.id, target=target, source=source, detail=detail)
        )


def _keys(jwks: dict[str, Any]) -> dict[str, RegisteredKey]:
    """The registered keys of a stored or uploaded JWKS; an unusable upload is a 422 naming the key."""
    return registered_keys(jwks, purpose="antenna upload")


__all__ = ["NATIONAL_SCOPES", "AntennaService"]
