"""Site accounts: Factory operators (named by admins) map users and projects to Slurm users and accounts."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response

from app.deps import Admin, Reader, SiteAccountsDep, Submitter, client_address
from app.problems import BODY_UNREADABLE
from broker.db.models import SiteAccount
from conveyor.models import SiteAccountKind, SiteAccountRequest, SiteAccountView
from conveyor.problems import Problem

router = APIRouter(tags=["site accounts"])
FactoryPath = Annotated[str, Path(max_length=64)]
SubjectPath = Annotated[str, Path(max_length=64)]
_ERRORS: dict[int | str, dict[str, Any]] = {403: {"model": Problem}, 404: {"model": Problem}}


def site_account_view(mapping: SiteAccount) -> SiteAccountView:
    return SiteAccountView(
        factory=mapping.factory_id, kind=mapping.kind, subject=mapping.subject, slurm_user=mapping.slurm_user,
        slurm_account=mapping.slurm_account, set_by=mapping.set_by, set_at=mapping.set_at,
    )  # fmt: skip


@router.put("/admin/factories/{factory_id}/operators/{user_id}", status_code=204,
            summary="Name a user an operator of a Factory", responses=_ERRORS)  # fmt: skip
async def add_operator(
    factory_id: FactoryPath, user_id: Annotated[str, Path(max_length=32)], request: Request, caller: Admin,
    accounts: SiteAccountsDep,
) -> Response:  # fmt: skip
    await accounts.add_operator(caller, factory_id, user_id, source=client_address(request))
    return Response(status_code=204)


@router.put("/factories/{factory_id}/accounts/{kind}/{subject}", summary="Map a user or project to a site account",
            responses={**_ERRORS, **BODY_UNREADABLE})  # fmt: skip
async def set_site_account(  # noqa: PLR0917 - path, body and dependencies
    factory_id: FactoryPath, kind: SiteAccountKind, subject: SubjectPath, body: SiteAccountRequest,
    request: Request, caller: Submitter, accounts: SiteAccountsDep,
) -> SiteAccountView:  # fmt: skip
    """For the Factory's operators and admins. Root, SlurmUser and system accounts are refused (422)."""
    mapping = await accounts.set(
        caller, factory_id, kind, subject, slurm_user=body.slurm_user, slurm_account=body.slurm_account,
        source=client_address(request),
    )  # fmt: skip
    return site_account_view(mapping)


@router.delete("/factories/{factory_id}/accounts/{kind}/{subject}", status_code=204, summary="Remove a mapping",
               responses=_ERRORS)  # fmt: skip
async def remove_site_account(  # noqa: PLR0917 - path and dependencies
    factory_id: FactoryPath, kind: SiteAccountKind, subject: SubjectPath, request: Request, caller: Submitter,
    accounts: SiteAccountsDep,
) -> Response:  # fmt: skip
    await accounts.remove(caller, factory_id, kind, subject, source=client_address(request))
    return Response(status_code=204)


@router.get("/me/accounts", summary="The caller's own site accounts and its projects' (read-only)")
async def my_site_accounts(caller: Reader, accounts: SiteAccountsDep) -> list[SiteAccountView]:
    return [site_account_view(mapping) for mapping in await accounts.mine(caller)]
