"""The Factory agent's authentication and keys through the API, on SQLite and PostgreSQL.

A Factory's operators (or an admin) register the agent's public JWKS; the agent signs every request with
``slurm_adapters.agent_protocol.sign``; ``POST /v1/agent/whoami`` answers who the broker takes it for. Every
way an assertion can be wrong is a 401 ``unauthorized.<reason>`` problem, never a 500; every way a caller can
overreach on the keys is a 403 or 404.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import select

from broker.db.engine import Database
from broker.db.models import AgentAssertionSeen, AuditEvent
from broker.identity.assertions import public_jwks
from slurm_adapters import agent_protocol
from tests.api.conftest import Broker, api_settings, factory, partition, running_broker, write_factories
from tests.api.server import start_server
from tests.api.test_antennas import AntennaKit
from tests.api.test_jobs import problem_of

AUDIENCE = "conveyor"  # the broker's default audience
WHOAMI = f"{agent_protocol.PREFIX}/whoami"


def agent_factory(factory_id: str, country: str) -> dict[str, Any]:
    entry = factory(factory_id, country, partition("cpu", 60, 10, 1, default=True))
    entry["adapter"] = {"kind": "agent", "cluster": factory_id}
    return entry


def agent_factories(directory: Path) -> Path:
    """alpha and bravo (direct adapters) and two Factories reached through their agents: gamma, delta."""
    document = json.loads(write_factories(directory).read_text())
    document["factories"] += [agent_factory("gamma", "DE"), agent_factory("delta", "FI")]
    path = directory / "agent-factories.json"
    path.write_text(json.dumps(document))
    return path


def _b64(data: bytes) -> str:
    return jwt.utils.base64url_encode(data).decode()


@dataclass
class AgentKit:
    """A Factory agent's side: its Factory, a P-256 key registered under ``kid``, and how it signs."""

    factory: str
    kid: str = "agent-1"
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    def public_jwks(self) -> dict[str, Any]:
        """Registered as an Antenna's key is: ES256, for signatures."""
        return AntennaKit(self.factory, self.kid, self.key).public_jwks()

    def sign(self, method: str, target: str, body: bytes = b"", **options: Any) -> str:
        """What the agent sends: the contract's own signer."""
        return agent_protocol.sign(self.key, kid=self.kid, alg="ES256", factory=self.factory, audience=AUDIENCE,
                                   method=method, target=target, body=body, **options)  # fmt: skip

    def forged(self, method: str, target: str, body: bytes = b"", **overrides: Any) -> str:
        """A signed assertion with ``overrides`` applied (claims; ``header_*`` for header fields; None drops)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.factory, "sub": self.factory, "aud": AUDIENCE, "iat": now, "nbf": now, "exp": now + 60,
            "jti": secrets.token_urlsafe(12), **agent_protocol.request_claims(method, target, body),
        }  # fmt: skip
        headers: dict[str, Any] = {"kid": self.kid, "typ": agent_protocol.TYP}
        for name, value in overrides.items():
            where = headers if name.startswith("header_") else claims
            if value is None:
                where.pop(name.removeprefix("header_"), None)
            else:
                where[name.removeprefix("header_")] = value
        return jwt.encode(claims, self.key, algorithm="ES256", headers=headers)

    def unsigned(self, header: dict[str, Any], method: str, target: str, body: bytes, secret: bytes | None) -> str:
        """A token with ``header`` as given: HMAC-SHA256 over it with ``secret``, or no signature at all."""
        now = int(time.time())
        claims = {"iss": self.factory, "sub": self.factory, "aud": AUDIENCE, "iat": now, "exp": now + 60,
                  "jti": secrets.token_urlsafe(12), **agent_protocol.request_claims(method, target, body)}  # fmt: skip
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = b"" if secret is None else hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64(signature)}"


async def whoami(client: httpx.AsyncClient, assertion: str, body: bytes = b"", target: str = WHOAMI) -> httpx.Response:
    return await client.post(target, content=body, headers={"Authorization": f"{agent_protocol.SCHEME} {assertion}"})


@dataclass
class Setup:
    broker: Broker
    gamma: AgentKit
    delta: AgentKit
    operator: str  # a token of gamma's operator
    other_operator: str  # a token of bravo's operator
    user: str  # a token of a user who operates nothing


@pytest.fixture
async def agent_broker(db: Database, database_url: str, tmp_path: Path) -> AsyncIterator[Broker]:
    settings = api_settings(tmp_path, database_url, dev_mode=False, dev_token=None,
                            factories_file=agent_factories(tmp_path))  # fmt: skip
    async with running_broker(db, settings) as running:
        yield running


async def put_keys(broker: Broker, token: str, factory_id: str, jwks: Any) -> httpx.Response:
    async with broker.client(token) as client:
        return await client.put(f"/v1/factories/{factory_id}/agent-keys", json=jwks)


async def operator_of(broker: Broker, name: str, factory_id: str) -> str:
    user_id, token = await broker.user(name)
    async with broker.client(broker.admin_token) as admin:
        named = await admin.put(f"/v1/admin/factories/{factory_id}/operators/{user_id}")
    assert named.status_code == 204, named.text
    return token


@pytest.fixture
async def setup(agent_broker: Broker) -> Setup:
    gamma, delta = AgentKit("gamma"), AgentKit("delta", kid="delta-1")
    operator = await operator_of(agent_broker, "gamma-ops", "gamma")
    other_operator = await operator_of(agent_broker, "bravo-ops", "bravo")
    _, user = await agent_broker.user("plain")
    for kit in (gamma, delta):
        registered = await put_keys(agent_broker, agent_broker.admin_token, kit.factory, kit.public_jwks())
        assert registered.status_code == 200, registered.text
    return Setup(agent_broker, gamma, delta, operator, other_operator, user)


async def refused(setup: Setup, assertion: str, reason: str, body: bytes = b"", target: str = WHOAMI) -> None:
    async with setup.broker.client(None) as client:
        response = await whoami(client, assertion, body, target)
    problem = problem_of(response, 401, f"unauthorized.{reason}")
    assert response.headers["WWW-Authenticate"].startswith("Agent "), response.headers
    assert "the agent assertion is not valid" in (problem.detail or "")


# --- the assertion ------------------------------------------------------------------------------------------


async def test_the_contracts_signer_is_accepted_and_its_jti_is_spent(setup: Setup) -> None:
    body = b'{"ping": 1}'
    assertion = setup.gamma.sign("POST", WHOAMI, body)
    async with setup.broker.client(None) as client:
        response = await whoami(client, assertion, body)
        assert response.status_code == 200, response.text
        assert response.json() == {"factory": "gamma", "kid": "agent-1"}
        empty = await whoami(client, setup.gamma.sign("POST", WHOAMI))  # the usual call: no body
        assert empty.status_code == 200, empty.text
    async with setup.broker.db.read() as session:
        seen = (await session.scalars(select(AgentAssertionSeen.factory_id))).all()
    assert seen == ["gamma", "gamma"]
    await refused(setup, assertion, "replayed", body)  # the very same request again


# Times relative to the moment the test runs (``now``): values fixed at collection time go stale in a long run.
Overrides = Callable[[int], dict[str, Any]]


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (lambda now: {"header_typ": "conveyor-antenna+jwt"}, "bad_type"),
        (lambda now: {"header_typ": "JWT"}, "bad_type"),
        (lambda now: {"header_typ": None}, "bad_type"),
        (lambda now: {"header_kid": "nobody-knows-me"}, "unknown_key"),
        (lambda now: {"header_kid": None}, "unknown_key"),
        (lambda now: {"sub": "alpha"}, "bad_subject"),
        (lambda now: {"sub": "gamma-other"}, "bad_subject"),
        (lambda now: {"aud": "another-broker"}, "bad_audience"),
        (lambda now: {"aud": None}, "missing_claim"),
        (lambda now: {"jti": None}, "missing_claim"),
        (lambda now: {"exp": now - 120, "iat": now - 180}, "expired"),
        (lambda now: {"exp": now + agent_protocol.MAX_LIFETIME_S + 120}, "too_long_lived"),
        (lambda now: {"nbf": now + 100, "exp": now + 200}, "not_yet_valid"),
        (lambda now: {"iat": now + 600}, "not_yet_valid"),
        (lambda now: {"exp": "9999999999"}, "bad_claim"),
        (lambda now: {"htm": "GET"}, "wrong_request"),
        (lambda now: {"htu": "/v1/agent/sessions"}, "wrong_request"),
        (lambda now: {"bh": agent_protocol.body_hash(b"{}")}, "wrong_request"),
    ],
)
async def test_every_wrong_claim_is_refused_with_its_reason(setup: Setup, overrides: Overrides, reason: str) -> None:
    await refused(setup, setup.gamma.forged("POST", WHOAMI, **overrides(int(time.time()))), reason)


async def test_the_lifetime_limit_is_the_protocols(setup: Setup) -> None:
    """Exactly MAX_LIFETIME_S is accepted; one leeway beyond it is not."""
    async with setup.broker.client(None) as client:
        longest = await whoami(client, setup.gamma.sign("POST", WHOAMI, lifetime_s=agent_protocol.MAX_LIFETIME_S))
    assert longest.status_code == 200, longest.text
    now = time.time()
    await refused(setup, setup.gamma.sign("POST", WHOAMI, lifetime_s=agent_protocol.MAX_LIFETIME_S + 31, now=now),
                  "too_long_lived")  # fmt: skip


async def test_a_request_changed_after_signing_is_refused(setup: Setup) -> None:
    body = b'{"ack": 1}'
    signed = setup.gamma.sign("POST", WHOAMI, body)
    await refused(setup, signed, "wrong_request", b'{"ack": 2}')  # body
    await refused(setup, setup.gamma.sign("POST", WHOAMI, body), "wrong_request", body, f"{WHOAMI}?x=1")  # query
    await refused(setup, setup.gamma.sign("POST", f"{agent_protocol.PREFIX}/sessions", body), "wrong_request", body)
    await refused(setup, setup.gamma.sign("GET", WHOAMI, body), "wrong_request", body)  # method
    async with setup.broker.client(None) as client:  # nothing of those was spent: the original still works
        assert (await whoami(client, signed, body)).status_code == 200


async def test_algorithms_come_from_the_registered_key_never_from_the_token(setup: Setup) -> None:
    kit = setup.gamma
    pem = kit.key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    jwk_text = json.dumps(kit.public_jwks()["keys"][0]).encode()
    for secret in (pem, jwk_text):  # HS256 keyed with the public key: the classic confusion
        header = {"alg": "HS256", "typ": agent_protocol.TYP, "kid": kit.kid}
        await refused(setup, kit.unsigned(header, "POST", WHOAMI, b"", secret), "bad_algorithm")
    none = {"alg": "none", "typ": agent_protocol.TYP, "kid": kit.kid}
    await refused(setup, kit.unsigned(none, "POST", WHOAMI, b"", None), "bad_algorithm")
    # ES384 in the header for a key registered for ES256 (and signed so, with the right key).
    es384 = AgentKit("gamma", key=ec.generate_private_key(ec.SECP384R1()))
    claims = jwt.decode(kit.sign("POST", WHOAMI), options={"verify_signature": False})
    mismatched = jwt.encode(claims, es384.key, algorithm="ES384", headers={"kid": kit.kid, "typ": agent_protocol.TYP})
    await refused(setup, mismatched, "bad_algorithm")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rs256 = jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": kit.kid, "typ": agent_protocol.TYP})
    await refused(setup, rs256, "bad_algorithm")


async def test_one_factorys_key_cannot_speak_for_another(setup: Setup) -> None:
    """gamma's agent claims to be delta: delta's keys do not verify it, whatever kid it names."""
    claiming = AgentKit("delta", kid=setup.gamma.kid, key=setup.gamma.key)
    await refused(setup, claiming.sign("POST", WHOAMI), "unknown_key")
    # delta registers a key under gamma's kid: the name matches, the signature does not.
    same_kid = AgentKit("delta", kid=setup.gamma.kid)
    assert (await put_keys(setup.broker, setup.broker.admin_token, "delta", same_kid.public_jwks())).status_code == 200
    await refused(setup, claiming.sign("POST", WHOAMI), "bad_signature")
    # iss gamma, signed by gamma, but sub delta.
    await refused(setup, setup.gamma.forged("POST", WHOAMI, sub="delta"), "bad_subject")


async def test_only_agent_factories_this_broker_serves_are_accepted(setup: Setup) -> None:
    await refused(setup, AgentKit("alpha").sign("POST", WHOAMI), "not_an_agent_factory")  # a direct adapter
    await refused(setup, AgentKit("omega").sign("POST", WHOAMI), "unknown_factory")
    await refused(setup, AgentKit("").forged("POST", WHOAMI), "missing_claim")


async def test_a_replaced_key_set_revokes_a_dropped_kid_on_the_very_next_request(setup: Setup) -> None:
    old = setup.gamma
    signed_before = old.sign("POST", WHOAMI)  # signed while valid, sent after the revocation
    new = AgentKit("gamma", kid="agent-2")
    both = {"keys": old.public_jwks()["keys"] + new.public_jwks()["keys"]}
    async with setup.broker.client(None) as client:
        assert (await put_keys(setup.broker, setup.operator, "gamma", both)).status_code == 200
        assert (await whoami(client, old.sign("POST", WHOAMI))).json()["kid"] == "agent-1"  # rotation: both work
        assert (await whoami(client, new.sign("POST", WHOAMI))).json()["kid"] == "agent-2"
        assert (await put_keys(setup.broker, setup.operator, "gamma", new.public_jwks())).status_code == 200
    await refused(setup, signed_before, "unknown_key")
    await refused(setup, old.sign("POST", WHOAMI), "unknown_key")
    async with setup.broker.client(None) as client:
        assert (await whoami(client, new.sign("POST", WHOAMI))).status_code == 200


async def test_a_factory_without_registered_keys_is_refused(agent_broker: Broker) -> None:
    async with agent_broker.client(None) as client:
        response = await whoami(client, AgentKit("gamma").sign("POST", WHOAMI))
    problem_of(response, 401, "unauthorized.unknown_key")


@pytest.mark.parametrize(
    ("authorization", "status", "code"),
    [
        (b"", 401, "unauthorized"),
        (b"Agent", 401, "unauthorized"),
        (b"Agent ", 401, "unauthorized"),
        (b"Agent not-a-jws", 401, "unauthorized.malformed"),
        (b"Agent a.b.c", 401, "unauthorized.malformed"),
        ("Agent \u00e9.\u00e9.x".encode("latin-1"), 401, "unauthorized.malformed"),
        (b"Agent \xff\xfe.e30.x", 401, "unauthorized.malformed"),
        (b"Agent " + b"a" * 16_300 + b".b.c", 401, "unauthorized.malformed"),  # large, within the edge limit
        (b"Agent " + b"a" * 20_000 + b".b.c", 431, "headers_too_large.field"),  # beyond the edge's field limit
    ],
)
async def test_malformed_credentials_are_4xx_never_500(
    setup: Setup, authorization: bytes, status: int, code: str
) -> None:
    async with setup.broker.client(None) as client:
        headers = {b"Authorization": authorization} if authorization else {}
        response = await client.post(WHOAMI, headers=headers)
    problem_of(response, status, code)


async def test_a_bearer_token_is_no_agent(setup: Setup) -> None:
    async with setup.broker.client(setup.broker.admin_token) as admin:
        response = await admin.post(WHOAMI)
    problem_of(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"] == 'Agent realm="conveyor"'


async def test_refusals_are_audited_with_their_reason(setup: Setup) -> None:
    await refused(setup, setup.gamma.forged("POST", WHOAMI, aud="elsewhere"), "bad_audience")
    await refused(setup, AgentKit("omega").sign("POST", WHOAMI), "unknown_factory")
    async with setup.broker.db.read() as session:
        failures = (
            await session.scalars(select(AuditEvent).where(AuditEvent.action == "auth.failed").order_by(AuditEvent.id))
        ).all()
    assert [f.detail for f in failures] == [
        {"reason": "bad_audience", "method": "agent", "factory": "gamma"},
        {"reason": "unknown_factory", "method": "agent"},  # an unknown iss is not echoed into the audit
    ]


# --- the keys -----------------------------------------------------------------------------------------------


async def test_admins_and_the_factorys_operators_manage_its_keys_and_changes_are_audited(setup: Setup) -> None:
    broker, kit = setup.broker, AgentKit("gamma", kid="agent-9")
    replaced = await put_keys(broker, setup.operator, "gamma", kit.public_jwks())
    assert replaced.status_code == 200, replaced.text
    view = replaced.json()
    assert (view["factory"], view["kids"], view["jwks"]) == ("gamma", ["agent-9"], kit.public_jwks())
    for token in (setup.operator, broker.admin_token):
        async with broker.client(token) as client:
            read = await client.get("/v1/factories/gamma/agent-keys")
        assert read.status_code == 200, read.text
        assert read.json() == view
        assert not {"d", "p", "q", "k"} & set(read.json()["jwks"]["keys"][0])
    async with broker.db.read() as session:
        changes = (await session.scalars(select(AuditEvent).where(AuditEvent.action == "factory.agent_keys_replaced")
                                          .order_by(AuditEvent.id))).all()  # fmt: skip
    assert [(c.target, c.detail) for c in changes][-1] == (
        "gamma",
        {"kids": ["agent-9"], "added": ["agent-9"], "revoked": ["agent-1"]},
    )
    assert changes[-1].actor == view["updated_by"] != changes[0].actor  # the operator, then the admin before


async def test_nobody_else_reads_or_changes_a_factorys_keys(setup: Setup) -> None:
    broker, jwks = setup.broker, AgentKit("gamma", kid="intruder").public_jwks()
    for token in (setup.other_operator, setup.user):
        problem_of(await put_keys(broker, token, "gamma", jwks), 403, "forbidden")
        async with broker.client(token) as client:
            problem_of(await client.get("/v1/factories/gamma/agent-keys"), 403, "forbidden")
    problem_of(await put_keys(broker, broker.admin_token, "omega", jwks), 404, "not_found")
    async with broker.client(None) as anonymous:
        problem_of(await anonymous.put("/v1/factories/gamma/agent-keys", json=jwks), 401, "unauthorized")
    async with broker.client(setup.operator) as operator:  # the keys are as they were
        assert (await operator.get("/v1/factories/gamma/agent-keys")).json()["kids"] == ["agent-1"]


async def test_a_factory_without_keys_reads_as_404(agent_broker: Broker) -> None:
    async with agent_broker.client(agent_broker.admin_token) as admin:
        problem_of(await admin.get("/v1/factories/gamma/agent-keys"), 404, "not_found")


def _with(jwk: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {"keys": [{**jwk, **changes}]}


async def test_unusable_key_sets_are_refused_as_a_whole(setup: Setup) -> None:
    broker, good = setup.broker, setup.gamma.public_jwks()["keys"][0]
    private = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(setup.gamma.key))
    weak_key = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa.generate_private_key(65537, 1024)))
    weak = public_jwks({"keys": [weak_key]})["keys"][0]
    secret = {"kty": "oct", "k": _b64(b"0" * 32), "kid": "s", "alg": "HS256"}
    for jwks, error in [
        ({"keys": []}, None),
        ({"keys": [secret]}, None),  # a symmetric key
        (_with(good, alg="HS256"), "invalid_jwks"),  # an asymmetric key registered for a symmetric algorithm
        (_with(good, alg="none"), "invalid_jwks"),
        (_with(good, alg="RS256"), "invalid_jwks"),  # an EC key for RSA
        ({"keys": [{**private, "kid": "p", "alg": "ES256"}]}, None),  # private material
        ({"keys": [{**weak, "kid": "w", "alg": "RS256"}]}, "invalid_jwks"),  # RSA under 2048 bits
        ({"keys": [good, good]}, "invalid_jwks"),  # a kid twice
        ({"keys": [{**good, "kid": f"k{i}"} for i in range(17)]}, None),  # more than MAX_KEYS
        (_with(good, use="enc"), None),
        ({"keys": [good], "extra": 1}, None),
        ([good], None),
    ]:
        response = await put_keys(broker, broker.admin_token, "gamma", jwks)
        problem = problem_of(response, 422, "validation_error")
        if error is not None:
            assert [e.type for e in problem.errors or []][:1] == [error], (jwks, problem)
    async with broker.client(broker.admin_token) as admin:
        not_json = await admin.put("/v1/factories/gamma/agent-keys", content=b"{keys",
                                   headers={"Content-Type": "application/json"})  # fmt: skip
        assert not_json.status_code in {400, 422}, not_json.text
        assert not_json.json()["code"] in {"malformed_request", "validation_error"}, not_json.text
        assert (await admin.get("/v1/factories/gamma/agent-keys")).json()["kids"] == ["agent-1"]


# --- over a real socket, with a second replica -------------------------------------------------------------


async def test_over_a_real_socket_and_across_replicas_a_jti_is_spent_once_and_a_revocation_is_immediate(
    setup: Setup, tmp_path: Path, sqlite_copy: Path, database_url: str
) -> None:
    """``python -m app`` on 127.0.0.1 and the in-process app share one database, as two replicas do."""
    server = start_server(tmp_path, sqlite_copy, agent_factories(tmp_path), run_loops=False, dev=False,
                          env={"CONVEYOR_DATABASE_URL": database_url})  # fmt: skip
    try:
        server.wait_ready(timeout_s=60)
        body, target = b'{"hello": "broker"}', f"{WHOAMI}?probe=%2Fx"
        signed = setup.gamma.sign("POST", target, body)
        headers = {"Authorization": f"{agent_protocol.SCHEME} {signed}", "Content-Type": "application/json"}
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
            first = await http.post(target, content=body, headers=headers)
            assert first.status_code == 200, first.text
            assert first.json() == {"factory": "gamma", "kid": "agent-1"}
            problem_of(await http.post(target, content=body, headers=headers), 401, "unauthorized.replayed")
        await refused(setup, signed, "replayed", body, target)  # the other replica knows it too
        new = AgentKit("gamma", kid="agent-2")
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
            replaced = await http.put("/v1/factories/gamma/agent-keys", json=new.public_jwks(),
                                      headers={"Authorization": f"Bearer {setup.operator}"})  # fmt: skip
            assert replaced.status_code == 200, replaced.text
            assert (await whoami(http, new.sign("POST", WHOAMI))).status_code == 200
        await refused(setup, setup.gamma.sign("POST", WHOAMI), "unknown_key")  # revoked here at once
    finally:
        server.stop()
