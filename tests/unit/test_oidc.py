"""OIDC verification as pure logic: in-memory keys, the JWKS served by an in-process transport, a fake clock.

The same checks against a real JWKS over HTTPS live in tests/identity/test_oidc_jwks_https.py, which reuses
the helpers defined here (key pairs, token minting and forging, the fake clock).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from pydantic import ValidationError

from broker.config_files import ConfigFileError
from broker.identity.oidc import (
    InvalidToken,
    IssuerConfig,
    IssuerUnavailable,
    OidcIdentity,
    OidcVerifier,
    Reason,
    issuers_from_text,
    parse_issuers,
)
from tests.clocks import ManualClock

ISSUER = "https://idp.example/realms/aif"
OTHER_ISSUER = "https://login.other.example"
AUDIENCE = "conveyor"
JWKS_URI = f"{ISSUER}/protocol/openid-connect/certs"


# --- helpers (also used by tests/identity) -------------------------------------------------------------------


@dataclass(frozen=True)
class SigningKey:
    """An issuer's key pair: signs tokens, and publishes its public half as a JWK."""

    kid: str | None
    alg: str
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    def jwk(self, **extra: Any) -> dict[str, Any]:
        public = self.private.public_key()
        exported = (
            RSAAlgorithm.to_jwk(public, as_dict=True)
            if isinstance(public, rsa.RSAPublicKey)
            else ECAlgorithm.to_jwk(public, as_dict=True)
        )
        jwk: dict[str, Any] = {**exported, "use": "sig", **extra}
        if self.kid is not None:
            jwk["kid"] = self.kid
        return jwk

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, claims: dict[str, Any], *, alg: str | None = None, kid: str | None = "") -> str:
        """A token signed with this key; ``kid=""`` means this key's own kid, None means no kid header."""
        headers: dict[str, Any] = {}
        chosen = self.kid if kid == "" else kid
        if chosen is not None:
            headers["kid"] = chosen
        return jwt.encode(claims, self.private, algorithm=alg or self.alg, headers=headers)

    def sign_raw(self, header: dict[str, Any], claims: dict[str, Any]) -> str:
        """A token PyJWT would refuse to mint (e.g. a non-string kid or iss), validly signed all the same."""
        signing_input = f"{_segment({'alg': self.alg, **header})}.{_segment(claims)}".encode()
        algorithm = jwt.get_algorithm_by_name(self.alg)
        return f"{signing_input.decode()}.{_b64(algorithm.sign(signing_input, self.private))}"


_RSA: dict[tuple[str, int], rsa.RSAPrivateKey] = {}


def rsa_key(kid: str | None = "rsa-1", *, bits: int = 2048, alg: str = "RS256") -> SigningKey:
    """An RSA key (generated once per kid and size: 2048-bit generation is the slow part of these tests)."""
    private = _RSA.get((kid or "", bits))
    if private is None:
        private = _RSA[(kid or "", bits)] = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return SigningKey(kid, alg, private)


def ec_key(kid: str | None = "ec-1") -> SigningKey:
    return SigningKey(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


def claims_for(issuer: str = ISSUER, **changes: Any) -> dict[str, Any]:
    """Valid claims for ``issuer``; a change to None removes the claim."""
    now = int(time.time())
    claims: dict[str, Any] = {"iss": issuer, "aud": AUDIENCE, "sub": "alice-123", "iat": now, "exp": now + 300}
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(value: dict[str, Any]) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def forge_hs256(claims: dict[str, Any], secret: bytes, kid: str | None) -> str:
    """The key-confusion forgery: HS256 keyed with bytes everyone has (the issuer's public key)."""
    header: dict[str, Any] = {"alg": "HS256", "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    signing_input = f"{_segment(header)}.{_segment(claims)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def unsigned_token(claims: dict[str, Any], kid: str | None = None) -> str:
    """alg=none: no signature at all."""
    header: dict[str, Any] = {"alg": "none", "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    return f"{_segment(header)}.{_segment(claims)}."


def with_claims_swapped(token: str, claims: dict[str, Any]) -> str:
    """The token's header and signature around other claims: a signature that no longer matches."""
    header, _, signature = token.split(".")
    return f"{header}.{_segment(claims)}.{signature}"


# --- an in-memory issuer ---------------------------------------------------------------------------------------


@dataclass
class FakeIssuer:
    """Serves a JWKS to the verifier's client in process and counts the fetches."""

    keys: list[dict[str, Any]]
    fetches: int = 0
    status: int = 200
    body: bytes | None = None  # overrides the JSON document
    gate: asyncio.Event | None = None  # when set, each fetch waits for it (to pile up concurrent callers)
    fetching: asyncio.Event = field(default_factory=asyncio.Event)  # set when a fetch arrives
    requested: list[str] = field(default_factory=list)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.fetches += 1
        self.requested.append(str(request.url))
        self.fetching.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.body is not None:
            return httpx.Response(self.status, content=self.body)
        return httpx.Response(self.status, json={"keys": self.keys})


def config(**changes: Any) -> IssuerConfig:
    values: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_uri": JWKS_URI, "algorithms": ["RS256"]}
    values.update(changes)
    return IssuerConfig(**values)


RSA = rsa_key()
EC = ec_key()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(10_000.0)  # any start: only differences count


@pytest.fixture
def issuer() -> FakeIssuer:
    return FakeIssuer(keys=[RSA.jwk(), EC.jwk()])


VerifierFactory = Callable[..., OidcVerifier]


@pytest.fixture
async def make_verifier(issuer: FakeIssuer, clock: ManualClock) -> AsyncIterator[VerifierFactory]:
    made: list[OidcVerifier] = []

    def make(*configs: IssuerConfig, **options: Any) -> OidcVerifier:
        chosen = configs or (config(algorithms=["RS256", "ES256"]),)
        verifier = OidcVerifier(chosen, clock=clock, transport=httpx.MockTransport(issuer.handle), **options)
        made.append(verifier)
        return verifier

    yield make
    for verifier in made:
        await verifier.aclose()


async def refused(verifier: OidcVerifier, token: str) -> Reason:
    """The reason ``verifier`` refuses ``token`` (failing the test if it accepts it)."""
    with pytest.raises(InvalidToken) as caught:
        await verifier.verify(token)
    return caught.value.reason


# --- configuration ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["HS256", "HS384", "HS512", "none", "None", "NONE", "hs256"])
def test_symmetric_and_unsigned_algorithms_are_refused_even_when_configured(algorithm: str) -> None:
    with pytest.raises(ValidationError, match="never allowed"):
        config(algorithms=["RS256", algorithm])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"algorithms": []}, "at least one"),
        ({"algorithms": ["RS256", "RS256"]}, "twice"),
        ({"algorithms": ["RS1"]}, "unsupported algorithm"),
        ({"jwks_uri": "http://idp.example/certs"}, "https"),
        ({"jwks_uri": "https://user:pw@idp.example/certs"}, "credentials"),
        ({"jwks_uri": "https:///certs"}, "no host"),
        ({"issuer": "http://idp.example"}, "https"),
        ({"issuer": "https://idp.example/?tenant=1"}, "query"),
        ({"audience": ""}, "at least 1 character"),
        ({"leeway_s": -1}, "greater than or equal"),
        ({"min_refetch_interval_s": 0}, "greater than or equal to 1"),
        ({"min_refetch_interval_s": 120, "jwks_max_age_s": 60}, "jwks_max_age_s"),
        ({"jwks_url": JWKS_URI}, "Extra inputs"),
    ],
)
def test_bad_issuer_configs_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        config(**changes)


def test_defaults_are_rs256_with_a_minute_between_refetches() -> None:
    plain = IssuerConfig(issuer=ISSUER, audience=AUDIENCE, jwks_uri=JWKS_URI)
    assert plain.algorithms == ("RS256",)
    assert (plain.min_refetch_interval_s, plain.jwks_max_age_s, plain.leeway_s) == (60.0, 3600.0, 30.0)


def test_issuers_load_from_yaml_and_json() -> None:
    yaml_text = f"""
- issuer: {ISSUER}
  audience: {AUDIENCE}
  jwks_uri: {JWKS_URI}
  algorithms: [RS256, ES256]
  leeway_s: 10
"""
    json_text = json.dumps([{"issuer": OTHER_ISSUER, "audience": "conveyor-api", "jwks_uri": f"{OTHER_ISSUER}/jwks"}])
    (from_yaml,) = issuers_from_text(yaml_text)
    assert (from_yaml.issuer, from_yaml.algorithms, from_yaml.leeway_s) == (ISSUER, ("RS256", "ES256"), 10.0)
    (from_json,) = issuers_from_text(json_text)
    assert (from_json.issuer, from_json.audience) == (OTHER_ISSUER, "conveyor-api")
    assert issuers_from_text("[]") == ()


def test_issuer_list_problems_are_all_reported_with_their_place() -> None:
    document = [
        {"issuer": ISSUER, "audience": AUDIENCE, "jwks_uri": "http://idp.example/certs"},
        {"issuer": ISSUER, "audience": AUDIENCE, "jwks_uri": JWKS_URI, "algorithms": ["HS256"]},
    ]
    with pytest.raises(ConfigFileError) as caught:
        parse_issuers(document, "CONVEYOR_OIDC_ISSUERS")
    text = str(caught.value)
    assert "CONVEYOR_OIDC_ISSUERS" in text
    assert "[0].jwks_uri" in text
    assert "[1].algorithms" in text
    twice = [{"issuer": ISSUER, "audience": AUDIENCE, "jwks_uri": JWKS_URI}] * 2
    with pytest.raises(ConfigFileError, match="configured twice"):
        parse_issuers(twice)


async def test_the_verifier_refuses_to_switch_tls_verification_off() -> None:
    with pytest.raises(ValueError, match="cannot be turned off"):
        OidcVerifier([config()], verify=False)
    with pytest.raises(ValueError, match="configured twice"):
        OidcVerifier([config(), config()])


# --- accepting -------------------------------------------------------------------------------------------------


async def test_rs256_and_es256_tokens_verify_to_issuer_and_subject(make_verifier: VerifierFactory) -> None:
    verifier = make_verifier()
    identity = await verifier.verify(RSA.sign(claims_for(email="alice@example.eu")))
    assert identity == OidcIdentity(issuer=ISSUER, subject="alice-123", claims={})
    assert identity.key == (ISSUER, "alice-123")
    assert identity.claims["email"] == "alice@example.eu"
    es = await verifier.verify(EC.sign(claims_for(sub="bob")))
    assert es.key == (ISSUER, "bob")


async def test_the_same_subject_at_two_issuers_is_two_identities(
    issuer: FakeIssuer, make_verifier: VerifierFactory
) -> None:
    verifier = make_verifier(config(), config(issuer=OTHER_ISSUER, jwks_uri=f"{OTHER_ISSUER}/jwks"))
    first = await verifier.verify(RSA.sign(claims_for(ISSUER)))
    second = await verifier.verify(RSA.sign(claims_for(OTHER_ISSUER)))
    assert first.subject == second.subject
    assert first != second
    assert sorted(issuer.requested) == sorted([JWKS_URI, f"{OTHER_ISSUER}/jwks"])


async def test_keys_are_cached_between_verifications(issuer: FakeIssuer, make_verifier: VerifierFactory) -> None:
    verifier = make_verifier()
    for _ in range(5):
        await verifier.verify(RSA.sign(claims_for()))
        await verifier.verify(EC.sign(claims_for()))
    assert issuer.fetches == 1


async def test_an_audience_list_containing_ours_is_accepted(make_verifier: VerifierFactory) -> None:
    identity = await make_verifier().verify(RSA.sign(claims_for(aud=["account", AUDIENCE])))
    assert identity.subject == "alice-123"


async def test_clock_skew_within_the_leeway_is_accepted(make_verifier: VerifierFactory) -> None:
    now = int(time.time())
    verifier = make_verifier()
    await verifier.verify(RSA.sign(claims_for(exp=now - 10, iat=now - 100)))
    await verifier.verify(RSA.sign(claims_for(nbf=now + 10, iat=now + 10)))


async def test_one_rsa_key_serves_every_configured_rsa_algorithm(make_verifier: VerifierFactory) -> None:
    verifier = make_verifier(config(algorithms=["RS256", "PS256"]))
    assert (await verifier.verify(RSA.sign(claims_for(), alg="PS256"))).subject == "alice-123"
    assert (await verifier.verify(RSA.sign(claims_for(), alg="RS256"))).subject == "alice-123"


async def test_a_token_without_kid_needs_exactly_one_candidate_key(
    issuer: FakeIssuer, make_verifier: VerifierFactory
) -> None:
    issuer.keys = [RSA.jwk()]
    verifier = make_verifier(config())
    assert (await verifier.verify(RSA.sign(claims_for(), kid=None))).subject == "alice-123"
    issuer.keys = [RSA.jwk(), rsa_key("rsa-2").jwk()]
    ambiguous = make_verifier(config())
    assert await refused(ambiguous, RSA.sign(claims_for(), kid=None)) == Reason.UNKNOWN_KEY


# --- refusing --------------------------------------------------------------------------------------------------


def at(offset_s: int) -> int:
    """A Unix time ``offset_s`` from now, read when called."""
    return int(time.time()) + offset_s


def _negative_cases() -> list[tuple[str, Callable[[], str], Reason]]:
    good = RSA.sign(claims_for())  # its age does not matter: every case using it fails before any time check
    impostor = SigningKey(RSA.kid, "RS256", rsa_key("impostor").private)  # our kid, someone else's key
    pem, jwk_text, root = RSA.public_pem(), json.dumps(RSA.jwk()).encode(), claims_for(sub="root")
    return [
        ("unknown issuer", lambda: RSA.sign(claims_for("https://evil.example")), Reason.UNKNOWN_ISSUER),
        ("no issuer", lambda: RSA.sign(claims_for(iss=None)), Reason.UNKNOWN_ISSUER),
        ("iss not a string", lambda: RSA.sign_raw({"kid": RSA.kid}, claims_for(iss=[ISSUER])), Reason.UNKNOWN_ISSUER),
        ("wrong audience", lambda: RSA.sign(claims_for(aud="someone-else")), Reason.BAD_AUDIENCE),
        ("no audience", lambda: RSA.sign(claims_for(aud=None)), Reason.MISSING_CLAIM),
        ("alg none", lambda: unsigned_token(claims_for(), kid=RSA.kid), Reason.BAD_ALGORITHM),
        ("HS256 keyed with the public PEM", lambda: forge_hs256(claims_for(), pem, RSA.kid), Reason.BAD_ALGORITHM),
        ("HS256 keyed with the JWK", lambda: forge_hs256(claims_for(), jwk_text, None), Reason.BAD_ALGORITHM),
        ("an algorithm the issuer does not use", lambda: RSA.sign(claims_for(), alg="PS256"), Reason.BAD_ALGORITHM),
        # Times are taken when the token is made, not when the cases are collected (a long run would age them).
        ("expired", lambda: RSA.sign(claims_for(exp=at(-120), iat=at(-600))), Reason.EXPIRED),
        ("not yet valid (nbf)", lambda: RSA.sign(claims_for(nbf=at(600))), Reason.NOT_YET_VALID),
        ("issued in the future", lambda: RSA.sign(claims_for(iat=at(600), exp=at(900))), Reason.NOT_YET_VALID),
        ("claims changed after signing", lambda: with_claims_swapped(good, root), Reason.BAD_SIGNATURE),
        ("signed by another key under our kid", lambda: impostor.sign(claims_for()), Reason.BAD_SIGNATURE),
        ("unknown kid", lambda: rsa_key("rsa-unknown").sign(claims_for()), Reason.UNKNOWN_KEY),
        ("an ES256 token naming the RSA key", lambda: EC.sign(claims_for(), kid=RSA.kid), Reason.BAD_KEY),
        ("missing sub", lambda: RSA.sign(claims_for(sub=None)), Reason.MISSING_CLAIM),
        ("empty sub", lambda: RSA.sign(claims_for(sub="")), Reason.BAD_CLAIM),
        ("sub not a string", lambda: RSA.sign(claims_for(sub=42)), Reason.BAD_CLAIM),
        ("sub too long", lambda: RSA.sign(claims_for(sub="x" * 256)), Reason.BAD_CLAIM),
        ("missing exp", lambda: RSA.sign(claims_for(exp=None)), Reason.MISSING_CLAIM),
        ("not a JWT", lambda: "not-a-token", Reason.MALFORMED),
        ("empty", lambda: "", Reason.MALFORMED),
        ("oversized", lambda: "a" * 20_000, Reason.MALFORMED),
        ("kid not a string", lambda: RSA.sign_raw({"kid": 7}, claims_for()), Reason.MALFORMED),
        ("payload not JSON", lambda: f"{good.split('.')[0]}.{_b64(b'nope')}.{good.split('.')[2]}", Reason.MALFORMED),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "make_token", "reason"), _negative_cases(), ids=lambda v: v if isinstance(v, str) else ""
)
async def test_each_negative_case_is_refused_with_its_reason(
    make_verifier: VerifierFactory, case: str, make_token: Callable[[], str], reason: Reason
) -> None:
    verifier = make_verifier()
    assert await refused(verifier, make_token()) == reason, case


async def test_algorithms_come_from_the_config_not_the_header(make_verifier: VerifierFactory) -> None:
    es_only = make_verifier(config(algorithms=["ES256"]))
    assert await refused(es_only, RSA.sign(claims_for())) == Reason.BAD_ALGORITHM
    assert (await es_only.verify(EC.sign(claims_for()))).subject == "alice-123"


@pytest.mark.filterwarnings("ignore:The RSA key is 1024 bits long")  # PyJWT warns when the test signs with it
async def test_rsa_keys_shorter_than_2048_bits_are_refused(issuer: FakeIssuer, make_verifier: VerifierFactory) -> None:
    weak = rsa_key("weak", bits=1024)
    issuer.keys = [weak.jwk()]
    assert await refused(make_verifier(config()), weak.sign(claims_for())) == Reason.BAD_KEY


@pytest.mark.parametrize(
    "published",
    [
        {"use": "enc"},  # an encryption key never verifies signatures
        {"key_ops": ["encrypt"]},
        {"alg": "RS512"},  # the key is bound to another algorithm
    ],
)
async def test_keys_not_meant_for_this_signature_are_not_used(
    issuer: FakeIssuer, make_verifier: VerifierFactory, published: dict[str, Any]
) -> None:
    issuer.keys = [RSA.jwk(**published)]
    assert await refused(make_verifier(config()), RSA.sign(claims_for())) == Reason.BAD_KEY


async def test_secret_material_in_a_jwks_is_never_used(issuer: FakeIssuer, make_verifier: VerifierFactory) -> None:
    assert isinstance(RSA.private, rsa.RSAPrivateKey)
    private_jwk = RSAAlgorithm.to_jwk(RSA.private, as_dict=True) | {"kid": RSA.kid}
    secret = {"kty": "oct", "kid": "shared", "k": _b64(b"s" * 32)}
    issuer.keys = [private_jwk, secret]
    verifier = make_verifier(config())
    assert await refused(verifier, RSA.sign(claims_for())) == Reason.BAD_KEY
    assert await refused(verifier, forge_hs256(claims_for(), b"s" * 32, "shared")) == Reason.BAD_ALGORITHM


# --- fetching, caching and the refetch rate limit --------------------------------------------------------------


async def test_a_rotated_key_is_fetched_once_the_interval_has_passed(
    issuer: FakeIssuer, make_verifier: VerifierFactory, clock: ManualClock
) -> None:
    verifier = make_verifier()
    await verifier.verify(RSA.sign(claims_for()))
    rotated = rsa_key("rsa-2")
    issuer.keys = [rotated.jwk(), EC.jwk()]
    # Within the interval the new kid is unknown and nothing is fetched ...
    assert await refused(verifier, rotated.sign(claims_for())) == Reason.UNKNOWN_KEY
    assert issuer.fetches == 1
    # ... after it, the first token naming it triggers one refetch and verifies.
    clock.advance(60)
    assert (await verifier.verify(rotated.sign(claims_for()))).subject == "alice-123"
    assert issuer.fetches == 2
    # The cache is the issuer's current set: the retired key is gone, and asking again waits for the interval.
    await verifier.verify(EC.sign(claims_for()))
    assert await refused(verifier, RSA.sign(claims_for())) == Reason.UNKNOWN_KEY
    assert issuer.fetches == 2


async def test_an_unknown_kid_flood_causes_at_most_one_refetch_per_interval(
    issuer: FakeIssuer, make_verifier: VerifierFactory, clock: ManualClock
) -> None:
    verifier = make_verifier()
    await verifier.verify(RSA.sign(claims_for()))
    clock.advance(61)
    gate = issuer.gate = asyncio.Event()
    issuer.fetching.clear()
    tokens = [rsa_key(f"made-up-{n % 3}").sign(claims_for()) for n in range(60)]
    flood = [asyncio.ensure_future(verifier.verify(token)) for token in tokens]
    await issuer.fetching.wait()  # the refetch is in flight, and every other verification is queued behind it
    gate.set()
    results = await asyncio.gather(*flood, return_exceptions=True)
    assert {getattr(result, "reason", None) for result in results} == {Reason.UNKNOWN_KEY}
    assert issuer.fetches == 2
    for token in tokens[:10]:  # sequential unknown kids within the interval: no more fetches either
        assert await refused(verifier, token) == Reason.UNKNOWN_KEY
    assert issuer.fetches == 2


async def test_concurrent_first_verifications_fetch_once(issuer: FakeIssuer, make_verifier: VerifierFactory) -> None:
    verifier = make_verifier()
    gate = issuer.gate = asyncio.Event()
    calls = [asyncio.ensure_future(verifier.verify(RSA.sign(claims_for(sub=f"u{n}")))) for n in range(30)]
    await issuer.fetching.wait()
    gate.set()
    identities = await asyncio.gather(*calls)
    assert {identity.subject for identity in identities} == {f"u{n}" for n in range(30)}
    assert issuer.fetches == 1


async def test_keys_older_than_their_max_age_are_refetched_and_removed_keys_age_out(
    issuer: FakeIssuer, make_verifier: VerifierFactory, clock: ManualClock
) -> None:
    verifier = make_verifier(config(jwks_max_age_s=300))
    await verifier.verify(RSA.sign(claims_for()))
    issuer.keys = [rsa_key("rsa-2").jwk()]
    clock.advance(299)
    await verifier.verify(RSA.sign(claims_for()))
    assert issuer.fetches == 1
    clock.advance(1)
    assert await refused(verifier, RSA.sign(claims_for())) == Reason.UNKNOWN_KEY
    assert issuer.fetches == 2


@pytest.mark.parametrize(
    "answer",
    [
        (503, None, "HTTP 503"),
        (302, b"", "HTTP 302"),  # redirects are not followed
        (200, b"<html>login</html>", "unusable JWKS"),
        (200, b'{"no": "keys"}', "unusable JWKS"),
        (200, b"x" * 1_100_000, "larger than"),
    ],
)
async def test_an_issuer_without_usable_keys_is_unavailable_not_a_bad_token(
    issuer: FakeIssuer, make_verifier: VerifierFactory, clock: ManualClock, answer: tuple[int, bytes | None, str]
) -> None:
    status, body, detail = answer
    issuer.status, issuer.body = status, body
    verifier = make_verifier()
    with pytest.raises(IssuerUnavailable, match=detail) as caught:
        await verifier.verify(RSA.sign(claims_for()))
    assert caught.value.issuer == ISSUER
    assert caught.value.retry_after_s == 60
    # Within the interval the failing issuer is not asked again; after it, it is.
    clock.advance(30)
    with pytest.raises(IssuerUnavailable) as again:
        await verifier.verify(RSA.sign(claims_for()))
    assert again.value.retry_after_s == pytest.approx(30)
    assert issuer.fetches == 1
    issuer.status, issuer.body = 200, None
    clock.advance(30)
    assert (await verifier.verify(RSA.sign(claims_for()))).subject == "alice-123"
    assert issuer.fetches == 2


async def test_an_issuer_outage_keeps_the_cached_keys(
    issuer: FakeIssuer, make_verifier: VerifierFactory, clock: ManualClock
) -> None:
    verifier = make_verifier(config(jwks_max_age_s=60))
    await verifier.verify(RSA.sign(claims_for()))
    issuer.status = 500
    clock.advance(120)
    assert (await verifier.verify(RSA.sign(claims_for()))).subject == "alice-123"
    assert await refused(verifier, rsa_key("rsa-new").sign(claims_for())) == Reason.UNKNOWN_KEY
    assert issuer.fetches == 2


async def test_a_slow_issuer_is_cut_off_by_the_timeout(issuer: FakeIssuer, make_verifier: VerifierFactory) -> None:
    issuer.gate = asyncio.Event()  # never set: the issuer never answers
    verifier = make_verifier(timeout_s=0.05)
    with pytest.raises(IssuerUnavailable, match="no answer within"):
        await verifier.verify(RSA.sign(claims_for()))


async def test_junk_in_a_jwks_does_not_hide_the_good_keys(issuer: FakeIssuer, make_verifier: VerifierFactory) -> None:
    issuer.keys = ["not-a-key", {"kty": "RSA", "kid": 5}, {"kty": "XYZ", "kid": "odd"}, RSA.jwk()]  # type: ignore[list-item]
    assert (await make_verifier(config()).verify(RSA.sign(claims_for()))).subject == "alice-123"
