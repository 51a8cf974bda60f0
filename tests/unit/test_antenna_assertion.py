"""The Antenna assertion's two halves (sign, verify) and the per-Antenna request rate, without a broker."""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from broker.antennas.assertion import (
    MAX_LIFETIME_S,
    BoundRequest,
    InvalidAssertion,
    Reason,
    parse_jwks,
    public_jwks,
    sign,
    unverified_antenna,
    verify,
)
from broker.identity.limits import RequestRate

NOW = 1_800_000_000.0
REQUEST = BoundRequest("POST", "/v1/jobs?dry_run=true", b'{"name": "x"}')


def private_jwks(key: Any, kid: str, alg: str) -> dict[str, Any]:
    to_jwk = jwt.algorithms.RSAAlgorithm.to_jwk if alg.startswith(("RS", "PS")) else jwt.algorithms.ECAlgorithm.to_jwk
    return {"keys": [{**json.loads(to_jwk(key)), "kid": kid, "alg": alg}]}


@pytest.mark.parametrize(
    ("key", "alg"),
    [(ec.generate_private_key(ec.SECP256R1()), "ES256"), (rsa.generate_private_key(65537, 2048), "RS256")],
)
def test_what_the_gateway_signs_the_broker_accepts(key: Any, alg: str) -> None:
    keys = parse_jwks(public_jwks(private_jwks(key, "k", alg)))
    token = sign(key, kid="k", alg=alg, antenna="be", subject="ada", audience="conveyor", request=REQUEST, now=NOW)
    assert unverified_antenna(token) == "be"
    claims = verify(token, keys, antenna="be", audience="conveyor", request=REQUEST, now=NOW)
    assert (claims.antenna, claims.subject, claims.expires_at) == ("be", "ada", NOW + 60)
    for other in (
        BoundRequest("GET", REQUEST.target, REQUEST.body),
        BoundRequest("POST", "/v1/jobs", REQUEST.body),
        BoundRequest("POST", REQUEST.target, REQUEST.body + b" "),
    ):
        with pytest.raises(InvalidAssertion) as refused:
            verify(token, keys, antenna="be", audience="conveyor", request=other, now=NOW)
        assert refused.value.reason is Reason.WRONG_REQUEST


def test_the_lifetime_is_bounded_by_the_brokers_clock() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    keys = parse_jwks(public_jwks(private_jwks(key, "k", "ES256")))
    token = sign(key, kid="k", alg="ES256", antenna="be", subject="ada", audience="conveyor", request=REQUEST,
                 now=NOW, lifetime_s=MAX_LIFETIME_S)  # fmt: skip
    assert verify(token, keys, antenna="be", audience="conveyor", request=REQUEST, now=NOW).jti
    # The same token is too long-lived for a broker whose clock is 5 minutes behind the Antenna's.
    with pytest.raises(InvalidAssertion) as refused:
        verify(token, keys, antenna="be", audience="conveyor", request=REQUEST, now=NOW - 300)
    assert refused.value.reason is Reason.TOO_LONG_LIVED


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda jwk: {**jwk, "alg": "HS256"}, "asymmetric alg"),
        (lambda jwk: {k: v for k, v in jwk.items() if k != "alg"}, "asymmetric alg"),
        (lambda jwk: {**jwk, "alg": "RS256"}, "cannot verify RS256"),  # an EC key registered for RSA
        (lambda jwk: {**jwk, "use": "enc"}, "not a public signing key"),
        (lambda jwk: {**jwk, "d": "secret"}, "not a public signing key"),
    ],
)
def test_an_unusable_key_refuses_the_whole_upload(mutate: Any, words: str) -> None:
    jwk = public_jwks(private_jwks(ec.generate_private_key(ec.SECP256R1()), "k", "ES256"))["keys"][0]
    with pytest.raises(ValueError, match=words):
        parse_jwks({"keys": [mutate(jwk)]})


def test_a_weak_rsa_key_is_refused() -> None:
    weak = rsa.generate_private_key(65537, 1024)
    with pytest.raises(ValueError, match="under 2048 bits"):
        parse_jwks(public_jwks(private_jwks(weak, "k", "RS256")))


def test_the_rate_refills_at_its_per_minute_pace() -> None:
    now = [0.0]
    rate = RequestRate(clock=lambda: now[0])
    assert [rate.take("be", 2) for _ in range(2)] == [None, None]
    assert rate.take("be", 2) == pytest.approx(30.0)  # one request per 30 s
    assert rate.take("ch", 2) is None  # each Antenna has its own bucket
    now[0] = 30.0
    assert rate.take("be", 2) is None
    assert rate.take("be", 2) is not None
