"""Allocations: admins grant hours per project and Factory; members read their project's usage."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request

from app.deps import Admin, AllocationsDep, Reader, client_address
from app.problems import BODY_UNREADABLE
from broker.db.models import Allocation, AllocationUnit
from broker.tenancy.accounting import hours
from conveyor.models import AllocationRequest, AllocationView
from conveyor.problems import Problem
from conveyor.spec import ProjectId

router = APIRouter(tags=["allocations"])
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem}}


def allocation_view(
    allocation: Allocation, *, reserved_s: int = 0, charged_s: int = 0, jobs: int = 0
) -> AllocationView:
    return AllocationView(
        id=allocation.id, project=allocation.project_id, factory=allocation.factory_id, unit=allocation.unit.value,
        granted_hours=hours(allocation.granted_s), charged_hours=hours(charged_s), reserved_hours=hours(reserved_s),
        left_hours=hours(allocation.granted_s - allocation.used_s), jobs=jobs, starts_at=allocation.starts_at,
        ends_at=allocation.ends_at,
    )  # fmt: skip


@router.post(
    "/admin/allocations", status_code=201, summary="Grant hours to a project on a Factory",
    responses={**_NOT_FOUND, **BODY_UNREADABLE},
)  # fmt: skip
async def grant(
    body: AllocationRequest, request: Request, caller: Admin, allocations: AllocationsDep
) -> AllocationView:
    allocation = await allocations.grant(
        caller, body.project, body.factory, AllocationUnit(body.unit), body.hours, starts_at=body.starts_at,
        ends_at=body.ends_at, source=client_address(request),
    )  # fmt: skip
    return allocation_view(allocation)


@router.get("/projects/{project_id}/usage", summary="The project's allocations and their use", responses=_NOT_FOUND)
async def usage(
    project_id: Annotated[ProjectId, Path()], caller: Reader, allocations: AllocationsDep
) -> list[AllocationView]:
    return [
        allocation_view(u.allocation, reserved_s=u.reserved_s, charged_s=u.charged_s, jobs=u.jobs)
        for u in await allocations.usage(caller, project_id)
    ]
