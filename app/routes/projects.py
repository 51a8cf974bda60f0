"""``/v1/projects`` and the admin routes for users and projects: who belongs where, granted by the broker."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse

from app.deps import Admin, IdentitiesDep, ProjectsDep, Reader, Submitter, client_address
from app.problems import BODY_UNREADABLE
from app.routes.tokens import token_view
from broker.db.models import Project, ProjectRole, User
from conveyor.models import (
    MemberRequest,
    MemberView,
    NewToken,
    NewUser,
    ProjectRequest,
    ProjectView,
    UserRequest,
    UserView,
)
from conveyor.problems import Problem
from conveyor.spec import ProjectId

router = APIRouter(tags=["projects"])
ProjectPath = Annotated[ProjectId, Path()]
UserPath = Annotated[str, Path(max_length=32)]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem}}


def user_view(user: User) -> UserView:
    return UserView(
        id=user.id, name=user.name, admin=user.is_admin, issuer=user.issuer, subject=user.subject,
        created_at=user.created_at,
    )  # fmt: skip


def project_view(project: Project, role: ProjectRole | None = None) -> ProjectView:
    return ProjectView(id=project.id, title=project.title, created_at=project.created_at, role=role)


@router.post("/admin/users", status_code=201, summary="Make a local user (shown its token once)",
             responses={201: {"model": NewUser}, **BODY_UNREADABLE})  # fmt: skip
async def create_user(body: UserRequest, request: Request, caller: Admin, identities: IdentitiesDep) -> JSONResponse:
    user, issued = await identities.create_user(caller, body.name, admin=body.admin, source=client_address(request))
    answer = NewUser(user=user_view(user), token=NewToken(**token_view(issued.token).model_dump(), token=issued.text))
    return JSONResponse(answer.model_dump(mode="json"), status_code=201, headers={"Cache-Control": "no-store"})


@router.post(
    "/admin/projects",
    status_code=201,
    summary="Create a project",
    responses={409: {"model": Problem}, **BODY_UNREADABLE},
)
async def create_project(body: ProjectRequest, request: Request, caller: Admin, projects: ProjectsDep) -> ProjectView:
    return project_view(await projects.create(caller, body.id, body.title, source=client_address(request)))


@router.get("/projects", summary="The caller's projects and its role in each")
async def my_projects(caller: Reader, projects: ProjectsDep) -> list[ProjectView]:
    return [project_view(project, role) for project, role in await projects.mine(caller)]


@router.get("/projects/{project_id}/members", summary="A project's members (for its members)", responses=_NOT_FOUND)
async def members(project_id: ProjectPath, caller: Reader, projects: ProjectsDep) -> list[MemberView]:
    return [
        MemberView(user_id=user.id, name=user.name, role=member.role, added_at=member.added_at)
        for member, user in await projects.members(caller, project_id)
    ]


@router.put(
    "/projects/{project_id}/members/{user_id}",
    status_code=204,
    summary="Add a member or change its role (admins; a PI for researchers)",
    responses={**_NOT_FOUND, **BODY_UNREADABLE},
)
async def set_member(  # noqa: PLR0917 - path, body and dependencies
    project_id: ProjectPath, user_id: UserPath, body: MemberRequest, request: Request, caller: Submitter,
    projects: ProjectsDep,
) -> Response:  # fmt: skip
    role = ProjectRole(body.role)
    await projects.set_member(caller, project_id, user_id, role, source=client_address(request))
    return Response(status_code=204)


@router.delete(
    "/projects/{project_id}/members/{user_id}", status_code=204, summary="Remove a member", responses=_NOT_FOUND
)
async def remove_member(
    project_id: ProjectPath, user_id: UserPath, request: Request, caller: Submitter, projects: ProjectsDep
) -> Response:
    await projects.remove_member(caller, project_id, user_id, source=client_address(request))
    return Response(status_code=204)
