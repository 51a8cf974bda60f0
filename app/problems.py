"""Every error answer, in one place: exceptions -> RFC 9457 problem details (``application/problem+json``).

Domain errors (``broker.errors``), FastAPI's validation errors, HTTP errors raised by the framework itself
(unknown route, wrong method), database outages (503 with Retry-After) and anything unexpected (a 500 that
says nothing of the internals; the traceback goes to the log) all leave through :func:`install`'s handlers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from broker import errors
from broker.agents.errors import SessionExpired, UnknownFactory, UnknownSession
from broker.db.repositories.sql import sqlstate_starts_with
from conveyor.problems import (
    AGENT_SESSION_ENDED,
    ALREADY_EXISTS,
    CANCEL_NOT_POSSIBLE,
    FORBIDDEN,
    IDEMPOTENCY_CONFLICT,
    INTERNAL_ERROR,
    NOT_FOUND,
    OUTPUT_UNAVAILABLE,
    PLACEMENT_FAILED,
    PROBLEM_MEDIA_TYPE,
    RATE_LIMITED,
    SECRETS_NOT_CONFIGURED,
    UNAUTHORIZED,
    UNAVAILABLE,
    VALIDATION_ERROR,
    FieldError,
    Problem,
    field_errors,
)

log = logging.getLogger("conveyor.api")
DATABASE_RETRY_AFTER_S = 5
LISTED_ERRORS = 5  # how many field errors the detail text spells out (the errors member has them all)


class Unauthenticated(Exception):
    """No or a wrong credential. ``challenge`` is the WWW-Authenticate value (RFC 6750)."""

    def __init__(self, message: str, challenge: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.challenge = challenge
        self.reason = reason  # machine-readable: malformed, unknown, expired, revoked, disabled


def problem_response(problem: Problem, headers: Mapping[str, str] | None = None) -> JSONResponse:
    all_headers = dict(headers or {})
    if problem.retry_after_s is not None:
        all_headers.setdefault("Retry-After", str(problem.retry_after_s))
    status = problem.status or 500
    return JSONResponse(problem.body(), status_code=status, headers=all_headers, media_type=PROBLEM_MEDIA_TYPE)


def _where(loc: list[str | int]) -> str:
    return ".".join(str(part) for part in loc) or "request"


def validation_problem(errs: list[FieldError], instance: str) -> Problem:
    listed = "; ".join(f"{_where(e.loc)}: {e.msg}" for e in errs[:LISTED_ERRORS])
    more = f" (and {len(errs) - LISTED_ERRORS} more)" if len(errs) > LISTED_ERRORS else ""
    count = f"{len(errs)} field{'s' if len(errs) != 1 else ''} invalid"
    return VALIDATION_ERROR.problem(f"{count}: {listed}{more}", instance=instance, errors=errs)


def domain_problem(error: errors.BrokerError, instance: str) -> Problem:  # noqa: PLR0911, PLR0912 - one branch per error
    """The problem for a domain error; the single mapping from the broker's errors to HTTP."""
    if isinstance(error, errors.NotFound | UnknownFactory | UnknownSession):
        return NOT_FOUND.problem(error.message, instance=instance)
    if isinstance(error, SessionExpired):
        return AGENT_SESSION_ENDED.problem(error.message, instance=instance)
    if isinstance(error, errors.Forbidden):
        return FORBIDDEN.problem(error.message, instance=instance)
    if isinstance(error, errors.InvalidInput):
        errs = [FieldError(loc=list(e.loc), msg=e.msg, type=e.type) for e in error.errors]
        return validation_problem(errs, instance)
    if isinstance(error, errors.IdempotencyKeyReused):
        return IDEMPOTENCY_CONFLICT.problem(error.message, instance=instance, job_id=error.job_id)
    if isinstance(error, errors.PlacementImpossible):
        details: dict[str, Any] = dict(error.details)
        # The code is already a full PlacementCode (placement_failed.<reason>); problem() checks that.
        return PLACEMENT_FAILED.problem(error.message, code=error.code, instance=instance, **details)
    if isinstance(error, errors.CancelNotPossible):
        return CANCEL_NOT_POSSIBLE.problem(error.message, instance=instance)
    if isinstance(error, errors.OutputUnavailable):
        return OUTPUT_UNAVAILABLE.problem(
            error.message, code=f"{OUTPUT_UNAVAILABLE.code}.{error.reason}", instance=instance
        )
    if isinstance(error, errors.FactoryUnreachable):
        return UNAVAILABLE.problem(
            error.message, instance=instance, retry_after_s=error.retry_after_s, factory=error.factory
        )
    if isinstance(error, errors.TooManyRequests):
        code = f"{RATE_LIMITED.code}.{error.kind}" if error.kind else None
        return RATE_LIMITED.problem(error.message, code=code, instance=instance, retry_after_s=error.retry_after_s)
    if isinstance(error, errors.SecretsUnavailable):
        return SECRETS_NOT_CONFIGURED.problem(error.message, instance=instance)
    if isinstance(error, errors.AlreadyExists):
        return ALREADY_EXISTS.problem(error.message, instance=instance)
    if isinstance(error, errors.IdentityProviderUnavailable):
        return UNAVAILABLE.problem(
            error.message, code=f"{UNAVAILABLE.code}.identity_provider", instance=instance,
            retry_after_s=error.retry_after_s,
        )  # fmt: skip
    log.error("broker error without a problem mapping: %r", error)
    return INTERNAL_ERROR.problem("the broker failed to answer this request", instance=instance)


def _is_database_outage(exc: BaseException) -> bool:
    if isinstance(exc, sa.OperationalError | sa.InterfaceError | sa.TimeoutError):
        return True  # connection refused or lost, SQLite locked beyond busy_timeout, pool exhausted
    if isinstance(exc, sa.DBAPIError) and (
        exc.connection_invalidated or sqlstate_starts_with(exc.orig, _OUTAGE_SQLSTATE_PREFIXES)
    ):
        return True
    return isinstance(exc, ConnectionError)  # asyncpg raises OSError subclasses unwrapped on connect


# PostgreSQL SQLSTATEs that mean the server is unreachable or going away, not that the request was wrong:
# class 08 (connection exception) and 57P (operator intervention: admin_shutdown, crash_shutdown,
# cannot_connect_now "the database system is shutting down / starting up", database_dropped). SQLAlchemy
# wraps asyncpg's errors for these in a plain DBAPIError, without connection_invalidated when they come at
# connect time: without this, a server being stopped or restarted would answer 500 for a moment.
_OUTAGE_SQLSTATE_PREFIXES = ("08", "57P")


async def _on_domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.BrokerError)
    return problem_response(domain_problem(exc, request.url.path))


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return problem_response(validation_problem(field_errors(exc.errors()), request.url.path))


async def _on_unauthenticated(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Unauthenticated)
    code = f"{UNAUTHORIZED.code}.{exc.reason}" if exc.reason else None
    problem = UNAUTHORIZED.problem(exc.message, code=code, instance=request.url.path)
    return problem_response(problem, {"WWW-Authenticate": exc.challenge})


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method the app serves at the request's path, each tried through the routes' own matching.

    (Starlette answers a 405 from the first route whose path matched, and FastAPI makes one route per method,
    so the Allow it sends names that one route's methods only.)"""
    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(route.matches(_probe(request.scope, method))[0] is Match.FULL for route in routes)
    ]


def _probe(scope: Mapping[str, Any], method: str) -> dict[str, Any]:
    """A fresh scope for ``method`` at the path of ``scope`` (none of the routing state the request gathered)."""
    return {"type": "http", "method": method, "path": scope["path"], "root_path": scope.get("root_path", ""),
            "headers": scope.get("headers", [])}  # fmt: skip


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    path = request.url.path
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        problem = NOT_FOUND.problem(f"no such resource: {path}", instance=path)
    else:
        problem = Problem.from_status(exc.status_code, str(exc.detail)).model_copy(update={"instance": path})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request))
    return problem_response(problem, headers)


async def _on_database_error(request: Request, exc: Exception) -> JSONResponse:
    if not _is_database_outage(exc):
        return await _on_unexpected(request, exc)
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
    problem = UNAVAILABLE.problem(
        "the broker's database is unavailable; nothing was changed by this request, retry later",
        code=f"{UNAVAILABLE.code}.database",
        instance=request.url.path,
        retry_after_s=DATABASE_RETRY_AFTER_S,
    )
    return problem_response(problem)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    detail = "the broker failed to answer this request; it has been logged"
    problem = INTERNAL_ERROR.problem(detail, instance=request.url.path)
    return problem_response(problem)


_PROBLEM_REF = "#/components/schemas/Problem"
# What an operation with a JSON body may answer when the body is not plain UTF-8 JSON (app.plain_json): a 400
# malformed_request problem. A body that decodes but is not valid JSON is a 422 (json_invalid).
BODY_UNREADABLE: dict[int | str, dict[str, Any]] = {
    400: {
        "description": "The request body could not be read: not UTF-8, a byte order mark, or a duplicate key",
        "model": Problem,
    }
}


def document_problem_media_type(document: dict[str, Any]) -> dict[str, Any]:
    """Say in an OpenAPI document what the handlers above send: every Problem answer is
    ``application/problem+json``. (FastAPI documents a response ``model`` under the route's own media type,
    application/json, or text/plain for /metrics.) Changes ``document`` in place and returns it."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            for response in operation.get("responses", {}).values():
                content = response.get("content") or {}
                schemas = [media.get("schema", {}).get("$ref") for media in content.values()]
                if schemas and all(ref == _PROBLEM_REF for ref in schemas):
                    response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": _PROBLEM_REF}}}
    return document


def install(app: FastAPI) -> None:
    """Register every handler on ``app``."""
    app.add_exception_handler(errors.BrokerError, _on_domain_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(Unauthenticated, _on_unauthenticated)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(sa.SQLAlchemyError, _on_database_error)
    app.add_exception_handler(ConnectionError, _on_database_error)
    app.add_exception_handler(Exception, _on_unexpected)
