"""Projects and tenancy: who may run jobs in which project, and whose jobs each caller sees.

A researcher submits to, and sees, only their own jobs in the projects they are a member of; a project's PI
sees and acts on all of that project's jobs. Another project's job is simply not there for the caller (the
API answers 404, exactly as for a job that does not exist). Only the broker grants membership: admins, and a
project's PIs for researchers of their project; nothing a caller sends can make it a member.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from broker.db.engine import Database
from broker.db.models import Project, ProjectMember, ProjectRole, User
from broker.db.repositories.antennas import AntennaRepository, national_antenna
from broker.db.repositories.identity import Audit, IdentityRepository
from broker.db.repositories.pagination import Visibility
from broker.db.repositories.projects import ProjectRepository
from broker.db.types import utc_now
from broker.errors import AlreadyExists, Forbidden, NotFound
from broker.identity import Principal


@dataclass(frozen=True, slots=True)
class Tenancy:
    """One caller's place in the projects: what it may submit to, and which jobs it sees."""

    caller: Principal
    roles: Mapping[str, ProjectRole]

    def may_submit_to(self, project: str) -> bool:
        return self.caller.any_project or project in self.roles

    def sees(self, owner: str, project: str) -> bool:
        if self.roles.get(project) is ProjectRole.PI:
            return True
        return owner == self.caller.id and self.may_submit_to(project)

    def visibility(self) -> Visibility:
        leads = frozenset(project for project, role in self.roles.items() if role is ProjectRole.PI)
        member_of = None if self.caller.any_project else frozenset(self.roles)
        return Visibility(owner=self.caller.id, member_of=member_of, leads=leads)


class ProjectService:
    def __init__(self, database: Database, clock: Callable[[], datetime] = utc_now) -> None:
        self._projects = ProjectRepository(database, clock)
        self._identities = IdentityRepository(database, clock)
        self._antennas = AntennaRepository(database, clock)

    async def tenancy(self, caller: Principal) -> Tenancy:
        roles = {} if caller.any_project else await self._projects.roles_of(caller.id)
        return Tenancy(caller, roles)

    async def create(self, caller: Principal, project_id: str, title: str, *, source: str | None = None) -> Project:
        if not caller.admin:
            raise Forbidden("creating projects is for broker admins")
        project = await self._projects.create(project_id, title)
        if project is None:
            raise AlreadyExists(f"project {project_id!r} exists already")
        await self._audit(caller, "project.created", project_id, source, title=title)
        return project

    async def mine(self, caller: Principal) -> Sequence[tuple[Project, ProjectRole]]:
        return await self._projects.projects_of(caller.id)

    async def members(self, caller: Principal, project_id: str) -> Sequence[tuple[ProjectMember, User]]:
        await self._project_for(caller, project_id, manage=False)
        return await self._projects.members(project_id)

    async def set_member(
        self, caller: Principal, project_id: str, user_id: str, role: ProjectRole, *, source: str | None = None
    ) -> None:
        """Admins grant any role; a PI adds or changes researchers of their own project; an Antenna's
        operator adds that Antenna's national users as researchers (to a project it names, which the user's
        PI may later remove them from)."""
        user = await self._identities.user(user_id)
        if user is not None and await self._antennas.operates(caller.id, national_antenna(user) or ""):
            if await self._projects.get(project_id) is None:
                raise NotFound("project", project_id)
        else:
            await self._project_for(caller, project_id, manage=True)
        if not caller.admin and role is not ProjectRole.RESEARCHER:
            raise Forbidden("only broker admins make PIs")
        if user is None:
            raise NotFound("user", user_id)
        if await self._projects.set_member(project_id, user_id, role):
            await self._audit(caller, "project.member_set", project_id, source, user=user_id, role=role.value)

    async def remove_member(
        self, caller: Principal, project_id: str, user_id: str, *, source: str | None = None
    ) -> None:
        await self._project_for(caller, project_id, manage=True)
        if not caller.admin and (await self._projects.roles_of(user_id)).get(project_id) is ProjectRole.PI:
            raise Forbidden("only broker admins remove PIs")
        if not await self._projects.remove_member(project_id, user_id):
            raise NotFound("member", user_id)
        await self._audit(caller, "project.member_removed", project_id, source, user=user_id)

    async def _project_for(self, caller: Principal, project_id: str, *, manage: bool) -> Project:
        """The project, if the caller may see it (admins, members) or manage it (admins, its PIs); else 404."""
        project = await self._projects.get(project_id)
        role = None if caller.admin else (await self._projects.roles_of(caller.id)).get(project_id)
        allowed = caller.admin or (role is ProjectRole.PI if manage else role is not None)
        if project is None or not allowed:
            raise NotFound("project", project_id)
        return project

    async def _audit(self, caller: Principal, action: str, target: str, source: str | None, **detail: str) -> None:
        await self._identities.audit(
            Audit(action=action, outcome="ok", actor=caller.id, target=target, source=source, detail=dict(detail))
        )


__all__ = ["ProjectService", "Tenancy"]
