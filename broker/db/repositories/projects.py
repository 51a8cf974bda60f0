"""Projects and memberships: who belongs to which project, and as what."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from broker.db.engine import Database
from broker.db.models import Project, ProjectMember, ProjectRole, User
from broker.db.repositories.sql import insert_ignoring_conflict
from broker.db.types import utc_now


async def read_roles(session: AsyncSession, user_id: str) -> dict[str, ProjectRole]:
    """Project id -> the user's role there, inside a caller's transaction."""
    rows = await session.execute(
        select(ProjectMember.project_id, ProjectMember.role).where(ProjectMember.user_id == user_id)
    )
    return {project_id: role for project_id, role in rows}


class ProjectRepository:
    def __init__(self, database: Database, clock: Callable[[], datetime] = utc_now) -> None:
        self._db = database
        self._clock = clock

    async def create(self, project_id: str, title: str) -> Project | None:
        """The new project; None if one with that id exists already."""
        project = Project(id=project_id, title=title, created_at=self._clock())
        try:
            async with self._db.write() as session:
                session.add(project)
        except IntegrityError:
            return None
        return project

    async def get(self, project_id: str) -> Project | None:
        async with self._db.read() as session:
            return await session.get(Project, project_id)

    async def roles_of(self, user_id: str) -> Mapping[str, ProjectRole]:
        """Project id -> the user's role there: one indexed read, made on every job request."""
        async with self._db.read() as session:
            return await read_roles(session, user_id)

    async def set_member(self, project_id: str, user_id: str, role: ProjectRole) -> bool:
        """Add the member or change its role; False when it already had exactly that role."""
        async with self._db.write() as session:
            inserted = await session.scalar(
                insert_ignoring_conflict(
                    session, ProjectMember, project_id=project_id, user_id=user_id, role=role, added_at=self._clock()
                ).returning(ProjectMember.user_id)
            )
            if inserted is not None:
                return True
            changed = await session.scalar(
                update(ProjectMember)
                .where(ProjectMember.project_id == project_id, ProjectMember.user_id == user_id)
                .where(ProjectMember.role != role)
                .values(role=role)
                .returning(ProjectMember.user_id)
            )
            return changed is not None

    async def remove_member(self, project_id: str, user_id: str) -> bool:
        async with self._db.write() as session:
            removed = await session.scalar(
                delete(ProjectMember)
                .where(ProjectMember.project_id == project_id, ProjectMember.user_id == user_id)
                .returning(ProjectMember.user_id)
            )
            return removed is not None

    async def members(self, project_id: str) -> Sequence[tuple[ProjectMember, User]]:
        async with self._db.read() as session:
            rows = await session.execute(
                select(ProjectMember, User)
                .join(User, User.id == ProjectMember.user_id)
                .where(ProjectMember.project_id == project_id)
                .order_by(ProjectMember.added_at, User.id)
            )
            return [(member, user) for member, user in rows]

    async def projects_of(self, user_id: str) -> Sequence[tuple[Project, ProjectRole]]:
        async with self._db.read() as session:
            rows = await session.execute(
                select(Project, ProjectMember.role)
                .join(ProjectMember, ProjectMember.project_id == Project.id)
                .where(ProjectMember.user_id == user_id)
                .order_by(Project.id)
            )
            return [(project, role) for project, role in rows]
