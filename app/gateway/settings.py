"""The gateway's settings, read once from the environment (prefix ``CONVEYOR_GATEWAY_``), and its signing key.

Everything the gateway needs is checked before it serves anything: a key file the broker would refuse, or a
key that is public only, must stop the start with one line saying what to fix, not fail every request later.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import jwt
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from broker.antennas.assertion import BoundRequest, InvalidAssertion, parse_jwks, public_jwks, sign, verify
from broker.config_files import ConfigFileError, dotted, explain_all, read_document
from broker.identity.oidc import OidcIssuers, issuers_from_text
from broker.settings import DEFAULT_MAX_BODY_BYTES
from conveyor.models import AntennaId, PublicJwks
from slurm_adapters.jwk import UnusableKey, private_signing_key

ENV_PREFIX = "CONVEYOR_GATEWAY_"


class GatewayConfigError(ValueError):
    """The gateway will not start with this configuration; the message says what to fix."""


def _base_url(value: str, *, what: str, allow_path: bool) -> str:
    """An http(s) base URL without a trailing slash; a query, fragment or credentials have no place in it."""
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"{what} must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{what} must not carry credentials")
    if parts.query or parts.fragment:
        raise ValueError(f"{what} must not have a query or a fragment")
    if not allow_path and parts.path not in {"", "/"}:
        raise ValueError(f"{what} must be the broker's root (scheme://host[:port]): assertions bind the exact path")
    return value.rstrip("/")


class GatewaySettings(BaseSettings):
    """Everything the gateway reads from its environment; one instance per process."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    broker_url: str = Field(description="the broker's base URL, e.g. https://conveyor.example.eu (no path)")
    antenna_id: AntennaId = Field(description="this Antenna's id at the broker (the assertions' iss)")
    audience: str = Field(
        "conveyor", min_length=1, description="the broker's CONVEYOR_ANTENNA_AUDIENCE (the assertions' aud)"
    )
    signing_keys_file: Path = Field(description="a JWKS of PRIVATE keys, each with kid and alg")
    signing_kid: str | None = Field(None, description="which key of signing_keys_file signs (default: the first)")
    users_file: Path | None = Field(None, description="YAML or JSON: national users' tokens as SHA-256 digests")
    oidc_issuers: Annotated[OidcIssuers, NoDecode] = Field(
        (), description="trusted OIDC issuers of the Antenna's national users, as YAML or JSON text (a list)"
    )
    oidc_ca_file: Path | None = Field(None, description="CA bundle for the issuers' JWKS (default: the system's)")
    host: str = Field("127.0.0.1", description="the address `python -m app.gateway` listens on")
    port: int = Field(8080, ge=1, le=65535, description="the port `python -m app.gateway` listens on")
    public_url: str | None = Field(
        None, description="the gateway's external base URL (default: each request's own base URL)"
    )
    timeout_s: float = Field(30.0, gt=0, le=600, description="how long one forwarded request may take at the broker")
    max_body_bytes: int = Field(
        DEFAULT_MAX_BODY_BYTES,
        ge=1,
        le=64 * 1_048_576,
        description="largest request body forwarded (larger: 413); by default the broker's own default limit",
    )
    auth_failures_per_minute: int = Field(
        30, ge=1, description="failed authentications allowed per client address and minute before 429"
    )

    @field_validator("broker_url")
    @classmethod
    def _broker_root(cls, value: str) -> str:
        return _base_url(value, what="broker_url", allow_path=False)

    @field_validator("public_url")
    @classmethod
    def _public_base(cls, value: str | None) -> str | None:
        return None if value is None else _base_url(value, what="public_url", allow_path=True)

    @field_validator("oidc_issuers", mode="before")
    @classmethod
    def _issuers_text(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return issuers_from_text(value) if value.strip() else ()
        except ConfigFileError as exc:
            raise ValueError("; ".join(exc.problems)) from None


def explain_settings(error: ValidationError) -> str:
    """A settings error as the environment variables to fix, one per line."""
    lines = []
    for location, message in explain_all(error):
        name = str(location[0]) if location else ""
        where = f"{ENV_PREFIX}{name.upper()}" + dotted(location[1:]).removeprefix("(top level)")
        lines.append(f"{where}: {message}")
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class SigningKey:
    """The private key the gateway signs with, and the public JWKS an admin registers at the broker."""

    kid: str
    alg: str
    key: Any  # a cryptography private key object, as PyJWT signs with
    public_jwks: dict[str, Any]


def _private_key(jwk: Any, where: str) -> tuple[str, str, Any]:
    """(kid, alg, private key) of one JWK, or GatewayConfigError saying what is wrong with it."""
    try:
        return private_signing_key(jwk, where, signer="the gateway")
    except UnusableKey as exc:
        raise GatewayConfigError(str(exc)) from None


def load_signing_key(path: Path, kid: str | None = None) -> SigningKey:
    """The signing key from a JWKS file of private keys; checked as the broker will check its public half."""
    try:
        document = read_document(path)
    except ConfigFileError as exc:
        raise GatewayConfigError(f"signing_keys_file: {exc}") from None
    source = f"signing_keys_file {path}"
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list) or not document["keys"]:
        raise GatewayConfigError(f"{source}: not a JWK Set (an object with a non-empty 'keys' list)")
    keys = {}
    for index, jwk in enumerate(document["keys"]):
        found_kid, alg, key = _private_key(jwk, f"{source}: keys[{index}]")
        keys[found_kid] = (alg, key)
    public = public_jwks(document)
    try:
        PublicJwks.model_validate(public)
    except ValidationError as exc:
        why = "; ".join(f"{dotted(where)}: {message}" for where, message in explain_all(exc))
        raise GatewayConfigError(f"{source}: the broker would refuse its public half: {why}") from None
    try:
        registered = parse_jwks(public)
    except ValueError as exc:
        raise GatewayConfigError(f"{source}: the broker would refuse its public half: {exc}") from None
    chosen = kid if kid is not None else next(iter(keys))
    if chosen not in keys:
        raise GatewayConfigError(f"signing_kid {chosen!r} is not in {path} (it has {sorted(keys)})")
    alg, key = keys[chosen]
    _self_test(chosen, alg, key, registered)
    return SigningKey(kid=chosen, alg=alg, key=key, public_jwks=public)


def _self_test(kid: str, alg: str, key: Any, registered: Any) -> None:
    """Sign and verify one assertion: a private key whose public members do not match it fails here, once."""
    request = BoundRequest("GET", "/v1/me")
    context: dict[str, Any] = {"antenna": "self-test", "audience": "self-test", "request": request, "now": time.time()}
    try:
        token = sign(key, kid=kid, alg=alg, subject="self-test", **context)
        verify(token, registered, **context)
    except (InvalidAssertion, jwt.PyJWTError, ValueError, TypeError) as exc:
        raise GatewayConfigError(f"key {kid!r} cannot sign assertions its public half verifies: {exc}") from None
