"""The gateway's app factory: ``create_app(settings)`` checks the configuration, and its lifespan owns the
shared HTTP client to the broker (and the OIDC verifier, when issuers are configured).

Configuration is checked in :func:`create_app`, before anything listens: a bad key or users file is a
:class:`GatewayConfigError` with one clear message. Every answer the gateway makes itself is a problem
(``application/problem+json``) shaped as the broker's, so clients handle both alike.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.gateway import proxy
from app.gateway.settings import GatewayConfigError, GatewaySettings, SigningKey, load_signing_key
from app.gateway.users import (
    AuthenticationFailed,
    IdentityProviderUnavailable,
    NationalUsers,
    TokenEntry,
    issuer_tag,
    load_users,
)
from app.problems import problem_response
from broker.config_files import ConfigFileError
from broker.identity.limits import FailureLimiter
from broker.identity.oidc import OidcVerifier
from conveyor.problems import (
    INTERNAL_ERROR,
    NOT_FOUND,
    PAYLOAD_TOO_LARGE,
    RATE_LIMITED,
    UNAUTHORIZED,
    UNAVAILABLE,
    Problem,
)

log = logging.getLogger("conveyor.gateway")
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """The files the settings name, loaded and checked."""

    key: SigningKey
    tokens: tuple[TokenEntry, ...]


def load_config(settings: GatewaySettings) -> GatewayConfig:
    """Everything the gateway reads from disk, or :class:`GatewayConfigError` saying what to fix."""
    if settings.users_file is None and not settings.oidc_issuers:
        raise GatewayConfigError(
            "no way to authenticate national users: set CONVEYOR_GATEWAY_USERS_FILE and/or "
            "CONVEYOR_GATEWAY_OIDC_ISSUERS"
        )
    key = load_signing_key(settings.signing_keys_file, settings.signing_kid)
    tokens: tuple[TokenEntry, ...] = ()
    if settings.users_file is not None:
        try:
            tokens = load_users(settings.users_file)
        except ConfigFileError as exc:
            raise GatewayConfigError(f"users_file: {exc}") from None
    if settings.oidc_ca_file is not None and not settings.oidc_ca_file.is_file():
        raise GatewayConfigError(f"oidc_ca_file: {settings.oidc_ca_file} is not a readable file")
    _check_subjects_apart(settings, tokens)
    return GatewayConfig(key=key, tokens=tokens)


def _check_subjects_apart(settings: GatewaySettings, tokens: tuple[TokenEntry, ...]) -> None:
    """No two kinds of national user may share a subject: one issuer per host, no gateway sub that looks OIDC."""
    tags: dict[str, str] = {}
    for config in settings.oidc_issuers:
        tag = issuer_tag(config.issuer)
        if tag in tags:
            raise GatewayConfigError(f"oidc_issuers: {tags[tag]} and {config.issuer} are on one host; their users' "
                                     "subjects would clash (one issuer per host)")  # fmt: skip
        tags[tag] = config.issuer
    for index, entry in enumerate(tokens):
        for tag, issuer in tags.items():
            if entry.sub.startswith(tag):
                raise GatewayConfigError(f"users_file: tokens[{index}].sub {entry.sub!r} would pass for a user of "
                                         f"the OIDC issuer {issuer}")  # fmt: skip


@dataclass(frozen=True, slots=True)
class GatewayState:
    """What every request uses; made by the lifespan, on the loop that serves."""

    users: NationalUsers
    proxy: proxy.Proxy
    failures: FailureLimiter
    public_url: str | None
    max_body_bytes: int


def create_app(settings: GatewaySettings) -> FastAPI:
    """The gateway's ASGI app; raises :class:`GatewayConfigError` for a configuration it cannot run with."""
    config = load_config(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            client = httpx.AsyncClient(timeout=httpx.Timeout(settings.timeout_s), follow_redirects=False)
            stack.push_async_callback(client.aclose)
            oidc = None
            if settings.oidc_issuers:
                verify: str | bool = str(settings.oidc_ca_file) if settings.oidc_ca_file else True
                oidc = OidcVerifier(settings.oidc_issuers, verify=verify)
                stack.push_async_callback(oidc.aclose)
            forwarder = proxy.Proxy(
                client, broker_url=settings.broker_url, key=config.key, antenna=settings.antenna_id,
                audience=settings.audience, timeout_s=settings.timeout_s,
            )  # fmt: skip
            app.state.gateway = GatewayState(
                users=NationalUsers(config.tokens, oidc),
                proxy=forwarder,
                failures=FailureLimiter(settings.auth_failures_per_minute, 60.0),
                public_url=settings.public_url,
                max_body_bytes=settings.max_body_bytes,
            )
            log.info(
                "Antenna %s forwarding to %s, signing with %s (%s); %d gateway tokens, %d OIDC issuers",
                settings.antenna_id, settings.broker_url, config.key.kid, config.key.alg, len(config.tokens),
                len(settings.oidc_issuers),
            )  # fmt: skip
            yield
            app.state.gateway = None

    app = FastAPI(
        title="Conveyor Antenna gateway",
        version="0.1.0",
        lifespan=lifespan,
        openapi_url=None,  # the API is the broker's; the gateway only relays part of it
        docs_url=None,
        redoc_url=None,
    )
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
    app.add_api_route("/healthz", healthz, methods=["GET"], summary="Liveness: the gateway answers")
    app.add_api_route("/{path:path}", forward, methods=_METHODS, include_in_schema=False)
    return app


async def healthz() -> dict[str, str]:
    """The gateway's own liveness; it says nothing about the broker (a probe must not restart it for that)."""
    return {"status": "ok"}


def _state(request: Request) -> GatewayState:
    state = request.app.state.gateway
    assert isinstance(state, GatewayState)
    return state


async def forward(request: Request) -> Response:
    """Route check, local authentication, body limit, then the signed request to the broker."""
    state = _state(request)
    instance = request.url.path
    raw_path, _ = proxy.incoming_target(request)
    if not proxy.is_user_route(request.method, raw_path):
        detail = f"no such resource: {request.method} {instance} (the gateway forwards only the user routes of /v1)"
        return problem_response(NOT_FOUND.problem(detail, instance=instance))
    source = request.client.host if request.client else None
    retry_after = state.failures.retry_after_s(source)
    if retry_after is not None:
        detail = "too many failed authentications from this address; retry later"
        return problem_response(RATE_LIMITED.problem(detail, instance=instance, retry_after_s=retry_after))
    try:
        subject = await state.users.authenticate(request.headers.get("authorization"))
    except AuthenticationFailed as exc:
        state.failures.failed(source)
        log.info("refused %s %s from %s: %s", request.method, instance, source, exc.reason)
        problem = UNAUTHORIZED.problem(exc.message, code=f"{UNAUTHORIZED.code}.{exc.reason}", instance=instance)
        return problem_response(problem, {"WWW-Authenticate": exc.challenge})
    except IdentityProviderUnavailable as exc:
        code = f"{UNAVAILABLE.code}.identity_provider"
        problem = UNAVAILABLE.problem(exc.message, code=code, instance=instance, retry_after_s=exc.retry_after_s)
        return problem_response(problem)
    try:
        body = await proxy.read_body(request, state.max_body_bytes)
    except proxy.BodyTooLarge:
        detail = f"the request body exceeds {state.max_body_bytes} bytes"
        return problem_response(PAYLOAD_TOO_LARGE.problem(detail, instance=instance))
    gateway_url = state.public_url or str(request.base_url).rstrip("/")
    return await state.proxy.forward(request, subject, body, gateway_url)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    path = request.url.path
    problem = Problem.from_status(exc.status_code, str(exc.detail)).model_copy(update={"instance": path})
    return problem_response(problem, exc.headers)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    detail = "the gateway failed to handle this request; it has been logged"
    return problem_response(INTERNAL_ERROR.problem(detail, instance=request.url.path))
