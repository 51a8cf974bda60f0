"""``/v1/me`` and ``/v1/tokens``: who the caller is, and the caller's own personal access tokens."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse

from app.deps import IdentitiesDep, Reader, Submitter, client_address
from app.problems import BODY_UNREADABLE
from broker.db.models import ApiToken
from conveyor.models import Me, NewToken, TokenRequest, TokenView
from conveyor.problems import Problem

router = APIRouter(tags=["identity"])
TokenIdPath = Annotated[str, Path(max_length=32)]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem}}


def token_view(token: ApiToken) -> TokenView:
    return TokenView(
        id=token.id, name=token.name, prefix=token.prefix, scopes=token.scopes, created_at=token.created_at,
        expires_at=token.expires_at, revoked_at=token.revoked_at,
    )  # fmt: skip


@router.get("/me", summary="Who the caller is")
async def whoami(caller: Reader) -> Me:
    return Me(
        id=caller.id, name=caller.name, admin=caller.admin, scopes=sorted(s.value for s in caller.scopes),
        token_id=caller.token_id, antenna=caller.antenna, subject=caller.subject,
        factories=None if caller.factories is None else sorted(caller.factories),
    )  # fmt: skip


@router.post(
    "/tokens",
    status_code=201,
    summary="Make a personal access token (shown once)",
    responses={201: {"model": NewToken}, **BODY_UNREADABLE},
)
async def create_token(
    body: TokenRequest, request: Request, caller: Submitter, identities: IdentitiesDep
) -> JSONResponse:
    """The token carries at most the calling credential's scopes; only its digest is kept."""
    issued = await identities.issue(caller, body.name, body.scopes, days=body.days, source=client_address(request))
    answer = NewToken(**token_view(issued.token).model_dump(), token=issued.text)
    return JSONResponse(answer.model_dump(mode="json"), status_code=201, headers={"Cache-Control": "no-store"})


@router.get("/tokens", summary="The caller's personal access tokens (never their secrets)")
async def list_tokens(caller: Reader, identities: IdentitiesDep) -> list[TokenView]:
    return [token_view(token) for token in await identities.tokens(caller)]


@router.delete("/tokens/{token_id}", summary="Revoke one of the caller's tokens", responses=_NOT_FOUND)
async def revoke_token(token_id: TokenIdPath, request: Request, caller: Reader, identities: IdentitiesDep) -> TokenView:
    """Revoking is always allowed (even with a read-only token); revoking twice keeps the first time."""
    return token_view(await identities.revoke(caller, token_id, source=client_address(request)))
