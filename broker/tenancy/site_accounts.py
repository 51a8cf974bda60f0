"""Site accounts: which Slurm user and account a job runs as on its Factory.

A Factory's operators (or an admin) map a broker user, or a whole project, to a site user and account on
that Factory; a job runs as its owner's mapping there, else its project's, else the Factory's configured
default. Mappings to root, the cluster's SlurmUser, a forbidden account, a system account (a uid outside the
site's people's uids, or a nologin/false shell) or a name outside the Factory's allowed_users are refused
when they are made (the same policy the adapter applies again at every submit). A job spec can never name an account or
QOS, and users can read, but not change, their own mappings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from broker.db.engine import Database
from broker.db.models import SiteAccount
from broker.db.repositories.identity import Audit, IdentityRepository
from broker.db.repositories.projects import ProjectRepository
from broker.db.repositories.site_accounts import SiteAccountRepository
from broker.db.types import utc_now
from broker.errors import Forbidden, Invalid, InvalidInput, NotFound
from broker.factories.registry import Factory, FactoryRegistry
from broker.identity import Principal
from slurm_adapters.errors import UnsafeRequest
from slurm_adapters.factory import site_policy

KINDS = ("user", "project")


@dataclass(frozen=True, slots=True)
class RunAs:
    """Who a job runs as on a Factory, and why (which mapping, or the Factory's default)."""

    user: str
    account: str | None
    source: str


class SiteAccountService:
    def __init__(self, database: Database, registry: FactoryRegistry, clock: Callable[[], datetime] = utc_now) -> None:
        self._mappings = SiteAccountRepository(database, clock)
        self._identities = IdentityRepository(database, clock)
        self._projects = ProjectRepository(database, clock)
        self._registry = registry

    async def run_as(self, factory: Factory, owner: str, project: str) -> RunAs:
        """The owner's mapping on ``factory``, else its project's, else the Factory's default."""
        found = {m.kind: m for m in await self._mappings.for_subjects({("user", owner), ("project", project)},
                                                                       factory.id)}  # fmt: skip
        for kind in KINDS:
            if kind in found:
                return RunAs(found[kind].slurm_user, found[kind].slurm_account, f"{kind} mapping")
        return RunAs(factory.mapping.default_user, factory.mapping.default_account, "the Factory's default")

    async def add_operator(self, caller: Principal, factory_id: str, user_id: str, *, source: str | None) -> None:
        if not caller.admin:
            raise Forbidden("naming Factory operators is for broker admins")
        self._factory(factory_id)
        if await self._identities.user(user_id) is None:
            raise NotFound("user", user_id)
        if await self._mappings.add_operator(factory_id, user_id):
            await self._audit(caller, "factory.operator_added", factory_id, source, user=user_id)

    async def set(
        self, caller: Principal, factory_id: str, kind: str, subject: str, *, slurm_user: str,
        slurm_account: str | None, source: str | None,
    ) -> SiteAccount:  # fmt: skip
        factory = await self._operated(caller, factory_id)
        if kind == "user" and await self._identities.user(subject) is None:
            raise NotFound("user", subject)
        if kind == "project" and await self._projects.get(subject) is None:
            raise NotFound("project", subject)
        try:
            site_policy(factory.adapter).check_user(slurm_user, cluster=factory.id)
        except UnsafeRequest as exc:
            raise InvalidInput([Invalid(("body", "slurm_user"), exc.message, "unsafe_site_user")]) from None
        mapping = await self._mappings.set(
            factory_id, kind, subject, slurm_user=slurm_user, slurm_account=slurm_account, set_by=caller.id
        )
        await self._audit(caller, "site_account.set", factory_id, source, kind=kind, subject=subject,
                          slurm_user=slurm_user, slurm_account=slurm_account or "")  # fmt: skip
        return mapping

    async def remove(self, caller: Principal, factory_id: str, kind: str, subject: str, *, source: str | None) -> None:
        await self._operated(caller, factory_id)
        if not await self._mappings.remove(factory_id, kind, subject):
            raise NotFound("site account", f"{kind}/{subject}")
        await self._audit(caller, "site_account.removed", factory_id, source, kind=kind, subject=subject)

    async def mine(self, caller: Principal) -> Sequence[SiteAccount]:
        """The caller's own mappings and those of its projects, on every Factory (read-only for users)."""
        subjects = {("user", caller.id)} | {("project", p) for p in await self._projects.roles_of(caller.id)}
        return await self._mappings.for_subjects(subjects)

    def _factory(self, factory_id: str) -> Factory:
        factory = self._registry.get(factory_id)
        if factory is None:
            raise NotFound("Factory", factory_id)
        return factory

    async def _operated(self, caller: Principal, factory_id: str) -> Factory:
        factory = self._factory(factory_id)
        if not caller.admin and not await self._mappings.operates(caller.id, factory_id):
            raise Forbidden(f"only Factory {factory_id}'s operators (and admins) map its site accounts")
        return factory

    async def _audit(self, caller: Principal, action: str, target: str, source: str | None, **detail: str) -> None:
        await self._identities.audit(
            Audit(action=action, outcome="ok", actor=caller.id, target=target, source=source, detail=dict(detail))
        )


__all__ = ["KINDS", "RunAs", "SiteAccountService"]
