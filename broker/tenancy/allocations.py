"""Allocations as the API uses them: granting hours (admins), reserving at acceptance, reading usage.

A job of a user (not of a dev-mode principal) may run only on a Factory where its project has an allocation
in force; accepting it reserves its time limit times what it asks for, in the same transaction that stores it,
with a compare-and-set on the allocation, so that concurrent submissions can never overspend. An allocation
that cannot take the job is a 422 naming the project, the Factory, the hours left and the hours asked.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from broker.db.engine import Database
from broker.db.models import Allocation, AllocationUnit
from broker.db.repositories.allocations import AllocationRepository, OverBudget, Usage
from broker.db.repositories.identity import Audit, IdentityRepository
from broker.db.repositories.projects import ProjectRepository
from broker.db.types import utc_now
from broker.errors import Forbidden, Invalid, InvalidInput, NotFound, PlacementImpossible
from broker.factories.placement import Placement
from broker.factories.registry import FactoryRegistry
from broker.identity import Principal
from broker.tenancy.accounting import Reservation, hours, reservation_s, units_asked
from conveyor.problems import PlacementCode
from conveyor.spec import JobSpec


@dataclass(frozen=True, slots=True)
class Budget:
    """Where a job may go on its project's allocations: the Factories, and the allocation of each."""

    by_factory: dict[str, Allocation]

    @property
    def factories(self) -> Collection[str]:
        return self.by_factory.keys()

    def reservation(self, spec: JobSpec, placement: Placement) -> Reservation:
        allocation = self.by_factory[placement.factory.id]
        return Reservation(allocation.id, reservation_s(spec, allocation.unit, placement.time_limit_min))


def budget_of(project_id: str, in_force: Sequence[Allocation]) -> Budget:
    """The project's allocations in force, one per Factory (the one ending first, as given first); a 422 if
    there is none."""
    by_factory: dict[str, Allocation] = {}
    for allocation in in_force:
        by_factory.setdefault(allocation.factory_id, allocation)
    if not by_factory:
        raise PlacementImpossible(
            PlacementCode.NO_ALLOCATION.value,
            f"project {project_id!r} has no allocation in force on any Factory; ask an admin for one",
            {"project": project_id},
        )
    return Budget(by_factory)


class AllocationService:
    def __init__(self, database: Database, registry: FactoryRegistry, clock: Callable[[], datetime] = utc_now) -> None:
        self._allocations = AllocationRepository(database, clock)
        self._projects = ProjectRepository(database, clock)
        self._identities = IdentityRepository(database, clock)
        self._registry = registry
        self._clock = clock

    async def grant(
        self, caller: Principal, project_id: str, factory_id: str, unit: AllocationUnit, granted_hours: float, *,
        starts_at: datetime, ends_at: datetime, source: str | None = None,
    ) -> Allocation:  # fmt: skip
        if not caller.admin:
            raise Forbidden("granting allocations is for broker admins")
        if await self._projects.get(project_id) is None:
            raise NotFound("project", project_id)
        problems = []
        if factory_id not in self._registry:
            problems.append(Invalid(("body", "factory"), f"no Factory {factory_id!r}", "unknown_factory"))
        if ends_at <= starts_at:
            problems.append(Invalid(("body", "ends_at"), "must be after starts_at", "bad_period"))
        if problems:
            raise InvalidInput(problems)
        granted_s = round(granted_hours * 3600)
        allocation = await self._allocations.add(
            project_id, factory_id, unit, granted_s, starts_at=starts_at, ends_at=ends_at
        )
        await self._identities.audit(
            Audit(action="allocation.granted", outcome="ok", actor=caller.id, target=project_id, source=source,
                  detail={"factory": factory_id, "unit": unit.value, "hours": granted_hours, "id": allocation.id})
        )  # fmt: skip
        return allocation

    async def usage(self, caller: Principal, project_id: str) -> Sequence[Usage]:
        """For the project's members and admins (anyone else: 404, as for a project that does not exist)."""
        if not caller.admin and project_id not in await self._projects.roles_of(caller.id):
            raise NotFound("project", project_id)
        return await self._allocations.usage(project_id)


def over_budget(error: OverBudget, spec: JobSpec, placement: Placement) -> PlacementImpossible:
    """The 422 of a job its allocation cannot take, with the figures a user needs to act on it."""
    unit = error.unit.value.replace("_", "-")
    left, asked = hours(max(error.left_s, 0)), hours(error.need_s)
    units = units_asked(spec, error.unit)
    what = "GPUs" if error.unit is AllocationUnit.GPU_HOURS else "nodes"
    return PlacementImpossible(
        PlacementCode.ALLOCATION_EXHAUSTED.value,
        f"project {error.project_id!r} has {left} {unit} left on Factory {error.factory_id!r}; this "
        f"job asks {asked} ({placement.time_limit_min} min x {units} {what})",
        {"project": error.project_id, "factory": error.factory_id, "unit": error.unit.value,
         "hours_left": left, "hours_asked": asked},
    )  # fmt: skip


__all__ = ["AllocationService", "Budget", "budget_of", "over_budget"]
