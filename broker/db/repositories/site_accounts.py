"""Factory operators and site-account mappings."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import datetime

from sqlalchemy import delete, select, tuple_

from broker.db.engine import Database
from broker.db.models import FactoryOperator, SiteAccount
from broker.db.repositories.sql import insert_ignoring_conflict
from broker.db.types import utc_now


class SiteAccountRepository:
    def __init__(self, database: Database, clock: Callable[[], datetime] = utc_now) -> None:
        self._db = database
        self._clock = clock

    async def add_operator(self, factory_id: str, user_id: str) -> bool:
        async with self._db.write() as session:
            added = await session.scalar(
                insert_ignoring_conflict(
                    session, FactoryOperator, factory_id=factory_id, user_id=user_id, added_at=self._clock()
                ).returning(FactoryOperator.user_id)
            )
            return added is not None

    async def operates(self, user_id: str, factory_id: str) -> bool:
        async with self._db.read() as session:
            found = await session.get(FactoryOperator, (factory_id, user_id))
            return found is not None

    async def set(
        self, factory_id: str, kind: str, subject: str, *, slurm_user: str, slurm_account: str | None, set_by: str
    ) -> SiteAccount:
        """Create or replace the mapping of (Factory, kind, subject)."""
        async with self._db.write() as session:
            mapping = await session.get(SiteAccount, (factory_id, kind, subject))
            if mapping is None:
                mapping = SiteAccount(factory_id=factory_id, kind=kind, subject=subject)
                session.add(mapping)
            mapping.slurm_user, mapping.slurm_account = slurm_user, slurm_account
            mapping.set_by, mapping.set_at = set_by, self._clock()
            return mapping

    async def remove(self, factory_id: str, kind: str, subject: str) -> bool:
        async with self._db.write() as session:
            removed = await session.scalar(
                delete(SiteAccount)
                .where(SiteAccount.factory_id == factory_id, SiteAccount.kind == kind, SiteAccount.subject == subject)
                .returning(SiteAccount.subject)
            )
            return removed is not None

    async def for_subjects(
        self, subjects: Collection[tuple[str, str]], factory_id: str | None = None
    ) -> Sequence[SiteAccount]:
        """The mappings of these (kind, subject) pairs, on one Factory or on all."""
        if not subjects:
            return []
        async with self._db.read() as session:
            query = select(SiteAccount).where(tuple_(SiteAccount.kind, SiteAccount.subject).in_(sorted(subjects)))
            if factory_id is not None:
                query = query.where(SiteAccount.factory_id == factory_id)
            return (await session.scalars(query.order_by(SiteAccount.factory_id, SiteAccount.kind))).all()


__all__ = ["SiteAccountRepository"]
