"""``/v1/factories``: the configured Factories with their health, drain, partitions and capacity (read-only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from app.deps import FactoryServiceDep, Reader
from conveyor.models import FactoryView
from conveyor.problems import Problem

router = APIRouter(tags=["factories"])


@router.get("/factories", summary="Every Factory, in placement order")
async def list_factories(caller: Reader, service: FactoryServiceDep) -> list[FactoryView]:
    del caller  # any authenticated caller may see them
    return await service.views()


@router.get("/factories/{factory_id}", summary="One Factory", responses={404: {"model": Problem}})
async def get_factory(
    factory_id: Annotated[str, Path(max_length=64)], caller: Reader, service: FactoryServiceDep
) -> FactoryView:
    del caller
    return await service.view(factory_id)
