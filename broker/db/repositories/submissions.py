"""What accepting a job reads, in one read transaction instead of one each: the caller's roles in the projects
(may it submit here?) and the project's allocations in force (where may the job go, and on whose hours?)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from broker.db.engine import Database
from broker.db.models import Allocation, ProjectRole
from broker.db.repositories.allocations import read_in_force
from broker.db.repositories.projects import read_roles
from broker.db.types import utc_now


@dataclass(frozen=True, slots=True)
class SubmissionFacts:
    roles: Mapping[str, ProjectRole]  # project id -> the caller's role there
    allocations: Sequence[Allocation]  # the submitted-to project's, in force now, the one ending first first


class SubmissionRepository:
    def __init__(self, database: Database, clock: Callable[[], datetime] = utc_now) -> None:
        self._db = database
        self._clock = clock

    async def facts(self, user_id: str, project_id: str) -> SubmissionFacts:
        async with self._db.read() as session:
            roles = await read_roles(session, user_id)
            allocations = await read_in_force(session, project_id, self._clock()) if project_id in roles else []
            return SubmissionFacts(roles, allocations)
