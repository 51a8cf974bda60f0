"""Antennas through the API, on SQLite and PostgreSQL: an admin registers an Antenna with its public keys; the
Antenna's signed assertions make its national users callers, exactly as far as it is trusted. Every way an
assertion can be wrong, or an Antenna can overreach, is a clear 401, 403, 404 or 429, never a 500."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError
from sqlalchemy import select

from app.gateway.users import TokenEntry
from broker.antennas.assertion import MAX_KEYS, TYP, BoundRequest, body_hash, public_jwks, sign
from broker.db.models import AuditEvent, User
from broker.db.repositories.antennas import national_issuer
from tests.api.conftest import PROJECT, Broker, job_body
from tests.api.test_jobs import problem_of
from tests.gateway.test_gateway import private_jwks

AUDIENCE = "conveyor"  # the broker's default antenna_audience


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class AntennaKit:
    """An Antenna's side: its id, a P-256 key registered under ``kid``, and a way to call as a national user."""

    id: str
    kid: str = "k1"
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    def public_jwks(self, kid: str | None = None, key: ec.EllipticCurvePrivateKey | None = None) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk((key or self.key).public_key()))
        return {"keys": [{**jwk, "kid": kid or self.kid, "alg": "ES256", "use": "sig"}]}

    def assertion(self, subject: str, method: str, target: str, body: bytes = b"", **overrides: Any) -> str:
        """A valid assertion, or one with ``overrides`` (claims; ``header_*`` for header fields) applied."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.id, "sub": subject, "aud": AUDIENCE, "act": {"sub": self.id}, "iat": now, "exp": now + 60,
            "jti": secrets.token_urlsafe(12), **BoundRequest(method, target, body).claims(),
        }  # fmt: skip
        headers = {"kid": self.kid, "typ": TYP}
        for name, value in overrides.items():
            target_dict = headers if name.startswith("header_") else claims
            key = name.removeprefix("header_")
            if value is None:
                target_dict.pop(key, None)
            else:
                target_dict[key] = value
        return jwt.encode(claims, self.key, algorithm="ES256", headers=headers)


async def national(  # noqa: PLR0917 - reads like the request line it makes
    client: httpx.AsyncClient, kit: AntennaKit, subject: str, method: str, target: str,
    body: Mapping[str, Any] | None = None, *, assertion: str | None = None, **overrides: Any,
) -> httpx.Response:  # fmt: skip
    """Call the broker as ``kit``'s gateway does for ``subject`` (the assertion signed for this very request)."""
    content = b"" if body is None else json.dumps(body).encode()
    signed = assertion or kit.assertion(subject, method, target, content, **overrides)
    headers = {"Authorization": f"Antenna {signed}", **({"Content-Type": "application/json"} if body else {})}
    return await client.request(method, target, content=content, headers=headers)


@dataclass
class Setup:
    be: AntennaKit  # linked to alpha
    ch: AntennaKit  # linked to bravo
    operator: str  # operates be
    pi: str  # PI of PROJECT
    member_sub: str = "ada@ugent.be"  # a national user of be, researcher of PROJECT
    outsider_sub: str = "bob@kuleuven.be"  # a national user of be, in no project


async def register(broker: Broker, kit: AntennaKit, factories: list[str], **extra: Any) -> dict[str, Any]:
    body = {"id": kit.id, "country": kit.id.upper(), "title": f"Antenna {kit.id}", "factories": factories,
            "jwks": kit.public_jwks(), **extra}  # fmt: skip
    async with broker.client(broker.admin_token) as admin:
        response = await admin.post("/v1/admin/antennas", json=body)
    assert response.status_code == 201, response.text
    registered: dict[str, Any] = response.json()
    return registered


async def national_user_id(broker: Broker, token: str, antenna: str, subject: str) -> str:
    async with broker.client(token) as caller:
        response = await caller.put(f"/v1/antennas/{antenna}/users/{subject}")
    assert response.status_code == 200, response.text
    user_id: str = response.json()["id"]
    return user_id


@pytest.fixture
async def setup(broker: Broker) -> Setup:
    be, ch = AntennaKit("be"), AntennaKit("ch")
    await register(broker, be, ["alpha"])
    await register(broker, ch, ["bravo"])
    operator_id, operator = await broker.user("be-operator")
    async with broker.client(broker.admin_token) as admin:
        named = await admin.put(f"/v1/admin/antennas/be/operators/{operator_id}")
        assert named.status_code == 204, named.text
    pi_id, pi = await broker.user("pi")
    await broker.join_project(broker.admin_token, pi_id, "pi")
    kit = Setup(be, ch, operator, pi)
    # The Antenna's operator registers its national user; the PI adds them to the project.
    member_id = await national_user_id(broker, operator, "be", kit.member_sub)
    await broker.join_project(pi, member_id, "researcher")
    return kit


async def test_a_national_user_submits_reads_and_cancels_through_its_antenna(broker: Broker, setup: Setup) -> None:
    async with broker.client(None) as client:
        me = await national(client, setup.be, setup.member_sub, "GET", "/v1/me")
        assert me.status_code == 200, me.text
        assert (me.json()["antenna"], me.json()["subject"], me.json()["factories"]) == ("be", setup.member_sub,
                                                                                         ["alpha"])  # fmt: skip
        assert sorted(me.json()["scopes"]) == ["read", "submit"]
        created = await national(client, setup.be, setup.member_sub, "POST", "/v1/jobs", job_body())
        assert created.status_code == 201, created.text
        job = created.json()
        listed = await national(client, setup.be, setup.member_sub, "GET", "/v1/jobs?limit=5")
        assert [j["id"] for j in listed.json()["items"]] == [job["id"]]
        cancelled = await national(client, setup.be, setup.member_sub, "POST", f"/v1/jobs/{job['id']}/cancel")
        assert cancelled.status_code in (200, 202), cancelled.text
        # Placement sees only the Antenna's linked Factory (the project has hours on alpha and bravo): an
        # H100 job fits only bravo, so for this user it fits nowhere.
        dry = await national(client, setup.be, setup.member_sub, "POST", "/v1/jobs?dry_run=true", job_body())
        assert dry.json()["factory"] == "alpha", dry.text
        h100 = job_body(resources={"time_limit_min": 20, "gpus_per_node": 1, "gpu_type": "h100"})
        async with broker.client(setup.pi) as pi:
            assert (await pi.post("/v1/jobs?dry_run=true", json=h100)).json()["factory"] == "bravo"
        refused = await national(client, setup.be, setup.member_sub, "POST", "/v1/jobs", h100)
        assert refused.status_code == 422, refused.text
        assert refused.json()["code"].startswith("placement_failed"), refused.text
    # On-behalf-of calls are audited with the Antenna and the national user.
    async with broker.db.read() as session:
        calls = (await session.scalars(select(AuditEvent).where(AuditEvent.action == "antenna.call"))).all()
    assert {(c.detail["antenna"], c.detail["subject"], c.detail["method"]) for c in calls} == {
        ("be", setup.member_sub, "POST")
    }
    assert {c.target for c in calls} >= {"/v1/jobs", f"/v1/jobs/{job['id']}/cancel"}
    assert all(c.actor == me.json()["id"] for c in calls)


async def test_defect_01_a_national_users_dry_run_is_authorized_exactly_like_its_submit(
    broker: Broker, setup: Setup
) -> None:
    impossible = job_body(resources={"time_limit_min": 500})  # refused before placement
    async with broker.client(None) as client:
        # be's user in no project; ch's user named like be's member (a stranger to the project): either body.
        for kit, subject, body in ((setup.be, setup.outsider_sub, job_body()), (setup.ch, setup.member_sub, job_body()),
                                   (setup.be, setup.outsider_sub, impossible)):  # fmt: skip
            submitted = problem_of(await national(client, kit, subject, "POST", "/v1/jobs", body), 403, "forbidden")
            dry = await national(client, kit, subject, "POST", "/v1/jobs?dry_run=true", body)
            assert problem_of(dry, 403, "forbidden") == submitted, dry.text
            assert "site_user" not in dry.text
        member = await national(client, setup.be, setup.member_sub, "POST", "/v1/jobs?dry_run=true", job_body())
    assert member.status_code == 200, member.text
    assert member.json()["factory"] == "alpha"


def _hs256_with_public_key(kit: AntennaKit, subject: str, target: str) -> str:
    """The classic forgery: HS256 keyed with the Antenna's public key (PyJWT refuses to make it, so by hand)."""
    public_pem = kit.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return _signed_by_hand(kit, subject, target, "HS256",
                           lambda data: hmac.new(public_pem, data, hashlib.sha256).digest())  # fmt: skip


def _signed_by_hand(kit: AntennaKit, subject: str, target: str, alg: str, mac: Any) -> str:
    now = int(time.time())
    header = {"alg": alg, "typ": TYP, "kid": kit.kid}
    claims = {"iss": kit.id, "sub": subject, "aud": AUDIENCE, "act": {"sub": kit.id}, "exp": now + 60,
              "jti": secrets.token_urlsafe(12), "htm": "GET", "htu": target, "bh": body_hash(b"")}  # fmt: skip
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(mac(signing_input.encode()))}"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"header_typ": "JWT"}, "bad_type"),
        ({"header_typ": None}, "bad_type"),
        ({"header_kid": "not-registered"}, "unknown_key"),
        ({"aud": "another-broker"}, "bad_audience"),
        ({"act": {"sub": "ch"}}, "bad_actor"),
        ({"act": None}, "bad_actor"),
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"exp": int(time.time()) + 3600}, "too_long_lived"),
        ({"jti": None}, "missing_claim"),
        ({"iss": "xx"}, "unknown_antenna"),
    ],
)
async def test_a_wrong_assertion_is_refused_with_its_reason(
    broker: Broker, setup: Setup, overrides: dict[str, Any], reason: str
) -> None:
    async with broker.client(None) as client:
        refused = await national(client, setup.be, setup.member_sub, "GET", "/v1/me", **overrides)
    problem_of(refused, 401, f"unauthorized.{reason}")
    assert "invalid_token" in refused.headers["www-authenticate"]


async def test_defect_05_time_claims_are_json_numbers_and_iat_is_not_in_the_future(
    broker: Broker, setup: Setup
) -> None:
    now = int(time.time())
    refusals: list[tuple[dict[str, Any], str]] = [
        ({"exp": str(now + 60)}, "bad_claim"),
        ({"exp": "soon"}, "bad_claim"),
        ({"exp": True}, "bad_claim"),  # a bool is no number, though Python's int(True) is 1
        ({"exp": [now + 60]}, "bad_claim"),
        ({"exp": float("inf")}, "bad_claim"),  # PyJWT writes Infinity, and Python's JSON reads it back
        ({"exp": float("nan")}, "bad_claim"),
        ({"nbf": str(now)}, "bad_claim"),
        ({"nbf": False}, "bad_claim"),
        ({"iat": str(now)}, "bad_claim"),
        ({"iat": {"at": now}}, "bad_claim"),
        ({"iat": now + 3600}, "not_yet_valid"),  # issued in the future, beyond the allowed clock skew
        ({"nbf": now + 3600}, "not_yet_valid"),
    ]
    async with broker.client(None) as client:
        for overrides, reason in refusals:
            refused = await national(client, setup.be, setup.member_sub, "GET", "/v1/me", **overrides)
            assert refused.status_code == 401, (overrides, refused.text)
            problem_of(refused, 401, f"unauthorized.{reason}")
        # JSON numbers are numbers, fractions included, and a clock a few seconds ahead is within the skew.
        for overrides in ({"exp": now + 60.5, "nbf": now - 0.5}, {"iat": now + 5}, {"iat": None}):
            accepted = await national(client, setup.be, setup.member_sub, "GET", "/v1/me", **overrides)
            assert accepted.status_code == 200, (overrides, accepted.text)


# What neither the gateway nor the broker takes for a national user's subject (a path segment of the broker's
# API, a user's name in listings and audits): a slash, control, format (bidi, zero-width) or separator
# characters, a lone surrogate, nothing, or more than 255 characters.
BAD_SUBJECTS = ("a/b", "line\nbreak", "evil\u202egnp.exe", "zero\u200bwidth", "para\u2029graph", "lone\ud800", "",
                "x" * 256)  # fmt: skip


async def test_defect_07_the_broker_refuses_every_subject_the_gateway_refuses(broker: Broker, setup: Setup) -> None:
    async with broker.client(None) as client:
        for subject in BAD_SUBJECTS:
            refused = await national(client, setup.be, subject, "GET", "/v1/me")
            assert refused.status_code == 401, (subject, refused.text)
            problem_of(refused, 401, "unauthorized.bad_claim")
            with pytest.raises(ValidationError):  # the gateway's users file refuses it too
                TokenEntry(sha256="0" * 64, sub=subject)
        for good in ("bob@uni.example.be", "login.example.be:f3c1-77", "Zoë Ñúñez"):
            TokenEntry(sha256="0" * 64, sub=good)
            assert (await national(client, setup.be, good, "GET", "/v1/me")).status_code == 200
    async with broker.client(setup.operator) as operator:  # nor can an operator register one
        for subject in ("evil\u202egnp.exe", "zero\u200bwidth", "bell\x07"):
            registered = await operator.put(f"/v1/antennas/be/users/{quote(subject, safe='')}")
            problem_of(registered, 422, "validation_error")
    async with broker.db.read() as session:
        subjects = set(await session.scalars(select(User.subject).where(User.issuer == national_issuer("be"))))
    assert subjects == {setup.member_sub, "bob@uni.example.be", "login.example.be:f3c1-77", "Zoë Ñúñez"}


async def test_forged_none_and_hs256_assertions_are_refused(broker: Broker, setup: Setup) -> None:
    impostor = AntennaKit("be", key=ec.generate_private_key(ec.SECP256R1()))  # the registered kid, another key
    none_alg = _signed_by_hand(setup.be, setup.member_sub, "/v1/me", "none", lambda _: b"")
    hs256 = _hs256_with_public_key(setup.be, setup.member_sub, "/v1/me")
    async with broker.client(None) as client:
        forged = await national(client, impostor, setup.member_sub, "GET", "/v1/me")
        problem_of(forged, 401, "unauthorized.bad_signature")
        for assertion in (none_alg, hs256):
            refused = await national(client, setup.be, setup.member_sub, "GET", "/v1/me", assertion=assertion)
            problem_of(refused, 401, "unauthorized.bad_algorithm")
        garbage = await national(client, setup.be, setup.member_sub, "GET", "/v1/me", assertion="a.b.c")
        problem_of(garbage, 401, "unauthorized.malformed")


async def test_an_assertion_is_accepted_once_and_only_for_its_own_request(broker: Broker, setup: Setup) -> None:
    body = job_body()
    content = json.dumps(body).encode()
    assertion = setup.be.assertion(setup.member_sub, "POST", "/v1/jobs?dry_run=true", content)
    async with broker.client(None) as client:
        # Another path, another body, another method: the binding does not match (and nothing is used up).
        other_path = await national(client, setup.be, "", "POST", "/v1/jobs", body, assertion=assertion)
        problem_of(other_path, 401, "unauthorized.wrong_request")
        other_body = await national(client, setup.be, "", "POST", "/v1/jobs?dry_run=true", job_body(name="x"),
                                    assertion=assertion)  # fmt: skip
        problem_of(other_body, 401, "unauthorized.wrong_request")
        first = await national(client, setup.be, "", "POST", "/v1/jobs?dry_run=true", body, assertion=assertion)
        assert first.status_code == 200, first.text
        again = await national(client, setup.be, "", "POST", "/v1/jobs?dry_run=true", body, assertion=assertion)
        problem_of(again, 401, "unauthorized.replayed")


async def test_an_antenna_stays_within_its_factories_its_users_and_user_routes(broker: Broker, setup: Setup) -> None:
    async with broker.client(None) as client:
        unlinked = await national(client, setup.be, setup.member_sub, "POST", "/v1/jobs",
                                  job_body(placement={"factory": "bravo"}))  # fmt: skip
        assert "not linked to Factory 'bravo'" in (problem_of(unlinked, 403, "forbidden").detail or "")
        mine = await national(client, setup.be, setup.member_sub, "POST", "/v1/jobs", job_body())
        assert mine.status_code == 201, mine.text
        job_id = mine.json()["id"]
        # Antenna ch naming be's national user acts for ch's own user of that name: a stranger to the project.
        foreign = await national(client, setup.ch, setup.member_sub, "POST", "/v1/jobs", job_body())
        problem_of(foreign, 403, "forbidden")
        problem_of(await national(client, setup.ch, setup.member_sub, "GET", f"/v1/jobs/{job_id}"), 404, "not_found")
        # Signing as be with ch's key does not verify.
        problem_of(await national(client, AntennaKit("be", kid="k1", key=setup.ch.key), setup.member_sub, "GET",
                                  f"/v1/jobs/{job_id}"), 401, "unauthorized.bad_signature")  # fmt: skip
        # A national user outside the project.
        outsider = await national(client, setup.be, setup.outsider_sub, "POST", "/v1/jobs", job_body())
        problem_of(outsider, 403, "forbidden")
        problem_of(await national(client, setup.be, setup.outsider_sub, "GET", f"/v1/jobs/{job_id}"), 404,
                   "not_found")  # fmt: skip
        # Admin routes and broker credentials are not for national users.
        for method, target, body in (
            ("GET", "/v1/admin/antennas", None),
            ("POST", "/v1/admin/projects", {"id": "P-1", "title": "t"}),
            ("POST", "/v1/tokens", {"name": "mine", "scopes": ["read"]}),
            ("PUT", f"/v1/projects/{PROJECT}/members/usr_x", {"role": "researcher"}),
        ):
            answer = await national(client, setup.be, setup.member_sub, method, target, body)
            assert answer.status_code in (403, 404), (target, answer.text)
            assert answer.status_code != 404 or target.startswith("/v1/projects"), answer.text


async def test_defect_19_national_user_tokens_forbidden(broker: Broker, setup: Setup) -> None:
    """National users hold no personal tokens (README): listing or revoking them is 403, as making one is."""
    async with broker.client(None) as client:
        for method, target in (("GET", "/v1/tokens"), ("DELETE", "/v1/tokens/tok_aaaaaaaaaaaaaaaa")):
            answer = await national(client, setup.be, setup.member_sub, method, target)
            problem = problem_of(answer, 403, "forbidden")
            assert "no broker credentials" in (problem.detail or ""), answer.text


async def test_an_antenna_operator_adds_only_its_own_national_users(broker: Broker, setup: Setup) -> None:
    outsider_id = await national_user_id(broker, setup.operator, "be", setup.outsider_sub)
    ch_user_id = await national_user_id(broker, broker.admin_token, "ch", "carla@ethz.ch")
    local_id, _ = await broker.user("local")
    async with broker.client(setup.operator) as operator:
        granted = await operator.put(f"/v1/projects/{PROJECT}/members/{outsider_id}", json={"role": "researcher"})
        assert granted.status_code == 204, granted.text
        problem_of(await operator.put(f"/v1/projects/{PROJECT}/members/{outsider_id}", json={"role": "pi"}), 403,
                   "forbidden")  # fmt: skip
        for other in (ch_user_id, local_id):  # another Antenna's user, a direct user: not the operator's to add
            refused = await operator.put(f"/v1/projects/{PROJECT}/members/{other}", json={"role": "researcher"})
            problem_of(refused, 404, "not_found")
        problem_of(await operator.put("/v1/antennas/ch/users/someone"), 404, "not_found")
    async with broker.client(None) as client:
        now_member = await national(client, setup.be, setup.outsider_sub, "POST", "/v1/jobs", job_body())
        assert now_member.status_code == 201, now_member.text


async def test_rate_limit_and_quota_answer_429_with_retry_after(broker: Broker, setup: Setup) -> None:
    limited = AntennaKit("lv")
    await register(broker, limited, ["alpha"], requests_per_minute=3, max_active_jobs=1)
    member_id = await national_user_id(broker, broker.admin_token, "lv", "ieva@lu.lv")
    await broker.join_project(setup.pi, member_id, "researcher")
    async with broker.client(None) as client:
        first = await national(client, limited, "ieva@lu.lv", "POST", "/v1/jobs", job_body())
        assert first.status_code == 201, first.text
        over_quota = await national(client, limited, "ieva@lu.lv", "POST", "/v1/jobs", job_body())
        problem_of(over_quota, 429, "rate_limited.antenna_quota")
        assert int(over_quota.headers["retry-after"]) > 0
        answers = [await national(client, limited, "ieva@lu.lv", "GET", "/v1/me") for _ in range(3)]
    assert [a.status_code for a in answers][:1] == [200]
    limited_answer = answers[-1]
    problem_of(limited_answer, 429, "rate_limited.antenna")
    assert int(limited_answer.headers["retry-after"]) >= 1


async def test_keys_rotate_by_upload_and_bad_key_sets_are_refused(broker: Broker, setup: Setup) -> None:
    new_key = ec.generate_private_key(ec.SECP256R1())
    async with broker.client(broker.admin_token) as admin:
        rotated = await admin.put("/v1/admin/antennas/be/keys", json=setup.be.public_jwks(kid="k2", key=new_key))
        assert rotated.status_code == 200, rotated.text
        assert rotated.json()["kids"] == ["k2"]
        private_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(new_key))
        bad_sets: list[dict[str, Any]] = [
            {"keys": []},
            {"keys": [{**private_jwk, "kid": "p", "alg": "ES256"}]},  # private material
            {"keys": [{**setup.be.public_jwks()["keys"][0], "alg": "HS256"}]},
            {"keys": [{k: v for k, v in setup.be.public_jwks()["keys"][0].items() if k != "kid"}]},
        ]
        for bad in bad_sets:
            problem_of(await admin.put("/v1/admin/antennas/be/keys", json=bad), 422, "validation_error")
        again = {"id": "be", "country": "BE", "title": "t", "factories": ["alpha"], "jwks": setup.be.public_jwks()}
        problem_of(await admin.post("/v1/admin/antennas", json=again), 409, "already_exists")
        nowhere = {**again, "id": "is", "country": "IS", "factories": ["nowhere"]}
        problem_of(await admin.post("/v1/admin/antennas", json=nowhere), 422, "validation_error")
    async with broker.client(None) as client:
        old = await national(client, setup.be, setup.member_sub, "GET", "/v1/me")
        problem_of(old, 401, "unauthorized.unknown_key")
        new = AntennaKit("be", kid="k2", key=new_key)
        assert (await national(client, new, setup.member_sub, "GET", "/v1/me")).status_code == 200


def _resolved(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """``schema``, or what its $ref names in ``document``."""
    ref = schema.get("$ref")
    if ref is None:
        return schema
    resolved: dict[str, Any] = document["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    return resolved


async def test_defect_19_antenna_jwks_is_typed(broker: Broker, setup: Setup) -> None:
    document = broker.app.openapi()
    registration = _resolved(document, document["components"]["schemas"]["AntennaRequest"]["properties"]["jwks"])
    keys_route = document["paths"]["/v1/admin/antennas/{antenna_id}/keys"]["put"]["requestBody"]
    rotation = _resolved(document, keys_route["content"]["application/json"]["schema"])
    for jwks in (registration, rotation):
        assert jwks.get("additionalProperties") is False, jwks
        keys = jwks["properties"]["keys"]
        assert (keys["minItems"], keys["maxItems"]) == (1, MAX_KEYS)
        jwk = _resolved(document, keys["items"])
        assert jwk.get("additionalProperties") is False, jwk
        assert set(jwk["properties"]) == {"kty", "kid", "alg", "use", "crv", "x", "y", "n", "e"}
        assert set(jwk["required"]) == {"kty", "kid", "alg"}
        for name, member in jwk["properties"].items():  # each a bounded string or a closed set
            for branch in member.get("anyOf", [member]):
                assert branch.get("type") == "null" or "enum" in branch or "const" in branch or (
                    branch.get("type") == "string" and 0 < branch.get("maxLength", 0) <= 4096
                ), (name, member)  # fmt: skip
    # It still takes the keys the gateway prints (an EC and an RSA key, as --public-jwks does) and the tests use.
    gateway_jwks = public_jwks(private_jwks())
    kit = AntennaKit("lu")
    registered = await register(broker, kit, ["alpha"], jwks=gateway_jwks)
    assert registered["kids"] == ["ec-1", "rsa-1"]
    async with broker.client(broker.admin_token) as admin:
        rotated = await admin.put("/v1/admin/antennas/lu/keys", json=kit.public_jwks())
        assert rotated.json()["kids"] == [kit.kid], rotated.text
        with_private = {"keys": [{**gateway_jwks["keys"][0], "d": private_jwks()["keys"][0]["d"]}]}
        refused = problem_of(await admin.put("/v1/admin/antennas/lu/keys", json=with_private), 422,
                             "validation_error")  # fmt: skip
        assert ["body", "keys", 0, "d"] in [error.loc for error in refused.errors or []], refused


async def test_the_gateways_signer_and_the_brokers_checker_agree(broker: Broker, setup: Setup) -> None:
    """The gateway's half (``sign``) against the broker's half, through the app."""
    content = json.dumps(job_body()).encode()
    signed = sign(setup.be.key, kid="k1", alg="ES256", antenna="be", subject=setup.member_sub, audience=AUDIENCE,
                  request=BoundRequest("POST", "/v1/jobs", content))  # fmt: skip
    async with broker.client(None) as client:
        response = await client.post("/v1/jobs", content=content, headers={
            "Authorization": f"Antenna {signed}", "Content-Type": "application/json"})  # fmt: skip
    assert response.status_code == 201, response.text
