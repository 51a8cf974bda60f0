"""``/v1/admin``: operations for broker admins. Each is an audited event (factory_events, with the caller's address)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request

from app.deps import Admin, FactoryServiceDep, client_address
from app.problems import BODY_UNREADABLE
from conveyor.models import DrainRequest, FactoryView
from conveyor.problems import Problem

router = APIRouter(prefix="/admin", tags=["admin"])
FactoryIdPath = Annotated[str, Path(max_length=64)]
_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"description": "Not an admin", "model": Problem},
    404: {"model": Problem},
}


@router.post(
    "/factories/{factory_id}/drain",
    summary="Stop new placements on a Factory",
    responses={**_ERRORS, **BODY_UNREADABLE},
)
async def drain(
    factory_id: FactoryIdPath, body: DrainRequest, request: Request, caller: Admin, service: FactoryServiceDep
) -> FactoryView:
    """Jobs already there continue; queued jobs go elsewhere or wait. Draining twice keeps the first reason."""
    return await service.drain(caller, factory_id, body.reason, source=client_address(request))


@router.post("/factories/{factory_id}/undrain", summary="Place jobs on a Factory again", responses=_ERRORS)
async def undrain(
    factory_id: FactoryIdPath, request: Request, caller: Admin, service: FactoryServiceDep
) -> FactoryView:
    return await service.undrain(caller, factory_id, source=client_address(request))
