"""OIDC bearer tokens: verify a JWT from a configured issuer against that issuer's published keys.

An identity is the pair (issuer, subject): a ``sub`` is unique only within its issuer, so two issuers may
well use the same one for different people. What this module trusts, and what it never does:

* Only configured issuers. The token's ``iss`` is read from the *unverified* payload solely to pick the
  issuer's configuration; the signature check that follows uses that issuer's keys and ``iss`` is checked
  again against the configuration.
* Algorithms come from configuration only, never from the token: a header ``alg`` outside the issuer's list
  is refused before any key is looked up. Symmetric algorithms (HS*) and ``none`` are refused even in
  configuration: with a public JWKS, "HS256 keyed with the issuer's public key" is a forgery anyone can make.
* Keys come from the issuer's JWKS over https only (``jku``/``x5u`` headers are never followed), are cached
  between calls, and are refetched when a token names an unknown ``kid`` (the issuer rotated its keys) at
  most once per ``min_refetch_interval_s`` per issuer, under a lock, so a flood of made-up ``kid`` values
  costs the issuer one request, not one each.

Every refusal is an :class:`InvalidToken` with a machine-readable :class:`Reason` (the HTTP layer answers
401); an issuer whose keys cannot be had at all is :class:`IssuerUnavailable` (not the caller's fault: 503).

Configuration (a YAML or JSON list, e.g. the setting ``oidc_issuers``)::

    - issuer: https://login.example.eu/realms/aif
      audience: conveyor
      jwks_uri: https://login.example.eu/realms/aif/protocol/openid-connect/certs
      algorithms: [RS256, ES256]
      leeway_s: 30
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Annotated, Any, Self
from urllib.parse import urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from broker.config_files import ConfigFileError, dotted, explain_all, parse_text
from slurm_adapters.jwk import ASYMMETRIC_ALGORITHMS, MIN_RSA_BITS

log = logging.getLogger(__name__)

MAX_TOKEN_CHARS = 16_384  # far above any real ID or access token; bounds the work an anonymous caller can cause
MAX_JWKS_BYTES = 1_048_576  # a JWKS is a few kB; an issuer answering megabytes is broken, not rotating keys
MAX_SUBJECT_CHARS = 255  # OIDC Core 2: sub "MUST NOT exceed 255 ASCII characters"
REQUIRED_CLAIMS = ("iss", "sub", "aud", "exp")  # without exp a stolen token would be valid for ever


class Reason(enum.StrEnum):
    """Why a token was refused: stable codes for logs, metrics and the WWW-Authenticate error description."""

    MALFORMED = "malformed"  # not a JWS compact token, unreadable JSON, a kid or time claim of the wrong type
    UNKNOWN_ISSUER = "unknown_issuer"  # iss missing or not configured
    BAD_ALGORITHM = "bad_algorithm"  # header alg not in the issuer's configured list (none and HS* included)
    UNKNOWN_KEY = "unknown_key"  # no key of the issuer has this kid, even after a (rate-limited) refetch
    BAD_KEY = "bad_key"  # the kid names a key that cannot verify this alg (other type, use, alg; RSA < 2048 bits)
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"  # nbf or iat in the future, beyond the leeway
    BAD_AUDIENCE = "bad_audience"
    MISSING_CLAIM = "missing_claim"  # one of REQUIRED_CLAIMS is absent
    BAD_CLAIM = "bad_claim"  # sub empty, too long or not a string; iat not a number


class OidcError(Exception):
    """Base of this module's errors; ``detail`` is for logs and may quote (truncated) token content."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidToken(OidcError):
    """The token proves nothing: the caller is unauthenticated (HTTP 401). ``reason`` says why, as a code."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class IssuerUnavailable(OidcError):
    """The issuer's keys could not be had (network, TLS, HTTP status, bad JWKS) and none are cached (503).

    ``retry_after_s`` is how long the rate limit keeps this verifier from asking the issuer again.
    """

    def __init__(self, issuer: str, detail: str, retry_after_s: float) -> None:
        super().__init__(f"issuer {issuer}: {detail}")
        self.issuer = issuer
        self.retry_after_s = retry_after_s


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _https_url(value: str, *, what: str) -> str:
    """A plain https URL: keys fetched over http could be swapped by anyone on the path."""
    parts = urlsplit(value)
    if parts.scheme != "https":
        raise ValueError(f"{what} must be an https:// URL (got {_short(value)})")
    if not parts.hostname:
        raise ValueError(f"{what} has no host: {_short(value)}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{what} must not carry credentials")
    if parts.fragment:
        raise ValueError(f"{what} must not have a fragment")
    return value


class IssuerConfig(BaseModel):
    """One trusted OIDC issuer: whose tokens, for which audience, signed how, with keys from where."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: str = Field(description="the exact iss value of its tokens (OIDC: an https URL, compared as a string)")
    audience: str = Field(min_length=1, description="the aud value tokens must carry to be meant for Conveyor")
    jwks_uri: str = Field(description="the issuer's JWKS, https only")
    algorithms: tuple[str, ...] = Field(
        ("RS256",), description="accepted JWS algorithms; asymmetric only (HS* and none are always refused)"
    )
    leeway_s: float = Field(30.0, ge=0, le=300, description="clock skew allowed on exp, nbf and iat")
    min_refetch_interval_s: float = Field(
        60.0, ge=1, description="least time between two JWKS fetches for this issuer (an unknown kid refetches)"
    )
    jwks_max_age_s: float = Field(
        3600.0, gt=0, description="how long fetched keys are used before a refetch (removed keys age out)"
    )

    @field_validator("issuer")
    @classmethod
    def _issuer_is_https(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.query:
            raise ValueError("issuer must not have a query (OIDC Core 2)")
        return _https_url(value, what="issuer")

    @field_validator("jwks_uri")
    @classmethod
    def _jwks_is_https(cls, value: str) -> str:
        return _https_url(value, what="jwks_uri")

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("algorithms must name at least one algorithm")
        for name in value:
            if name.lower() == "none" or name.upper().startswith("HS"):
                raise ValueError(
                    f"{name!r} is never allowed: 'none' is unsigned, and HS* would accept tokens keyed with the "
                    "issuer's public key"
                )
            if name not in ASYMMETRIC_ALGORITHMS:
                raise ValueError(f"unsupported algorithm {name!r}; one of {', '.join(sorted(ASYMMETRIC_ALGORITHMS))}")
        if len(set(value)) != len(value):
            raise ValueError("algorithms lists one algorithm twice")
        return value

    @model_validator(mode="after")
    def _max_age_covers_interval(self) -> Self:
        if self.jwks_max_age_s < self.min_refetch_interval_s:
            raise ValueError("jwks_max_age_s must be at least min_refetch_interval_s")
        return self


def _distinct_issuers(value: tuple[IssuerConfig, ...]) -> tuple[IssuerConfig, ...]:
    seen: set[str] = set()
    for config in value:
        if config.issuer in seen:
            raise ValueError(f"issuer {config.issuer!r} is configured twice")
        seen.add(config.issuer)
    return value


# The type of a setting that lists the trusted issuers (pydantic-settings reads it from JSON in the environment).
OidcIssuers = Annotated[tuple[IssuerConfig, ...], AfterValidator(_distinct_issuers)]
_ISSUERS: TypeAdapter[tuple[IssuerConfig, ...]] = TypeAdapter(OidcIssuers)


def parse_issuers(document: Any, source: str = "oidc_issuers") -> tuple[IssuerConfig, ...]:
    """Validated issuers from an already parsed document (a list); every problem reported at once."""
    try:
        return _ISSUERS.validate_python(document)
    except ValidationError as exc:
        raise ConfigFileError(source, [f"{dotted(loc)}: {msg}" for loc, msg in explain_all(exc)]) from None


def issuers_from_text(text: str, source: str = "oidc_issuers") -> tuple[IssuerConfig, ...]:
    """Validated issuers from YAML or JSON text (JSON is read as YAML 1.2, of which it is a subset)."""
    return parse_issuers(parse_text(text, source, as_json=False), source)


@dataclass(frozen=True, slots=True)
class OidcIdentity:
    """A verified caller: ``(issuer, subject)`` is the identity; ``claims`` is the whole verified payload."""

    issuer: str
    subject: str
    claims: Mapping[str, Any] = field(compare=False, repr=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.issuer, self.subject)


@dataclass(frozen=True, slots=True)
class _KeySet:
    """One fetched JWKS, prepared: for each kid, a verifier per configured algorithm the key can serve."""

    by_kid: Mapping[str, Mapping[str, jwt.PyJWK]]
    by_algorithm: Mapping[str, tuple[jwt.PyJWK, ...]]  # every usable key, for tokens without a kid
    listed_kids: frozenset[str]  # every kid in the document, usable or not: a listed kid is not "unknown"

    def find(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        if kid is None:
            # Without a kid, only an unambiguous key will do.
            candidates = self.by_algorithm.get(alg, ())
            return candidates[0] if len(candidates) == 1 else None
        return self.by_kid.get(kid, {}).get(alg)

    def refusal(self, kid: str | None, alg: str) -> InvalidToken:
        if kid is None:
            found = len(self.by_algorithm.get(alg, ()))
            return InvalidToken(Reason.UNKNOWN_KEY, f"the token names no kid and the issuer has {found} {alg} keys")
        if kid in self.listed_kids:
            return InvalidToken(Reason.BAD_KEY, f"key {_short(kid)} cannot verify {alg}")
        return InvalidToken(Reason.UNKNOWN_KEY, f"the issuer has no key {_short(kid)}")


def verifies_signatures(jwk: dict[str, Any], issuer: str) -> bool:
    """Whether a published key is a public key meant for verifying signatures."""
    if jwk.get("kty") == "oct" or "d" in jwk or "k" in jwk:
        # A symmetric or private key has no place in a public JWKS; using it would be the mistake.
        log.warning("issuer %s: JWKS key %s is secret or private material; skipped", issuer, jwk.get("kid"))
        return False
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return False
    return bool(jwk.get("use", "sig") == "sig")


def verifier_for(jwk: dict[str, Any], alg: str, issuer: str) -> jwt.PyJWK | None:
    """The key as a verifier for ``alg``, or None if it cannot be one (another type or alg, or too weak)."""
    if jwk.get("alg", alg) != alg:
        return None
    try:
        key = jwt.PyJWK(jwk, algorithm=alg)
    except jwt.PyJWTError:
        return None
    if isinstance(key.key, rsa.RSAPublicKey) and key.key.key_size < MIN_RSA_BITS:
        log.warning("issuer %s: JWKS key %s has %d bits; skipped", issuer, jwk.get("kid"), key.key.key_size)
        return None
    return key


def _prepare_keys(document: Any, config: IssuerConfig) -> _KeySet:
    """Turn a JWKS into verifiers, skipping every key this issuer's config cannot use."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK Set (an object with a 'keys' list)")
    by_kid: dict[str, dict[str, jwt.PyJWK]] = {}
    by_algorithm: dict[str, list[jwt.PyJWK]] = {}
    listed: set[str] = set()
    for jwk in document["keys"]:
        kid = jwk.get("kid") if isinstance(jwk, dict) else None
        if not isinstance(jwk, dict) or not isinstance(kid, str | None):
            log.warning("issuer %s: JWKS has a key that is no object or has a non-string kid; skipped", config.issuer)
            continue
        if kid is not None:
            listed.add(kid)
        if not verifies_signatures(jwk, config.issuer):
            continue
        for alg in config.algorithms:
            key = verifier_for(jwk, alg, config.issuer)
            if key is None:
                continue
            by_algorithm.setdefault(alg, []).append(key)
            if kid is not None:
                by_kid.setdefault(kid, {}).setdefault(alg, key)
    return _KeySet(
        by_kid={kid: MappingProxyType(algs) for kid, algs in by_kid.items()},
        by_algorithm={alg: tuple(keys) for alg, keys in by_algorithm.items()},
        listed_kids=frozenset(listed),
    )


@dataclass(slots=True)
class _IssuerState:
    """One issuer's key cache and the bookkeeping that rate-limits its refetches."""

    config: IssuerConfig
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    keys: _KeySet | None = None
    fetched_at: float | None = None  # the last successful fetch, on the verifier's clock
    attempted_at: float | None = None  # the last attempt, successful or not: the rate limit counts attempts
    generation: int = 0  # bumped by every attempt, so waiters on the lock know one just happened


def map_pyjwt_error(exc: jwt.PyJWTError) -> InvalidToken:
    """PyJWT's refusal, in this module's reasons; subclasses are tested before their bases."""
    mapping: tuple[tuple[type[jwt.PyJWTError], Reason], ...] = (
        (jwt.InvalidSignatureError, Reason.BAD_SIGNATURE),
        (jwt.ExpiredSignatureError, Reason.EXPIRED),
        (jwt.ImmatureSignatureError, Reason.NOT_YET_VALID),
        (jwt.InvalidAudienceError, Reason.BAD_AUDIENCE),
        (jwt.InvalidIssuerError, Reason.UNKNOWN_ISSUER),
        (jwt.InvalidAlgorithmError, Reason.BAD_ALGORITHM),
        (jwt.MissingRequiredClaimError, Reason.MISSING_CLAIM),
        (jwt.InvalidKeyError, Reason.BAD_KEY),  # e.g. a key PyJWT cannot use for this algorithm
        (jwt.InvalidIssuedAtError, Reason.BAD_CLAIM),
    )
    for kind, reason in mapping:
        if isinstance(exc, kind):
            return InvalidToken(reason, str(exc))
    return InvalidToken(Reason.MALFORMED, str(exc))


class OidcVerifier:
    """Verifies OIDC JWTs from the configured issuers; one per process, shared by every request.

    Make it on the event loop that will use it (e.g. in the app's lifespan) and close it there: its HTTP
    client and its locks belong to that loop.

    ``verify`` is the TLS trust for JWKS fetches: True (the system's CAs), a CA bundle path, or an
    :class:`ssl.SSLContext` (e.g. a test CA); it can never be off. ``timeout_s`` bounds a whole fetch, and so
    how long verifications of one issuer wait on its lock. ``clock`` (monotonic seconds) drives the cache
    and the rate limit; tests advance it instead of sleeping. ``transport`` replaces the network (tests).
    """

    def __init__(
        self,
        issuers: Iterable[IssuerConfig],
        *,
        verify: ssl.SSLContext | str | Path | bool = True,
        timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if verify is False:
            raise ValueError("TLS verification of JWKS fetches cannot be turned off; pass a CA instead")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        configs = _distinct_issuers(tuple(issuers))
        self._issuers = {config.issuer: _IssuerState(config) for config in configs}
        self._clock = clock
        self._timeout_s = timeout_s
        trust: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(verify)) if isinstance(verify, str | Path) else verify
        )
        self._client = httpx.AsyncClient(
            verify=trust,
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=False,  # a redirect could lead off https or to another host; the config names the URL
            transport=transport,
            headers={"Accept": "application/json, application/jwk-set+json"},
        )

    @property
    def issuers(self) -> tuple[str, ...]:
        return tuple(self._issuers)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def verify(self, token: str) -> OidcIdentity:
        """The identity a token proves, or :class:`InvalidToken` / :class:`IssuerUnavailable`."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
            raise InvalidToken(Reason.MALFORMED, "empty or oversized token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken(Reason.MALFORMED, f"unreadable header: {exc}") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ASYMMETRIC_ALGORITHMS:
            raise InvalidToken(Reason.BAD_ALGORITHM, f"algorithm {_short(alg)} is never accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken(Reason.MALFORMED, "kid is not a string")
        state = self._issuer_of(token)
        config = state.config
        if alg not in config.algorithms:
            raise InvalidToken(Reason.BAD_ALGORITHM, f"issuer {config.issuer} does not sign with {alg}")

        key = await self._key(state, kid, alg)
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=list(config.algorithms),  # from configuration, never from the token
                audience=config.audience,
                issuer=config.issuer,
                leeway=config.leeway_s,
                # sub is checked below, the same way on every PyJWT release (verify_sub is 2.10+)
                options={
                    "require": list(REQUIRED_CLAIMS),
                    "verify_sub": False,
                    "strict_aud": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise map_pyjwt_error(exc) from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > MAX_SUBJECT_CHARS:
            raise InvalidToken(Reason.BAD_CLAIM, "sub must be a string of 1 to 255 characters")
        return OidcIdentity(issuer=config.issuer, subject=subject, claims=MappingProxyType(claims))

    def _issuer_of(self, token: str) -> _IssuerState:
        """The configuration to verify with, picked by the unverified iss (verified again by the decode)."""
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise InvalidToken(Reason.MALFORMED, f"unreadable payload: {exc}") from None
        issuer = unverified.get("iss")
        state = self._issuers.get(issuer) if isinstance(issuer, str) else None
        if state is None:
            raise InvalidToken(Reason.UNKNOWN_ISSUER, f"issuer {_short(issuer)} is not trusted")
        return state

    async def _key(self, state: _IssuerState, kid: str | None, alg: str) -> jwt.PyJWK:
        """The issuer's key for this kid and algorithm, refreshing the cache when it is stale or lacks the kid."""
        if state.fetched_at is None or self._clock() - state.fetched_at >= state.config.jwks_max_age_s:
            await self._refresh(state)
        keys = state.keys
        if keys is None:
            raise IssuerUnavailable(state.config.issuer, "no keys fetched yet", self._retry_after(state))
        key = keys.find(kid, alg)
        if key is None and kid is not None and kid not in keys.listed_kids:
            await self._refresh(state)  # the issuer may have rotated its keys; rate-limited
            keys = state.keys
            assert keys is not None  # a refresh never drops keys it has
            key = keys.find(kid, alg)
        if key is None:
            raise keys.refusal(kid, alg)
        return key

    def _retry_after(self, state: _IssuerState) -> float:
        if state.attempted_at is None:
            return 0.0
        return max(0.0, state.config.min_refetch_interval_s - (self._clock() - state.attempted_at))

    async def _refresh(self, state: _IssuerState) -> None:
        """Fetch the issuer's JWKS unless one was just fetched (rate limit) or is being fetched (the lock).

        A failed fetch keeps the keys already cached (an issuer's outage must not log everyone out) and still
        counts as an attempt, so a failing issuer is not hammered either. Only with nothing cached does the
        failure reach the caller, as :class:`IssuerUnavailable`.
        """
        seen = state.generation
        async with state.lock:
            if state.generation != seen:
                return  # another verification fetched (or tried) while this one waited: no stampede
            now = self._clock()
            if state.attempted_at is not None and now - state.attempted_at < state.config.min_refetch_interval_s:
                return
            state.attempted_at = now
            state.generation += 1
            try:
                keys = await self._fetch(state.config)
            except IssuerUnavailable:
                if state.keys is None:
                    raise
                log.warning("issuer %s: JWKS refetch failed; keeping the cached keys", state.config.issuer)
                return
            state.keys = keys
            state.fetched_at = now

    async def _fetch(self, config: IssuerConfig) -> _KeySet:
        def unavailable(detail: str) -> IssuerUnavailable:
            log.warning("issuer %s: JWKS %s: %s", config.issuer, config.jwks_uri, detail)
            return IssuerUnavailable(config.issuer, detail, config.min_refetch_interval_s)

        if urlsplit(config.jwks_uri).scheme != "https":  # the config refuses it already; keys are worth twice
            raise unavailable("not an https URL")
        body = bytearray()
        try:
            async with asyncio.timeout(self._timeout_s), self._client.stream("GET", config.jwks_uri) as response:
                if response.status_code != httpx.codes.OK:
                    raise unavailable(f"HTTP {response.status_code}")
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise unavailable(f"larger than {MAX_JWKS_BYTES} bytes")
        except TimeoutError:
            raise unavailable(f"no answer within {self._timeout_s} s") from None
        except httpx.HTTPError as exc:
            raise unavailable(f"{type(exc).__name__}: {exc}") from None
        try:
            keys = _prepare_keys(json.loads(body), config)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError included
            raise unavailable(f"unusable JWKS: {exc}") from None
        log.info("issuer %s: fetched %d keys", config.issuer, len(keys.listed_kids))
        return keys
