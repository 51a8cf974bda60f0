"""Users, their personal access tokens, and the audit log."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from broker.db.engine import Database
from broker.db.models import ApiToken, AuditEvent, User
from broker.db.types import utc_now
from broker.ids import random_id


@dataclass(frozen=True, slots=True)
class Audit:
    """One audit record: who (None when authentication failed), what, on what, from where, with what outcome."""

    action: str
    outcome: str
    actor: str | None = None
    target: str | None = None
    source: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class IdentityRepository:
    """Reads are one indexed lookup each (a token check runs on every request); writes are audited by callers."""

    def __init__(self, database: Database, clock: Callable[[], datetime] = utc_now) -> None:
        self._db = database
        self._clock = clock

    async def create_user(
        self, name: str, *, is_admin: bool = False, issuer: str | None = None, subject: str | None = None
    ) -> User:
        user = User(
            id=random_id("usr_"), name=name, issuer=issuer, subject=subject, is_admin=is_admin,
            created_at=self._clock(), disabled_at=None,
        )  # fmt: skip
        async with self._db.write() as session:
            session.add(user)
        return user

    async def user_by_identity(self, issuer: str, subject: str) -> User | None:
        async with self._db.read() as session:
            return await session.scalar(select(User).where(User.issuer == issuer, User.subject == subject))

    async def create_user_once(self, name: str, *, issuer: str, subject: str) -> User:
        """The user of (issuer, subject), made if missing: two first requests at once make one user."""
        try:
            return await self.create_user(name, issuer=issuer, subject=subject)
        except IntegrityError:
            existing = await self.user_by_identity(issuer, subject)
            if existing is None:
                raise
            return existing

    async def user(self, user_id: str) -> User | None:
        async with self._db.read() as session:
            return await session.get(User, user_id)

    async def admin_count(self) -> int:
        async with self._db.read() as session:
            count = await session.scalar(select(func.count()).select_from(User).where(User.is_admin.is_(True)))
            return int(count or 0)

    async def add_token(
        self, user_id: str, *, name: str, prefix: str, digest: str, scopes: Sequence[str], expires_at: datetime
    ) -> ApiToken:
        token = ApiToken(
            id=random_id("tok_"), user_id=user_id, name=name, prefix=prefix, digest=digest, scopes=list(scopes),
            created_at=self._clock(), expires_at=expires_at, revoked_at=None,
        )  # fmt: skip
        async with self._db.write() as session:
            session.add(token)
        return token

    async def token_with_user(self, prefix: str) -> tuple[ApiToken, User] | None:
        async with self._db.read() as session:
            row = (
                await session.execute(
                    select(ApiToken, User).join(User, User.id == ApiToken.user_id).where(ApiToken.prefix == prefix)
                )
            ).first()
            return None if row is None else (row[0], row[1])

    async def tokens_of(self, user_id: str) -> Sequence[ApiToken]:
        async with self._db.read() as session:
            query = select(ApiToken).where(ApiToken.user_id == user_id).order_by(ApiToken.created_at, ApiToken.id)
            return (await session.scalars(query)).all()

    async def revoke_token(self, user_id: str, token_id: str) -> ApiToken | None:
        """Revoke one of the user's tokens (revoking twice keeps the first time); None if it is not theirs."""
        async with self._db.write() as session:
            await session.execute(
                update(ApiToken)
                .where(ApiToken.id == token_id, ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))
                .values(revoked_at=self._clock())
            )
            token = await session.get(ApiToken, token_id)
            return token if token is not None and token.user_id == user_id else None

    async def audit(self, record: Audit) -> None:
        event = AuditEvent(
            at=self._clock(), actor=record.actor, action=record.action, target=record.target, source=record.source,
            outcome=record.outcome, detail=record.detail,
        )  # fmt: skip
        async with self._db.write() as session:
            session.add(event)

    async def audit_log(self, *, actor: str | None = None, limit: int = 100) -> Sequence[AuditEvent]:
        """Newest first (tests and the admin's view)."""
        async with self._db.read() as session:
            query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
            if actor is not None:
                query = query.where(AuditEvent.actor == actor)
            return (await session.scalars(query)).all()
