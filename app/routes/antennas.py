"""Antennas: admins register them (country, linked Factories, keys, limits) and name their operators; an
operator registers the Antenna's national users so PIs and the operator can add them to projects."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response

from app.deps import Admin, Reader, StateDep, client_address
from app.problems import BODY_UNREADABLE
from app.routes.projects import user_view
from broker.antennas.assertion import NationalSubject, parse_jwks
from broker.antennas.service import AntennaService
from broker.db.models import Antenna
from conveyor.models import AntennaId, AntennaRequest, AntennaUpdate, AntennaView, PublicJwks, UserView
from conveyor.problems import Problem

router = APIRouter(tags=["antennas"])
AntennaPath = Annotated[AntennaId, Path()]
_ERRORS: dict[int | str, dict[str, Any]] = {403: {"model": Problem}, 404: {"model": Problem}}


async def get_antennas(state: StateDep) -> AntennaService:
    return state.antennas


AntennasDep = Annotated[AntennaService, Depends(get_antennas)]


def jwks_document(jwks: PublicJwks) -> dict[str, Any]:
    """An uploaded JWKS as the broker stores and parses it: the members given, no nulls."""
    return jwks.model_dump(mode="json", exclude_none=True)


def antenna_view(antenna: Antenna) -> AntennaView:
    return AntennaView(
        id=antenna.id, country=antenna.country, title=antenna.title, factories=antenna.factories,
        kids=sorted(parse_jwks(antenna.jwks)), requests_per_minute=antenna.requests_per_minute,
        max_active_jobs=antenna.max_active_jobs, created_at=antenna.created_at, updated_at=antenna.updated_at,
    )  # fmt: skip


@router.post("/admin/antennas", status_code=201, summary="Register an Antenna with its public keys",
             responses={**_ERRORS, 409: {"model": Problem}, **BODY_UNREADABLE})  # fmt: skip
async def register_antenna(body: AntennaRequest, request: Request, caller: Admin, antennas: AntennasDep) -> AntennaView:
    antenna = await antennas.register(
        caller, body.id, country=body.country, title=body.title, factories=body.factories,
        jwks=jwks_document(body.jwks), requests_per_minute=body.requests_per_minute,
        max_active_jobs=body.max_active_jobs, source=client_address(request),
    )  # fmt: skip
    return antenna_view(antenna)


@router.get("/admin/antennas", summary="Every Antenna", responses=_ERRORS)
async def list_antennas(caller: Admin, antennas: AntennasDep) -> list[AntennaView]:
    return [antenna_view(antenna) for antenna in await antennas.antennas(caller)]


@router.get("/antennas/{antenna_id}", summary="One Antenna (admins, and its operators)", responses=_ERRORS)
async def get_antenna(antenna_id: AntennaPath, caller: Reader, antennas: AntennasDep) -> AntennaView:
    return antenna_view(await antennas.antenna(caller, antenna_id))


@router.patch("/admin/antennas/{antenna_id}", summary="Change an Antenna's Factories, limits or title",
              responses={**_ERRORS, **BODY_UNREADABLE})  # fmt: skip
async def update_antenna(
    antenna_id: AntennaPath, body: AntennaUpdate, request: Request, caller: Admin, antennas: AntennasDep
) -> AntennaView:
    antenna = await antennas.update(caller, antenna_id, source=client_address(request), **body.model_dump())
    return antenna_view(antenna)


@router.put("/admin/antennas/{antenna_id}/keys", summary="Replace an Antenna's public keys (rotation)",
            responses={**_ERRORS, **BODY_UNREADABLE})  # fmt: skip
async def replace_antenna_keys(
    antenna_id: AntennaPath, jwks: PublicJwks, request: Request, caller: Admin, antennas: AntennasDep
) -> AntennaView:
    document = jwks_document(jwks)
    return antenna_view(await antennas.replace_keys(caller, antenna_id, document, source=client_address(request)))


@router.put("/admin/antennas/{antenna_id}/operators/{user_id}", status_code=204,
            summary="Name a user an operator of an Antenna", responses=_ERRORS)  # fmt: skip
async def add_antenna_operator(
    antenna_id: AntennaPath, user_id: Annotated[str, Path(max_length=32)], request: Request, caller: Admin,
    antennas: AntennasDep,
) -> Response:  # fmt: skip
    await antennas.add_operator(caller, antenna_id, user_id, source=client_address(request))
    return Response(status_code=204)


@router.put("/antennas/{antenna_id}/users/{subject}", summary="The broker user of one of an Antenna's national users",
            responses=_ERRORS)  # fmt: skip
async def national_user(
    antenna_id: AntennaPath, subject: Annotated[NationalSubject, Path()], request: Request, caller: Reader,
    antennas: AntennasDep,
) -> UserView:  # fmt: skip
    return user_view(await antennas.national_user(caller, antenna_id, subject, source=client_address(request)))
