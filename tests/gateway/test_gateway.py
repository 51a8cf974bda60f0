"""The Antenna gateway over real sockets: uvicorn on 127.0.0.1 in front of a stand-in broker that records what
it received and answers as each test says. Nothing here starts the real broker or touches Slurm.

The servers run in one event loop for the module (every test is async, hence ``pytestmark``), on sockets bound
to port 0 (no free-port race): one stand-in broker and one gateway shared by the tests that need no special
settings, so the file stays fast. The one subprocess test runs ``python -m app.gateway`` as an operator would,
and stops it by its PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import pytest_asyncio
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.gateway.__main__ import main as gateway_main
from app.gateway.main import create_app
from app.gateway.settings import GatewayConfigError, GatewaySettings, load_signing_key
from app.gateway.users import AuthenticationFailed, NationalUsers, TokenEntry
from broker.antennas.assertion import BoundRequest, parse_jwks, public_jwks, verify
from broker.identity.oidc import OidcVerifier, parse_issuers

pytestmark = pytest.mark.asyncio(loop_scope="module")  # one loop for the module: the shared servers live in it

REPO = Path(__file__).resolve().parents[2]
TOKEN = "gw-alice-0123456789abcdefghijklmnop"
SUB = "alice@uni.example.be"
ANTENNA = "be"
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
STRIPPED = {
    "cookie": "session=secret",
    "x-forwarded-for": "203.0.113.9",
    "x-forwarded-host": "evil.example",
    "forwarded": "for=203.0.113.9",
    "x-real-ip": "203.0.113.9",
    "conveyor-user": "admin",
    "x-conveyor-sub": "root",
    "proxy-authorization": "Basic cm9vdDpyb290",
}


# --- keys and files ------------------------------------------------------------------------------------------


@functools.cache
def private_jwks() -> dict[str, Any]:
    """An ES256 key (the first: the default signer) and an RS256 key (``key_ops: ["sign"]``, as PyJWT exports
    it), as a JWKS of private keys."""
    ec_jwk = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()), as_dict=True)
    rsa_jwk = RSAAlgorithm.to_jwk(rsa.generate_private_key(public_exponent=65537, key_size=2048), as_dict=True)
    return {"keys": [{**ec_jwk, "kid": "ec-1", "alg": "ES256"}, {**rsa_jwk, "kid": "rsa-1", "alg": "RS256"}]}


def users_document(*entries: tuple[str, str]) -> dict[str, Any]:
    return {"tokens": [{"sha256": hashlib.sha256(t.encode()).hexdigest(), "sub": s} for t, s in entries]}


@dataclass
class Files:
    keys: Path
    users: Path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    directory = tmp_path_factory.mktemp("gateway")
    keys, users = directory / "keys.json", directory / "users.yaml"
    keys.write_text(json.dumps(private_jwks()))
    users.write_text(json.dumps(users_document((TOKEN, SUB), ("gw-bob-0123456789abcdefghij", "bob@uni.example.be"))))
    return Files(keys=keys, users=users)


def settings_for(files: Files, broker_url: str, **overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = {
        "broker_url": broker_url,
        "antenna_id": ANTENNA,
        "signing_keys_file": files.keys,
        "users_file": files.users,
        "timeout_s": 5.0,
        **overrides,
    }
    return GatewaySettings(**values)


# --- servers ---------------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """``app`` under uvicorn on 127.0.0.1 in this event loop; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning", timeout_graceful_shutdown=2))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    deadline = time.monotonic() + 5
    while not server.started:
        if task.done() or time.monotonic() > deadline:
            server.should_exit = True
            await task
            pytest.fail("the server did not start")
        await asyncio.sleep(0.005)  # a poll interval, not a wait for something to happen
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@dataclass(frozen=True)
class Seen:
    """One request as the stand-in broker received it."""

    method: str
    target: str  # raw path and query, as on the wire
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key.lower() == name), None)


Answer = Callable[[Seen], Awaitable[Response]]


async def _ok(seen: Seen) -> Response:
    return JSONResponse({"ok": True, "path": seen.target})


class Upstream:
    """The stand-in broker: records every request and answers with ``answer``."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.answer: Answer = _ok
        self.release = asyncio.Event()  # set at teardown: frees a handler that is made to hang
        self.url = ""
        self.app = Starlette(routes=[Route("/{path:path}", self._endpoint, methods=METHODS)])

    def reset(self) -> None:
        self.seen = []
        self.answer = _ok
        self.release = asyncio.Event()

    async def _endpoint(self, request: Request) -> Response:
        query = request.scope["query_string"].decode()
        target = request.scope["raw_path"].decode() + (f"?{query}" if query else "")
        seen = Seen(request.method, target, list(request.headers.items()), await request.body())
        self.seen.append(seen)
        return await self.answer(seen)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def upstream_server() -> AsyncIterator[Upstream]:
    stand_in = Upstream()
    async with serving(stand_in.app) as url:
        stand_in.url = url
        yield stand_in
        stand_in.release.set()


@pytest.fixture
def upstream(upstream_server: Upstream) -> Iterator[Upstream]:
    """The module's stand-in broker, with nothing seen yet and the default answer."""
    upstream_server.reset()
    yield upstream_server
    upstream_server.release.set()


@contextlib.asynccontextmanager
async def running(settings: GatewaySettings) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway with ``settings`` on a real socket, and a client for it."""
    async with serving(create_app(settings)) as url, httpx.AsyncClient(base_url=url, trust_env=False) as client:
        yield client


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_client(files: Files, upstream_server: Upstream) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings_for(files, upstream_server.url, max_body_bytes=4096, auth_failures_per_minute=10_000)
    async with running(settings) as client:
        yield client


@pytest.fixture
def client(shared_client: httpx.AsyncClient, upstream: Upstream) -> httpx.AsyncClient:
    """A client of the module's gateway (default settings, 4 KiB bodies), in front of a reset ``upstream``."""
    return shared_client


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert {"type", "title", "detail"} <= body.keys()
    return body


# --- forwarding ----------------------------------------------------------------------------------------------


async def test_forwards_a_signed_request_without_the_callers_credentials(
    client: httpx.AsyncClient, upstream: Upstream
) -> None:
    body = b'{"name": "train", "project": "p1"}'
    headers = {
        **bearer(),
        **STRIPPED,
        "Content-Type": "application/json",
        "Idempotency-Key": "k-1",
        "User-Agent": "t/1",
    }
    response = await client.post("/v1/jobs?dry_run=true", content=body, headers=headers)
    assert response.status_code == 200
    assert response.json() == {"ok": True, "path": "/v1/jobs?dry_run=true"}

    [seen] = upstream.seen
    assert (seen.method, seen.target, seen.body) == ("POST", "/v1/jobs?dry_run=true", body)
    names = {name.lower() for name, _ in seen.headers}
    assert not names & STRIPPED.keys()
    assert TOKEN not in repr(seen.headers)
    assert seen.header("idempotency-key") == "k-1"
    assert seen.header("content-type") == "application/json"
    assert seen.header("user-agent") == "t/1"

    scheme, assertion = (seen.header("authorization") or "").split(" ")
    assert scheme == "Antenna"
    keys = parse_jwks(public_jwks(private_jwks()))
    bound = BoundRequest(seen.method, seen.target, seen.body)
    claims = verify(assertion, keys, antenna=ANTENNA, audience="conveyor", request=bound)
    assert claims.subject == SUB
    assert jwt.decode(assertion, options={"verify_signature": False})["iss"] == ANTENNA
    assert jwt.get_unverified_header(assertion)["kid"] == "ec-1"


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "/v1/me"),
        ("GET", "/v1/me/accounts"),
        ("GET", "/v1/jobs?state=queued&state=running&label=team%3Dnlp&limit=5"),
        ("GET", "/v1/jobs/job_1"),
        ("POST", "/v1/jobs/job_1/cancel"),
        ("GET", "/v1/jobs/job_1/events?after=3"),
        ("GET", "/v1/jobs/job_1/output?stream=stderr&max_bytes=10"),
        ("GET", "/v1/factories"),
        ("GET", "/v1/factories/lumi"),
        ("GET", "/v1/projects"),
        ("GET", "/v1/projects/p.nlp-1/usage"),
        ("GET", "/v1/projects/p.nlp-1/members"),
    ],
)
async def test_every_user_route_is_forwarded_as_sent(
    client: httpx.AsyncClient, upstream: Upstream, method: str, target: str
) -> None:
    response = await client.request(method, target, headers=bearer("gw-bob-0123456789abcdefghij"))
    assert response.status_code == 200
    [seen] = upstream.seen
    assert (seen.method, seen.target) == (method, target)
    assertion = (seen.header("authorization") or "").removeprefix("Antenna ")
    keys = parse_jwks(public_jwks(private_jwks()))
    claims = verify(assertion, keys, antenna=ANTENNA, audience="conveyor", request=BoundRequest(method, target))
    assert claims.subject == "bob@uni.example.be"


async def test_signs_with_the_chosen_key(files: Files, upstream: Upstream) -> None:
    async with running(settings_for(files, upstream.url, signing_kid="rsa-1", audience="conveyor-eu")) as client:
        response = await client.post("/v1/jobs", json={"name": "x"}, headers=bearer())
    assert response.status_code == 200
    [seen] = upstream.seen
    assertion = (seen.header("authorization") or "").removeprefix("Antenna ")
    assert jwt.get_unverified_header(assertion)["alg"] == "RS256"
    keys = parse_jwks(public_jwks(private_jwks()))
    bound = BoundRequest("POST", "/v1/jobs", seen.body)
    assert verify(assertion, keys, antenna=ANTENNA, audience="conveyor-eu", request=bound).subject == SUB


async def test_healthz_is_the_gateways_own(client: httpx.AsyncClient, upstream: Upstream) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert upstream.seen == []


# --- authentication ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "code"),
    [
        (None, "unauthorized.missing"),
        ("Bearer not-a-known-token", "unauthorized.unknown"),
        ("Basic YWxpY2U6cHc=", "unauthorized.malformed"),
        (f"Antenna {TOKEN}", "unauthorized.malformed"),
    ],
)
async def test_unauthenticated_callers_get_401(
    client: httpx.AsyncClient, upstream: Upstream, authorization: str | None, code: str
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = await client.post("/v1/jobs", headers=headers, json={"name": "x"})
    assert_problem(response, 401, code)
    assert response.headers["www-authenticate"].startswith('Bearer realm="conveyor-gateway"')
    assert upstream.seen == []


async def test_repeated_failures_from_one_address_are_slowed_down(files: Files, upstream: Upstream) -> None:
    async with running(settings_for(files, upstream.url, auth_failures_per_minute=2)) as client:
        for _ in range(2):
            assert (await client.get("/v1/me", headers=bearer("wrong"))).status_code == 401
        response = await client.get("/v1/me", headers=bearer())
    assert_problem(response, 429, "rate_limited")
    assert int(response.headers["retry-after"]) >= 1
    assert upstream.seen == []


async def test_oidc_users_are_verified_and_named_by_issuer_and_subject() -> None:
    issuer = "https://idp.example.be/realms/aif"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "idp-1", "alg": "RS256"}

    def jwks(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"keys": [jwk]})

    config = parse_issuers([{"issuer": issuer, "audience": "gateway", "jwks_uri": f"{issuer}/certs"}])
    now = int(time.time())
    claims = {"iss": issuer, "aud": "gateway", "sub": "f3c1", "iat": now, "exp": now + 60}
    good = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "idp-1"})
    expired = jwt.encode({**claims, "exp": now - 600}, key, algorithm="RS256", headers={"kid": "idp-1"})
    entries = [TokenEntry(sha256=hashlib.sha256(TOKEN.encode()).hexdigest(), sub=SUB)]
    async with OidcVerifier(config, transport=httpx.MockTransport(jwks)) as oidc:
        users = NationalUsers(entries, oidc)
        assert await users.authenticate(f"Bearer {good}") == "idp.example.be:f3c1"
        assert await users.authenticate(f"bearer {TOKEN}") == SUB
        with pytest.raises(AuthenticationFailed) as refused:
            await users.authenticate(f"Bearer {expired}")
    assert refused.value.reason == "expired"


# --- what is never forwarded ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/admin/users"),
        ("POST", "/v1/admin/users"),
        ("POST", "/v1/admin/projects"),
        ("GET", "/v1/tokens"),
        ("POST", "/v1/tokens"),
        ("DELETE", "/v1/tokens/tok_1"),
        ("PUT", "/v1/factories/lumi/accounts/user/alice"),
        ("DELETE", "/v1/factories/lumi/accounts/user/alice"),
        ("POST", "/v1/factories/lumi/undrain"),
        ("PUT", "/v1/admin/factories/lumi/operators/u1"),
        ("GET", "/metrics"),
        ("GET", "/readyz"),
        ("GET", "/v1/unknown"),
        ("DELETE", "/v1/jobs/job_1"),
        ("PUT", "/v1/jobs"),
        ("GET", "/v1/jobs/"),
        ("GET", "/v1//jobs"),
        ("GET", "/v1/jobs/job_1/events/extra"),
        ("GET", "/v1/jobs/%2E%2E/cancel"),
        ("GET", "/v1/jobs/job%2F1"),
    ],
)
async def test_other_routes_answer_404_without_the_broker(
    client: httpx.AsyncClient, upstream: Upstream, method: str, path: str
) -> None:
    response = await client.request(method, path, headers=bearer(), content=b"{}" if method != "GET" else None)
    assert_problem(response, 404, "not_found")
    assert upstream.seen == []


async def raw_status(base_url: str, target: str) -> int:
    """The status of a GET of ``target`` sent verbatim (httpx would remove its dot segments first)."""
    url = httpx.URL(base_url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    head = f"GET {target} HTTP/1.1\r\nHost: {url.host}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    writer.write(head.encode())
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return int(status_line.split()[1])


@pytest.mark.parametrize(
    "target",
    ["/v1/jobs/../admin/users", "/v1/jobs/..", "/v1/jobs/../tokens", "/v1/projects/../me/usage", "/v1/factories/a..b"],
)
async def test_dot_segments_answer_404(client: httpx.AsyncClient, upstream: Upstream, target: str) -> None:
    assert await raw_status(str(client.base_url), target) == 404
    assert upstream.seen == []


async def test_a_query_is_forwarded_byte_for_byte(client: httpx.AsyncClient, upstream: Upstream) -> None:
    target = "/v1/jobs?label=k%3Dv&name=caf%c3%a9&q={a}|b^c&x=~'"
    assert await raw_status(str(client.base_url), target) == 200
    [seen] = upstream.seen
    assert seen.target == target
    assertion = (seen.header("authorization") or "").removeprefix("Antenna ")
    keys = parse_jwks(public_jwks(private_jwks()))
    verify(assertion, keys, antenna=ANTENNA, audience="conveyor", request=BoundRequest("GET", seen.target))


# --- relaying the broker's answers ---------------------------------------------------------------------------


async def test_broker_urls_are_rewritten_to_the_gateways(client: httpx.AsyncClient, upstream: Upstream) -> None:
    async def created(seen: Seen) -> Response:
        body = {
            "id": "job_1",
            "links": {
                "self": "/v1/jobs/job_1",
                "events": f"{upstream.url}/v1/jobs/job_1/events",
                "docs": "https://example.org/v1/jobs",
            },
        }
        headers = {
            "Location": f"{upstream.url}/v1/jobs/job_1",
            "Link": f'<{upstream.url}/v1/jobs?cursor=c2>; rel="next"',
        }
        return JSONResponse(body, status_code=201, headers=headers)

    upstream.answer = created
    response = await client.post("/v1/jobs", json={"name": "x"}, headers=bearer())
    base = str(client.base_url).rstrip("/")
    assert response.status_code == 201
    assert response.headers["location"] == f"{base}/v1/jobs/job_1"
    assert response.headers["link"] == f'<{base}/v1/jobs?cursor=c2>; rel="next"'
    assert response.json()["links"] == {
        "self": "/v1/jobs/job_1",
        "events": f"{base}/v1/jobs/job_1/events",
        "docs": "https://example.org/v1/jobs",
    }


async def test_public_url_is_the_gateways_address_when_set(files: Files, upstream: Upstream) -> None:
    async def created(seen: Seen) -> Response:
        return Response(status_code=201, headers={"Location": f"{upstream.url}/v1/jobs/job_2"})

    upstream.answer = created
    async with running(settings_for(files, upstream.url, public_url="https://antenna.example.be/conveyor/")) as client:
        response = await client.post("/v1/jobs", json={}, headers=bearer())
    assert response.headers["location"] == "https://antenna.example.be/conveyor/v1/jobs/job_2"


@pytest.mark.parametrize(
    ("status", "headers"),
    [(409, {}), (422, {}), (429, {"Retry-After": "7"}), (503, {"Retry-After": "5"}), (401, {"WWW-Authenticate": "x"})],
)
async def test_statuses_problems_and_headers_are_relayed_unchanged(
    client: httpx.AsyncClient, upstream: Upstream, status: int, headers: dict[str, str]
) -> None:
    problem = json.dumps({"type": "https://conveyor.eu/problems/x", "title": "T", "status": status, "code": "x.y"})

    async def refuse(seen: Seen) -> Response:
        return Response(problem, status_code=status, headers=headers, media_type="application/problem+json")

    upstream.answer = refuse
    response = await client.post("/v1/jobs/job_1/cancel", headers=bearer())
    assert response.status_code == status
    assert response.content == problem.encode()
    assert response.headers["content-type"] == "application/problem+json"
    for name, value in headers.items():
        assert response.headers[name] == value


async def test_an_unreachable_broker_is_a_502(files: Files) -> None:
    with socket.socket() as reserved:  # bound, never listening: connections are refused
        reserved.bind(("127.0.0.1", 0))
        broker_url = f"http://127.0.0.1:{reserved.getsockname()[1]}"
        async with running(settings_for(files, broker_url)) as client:
            response = await client.get("/v1/me", headers=bearer())
    assert_problem(response, 502, "bad_gateway")


async def test_a_slow_broker_is_a_504(files: Files, upstream: Upstream) -> None:
    async def hang(seen: Seen) -> Response:
        await upstream.release.wait()
        return Response(status_code=204)

    upstream.answer = hang
    async with running(settings_for(files, upstream.url, timeout_s=0.2)) as client:
        response = await client.get("/v1/factories", headers=bearer())
    upstream.release.set()
    assert_problem(response, 504, "gateway_timeout")


async def test_an_oversize_body_is_a_413(client: httpx.AsyncClient, upstream: Upstream) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"x" * 2000

    declared = await client.post("/v1/jobs", content=b"x" * 4097, headers=bearer())
    chunked = await client.post("/v1/jobs", content=chunks(), headers=bearer())
    exact = await client.post("/v1/jobs", content=b"x" * 4096, headers=bearer())
    assert_problem(declared, 413, "payload_too_large")
    assert_problem(chunked, 413, "payload_too_large")
    assert exact.status_code == 200
    assert [seen.body for seen in upstream.seen] == [b"x" * 4096]


# --- configuration -------------------------------------------------------------------------------------------


async def test_bad_configuration_is_refused_clearly(files: Files, tmp_path: Path) -> None:
    public_file = tmp_path / "public.json"
    public_file.write_text(json.dumps(public_jwks(private_jwks())))
    no_kid = tmp_path / "no-kid.json"
    no_kid.write_text(json.dumps({"keys": [{k: v for k, v in private_jwks()["keys"][0].items() if k != "kid"}]}))
    bad_users = tmp_path / "bad-users.yaml"
    bad_users.write_text("tokens:\n  - sha256: not-hex\n    sub: alice\n")
    slash_users = tmp_path / "slash-users.json"
    slash_users.write_text(json.dumps(users_document((TOKEN, "uni/alice"))))
    oidc_users = tmp_path / "oidc-users.json"
    oidc_users.write_text(json.dumps(users_document((TOKEN, "uni.example.be:alice"))))
    issuer = '{"issuer": "https://uni.example.be/idp", "audience": "gw", "jwks_uri": "https://uni.example.be/jwks"}'
    issuers = f"[{issuer}]"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"signing_keys_file": public_file}, "is not a private key"),
        ({"signing_keys_file": no_kid}, "has no kid"),
        ({"signing_keys_file": tmp_path / "absent.json"}, "cannot read the file"),
        ({"signing_kid": "nope"}, "signing_kid 'nope' is not in"),
        ({"users_file": tmp_path / "missing-users.yaml"}, "missing-users.yaml: cannot read the file"),
        ({"users_file": bad_users}, "tokens[0].sha256"),
        ({"users_file": slash_users}, "tokens[0].sub"),
        (
            {"oidc_issuers": issuers, "users_file": oidc_users},
            "would pass for a user of the OIDC issuer https://uni.example.be/idp",
        ),
        ({"oidc_issuers": f"[{issuer}, {issuer.replace('/idp', '/other')}]"}, "one issuer per host"),
        ({"users_file": None}, "no way to authenticate national users"),
    ]
    for overrides, message in cases:
        with pytest.raises(GatewayConfigError) as refused:
            create_app(settings_for(files, "http://127.0.0.1:9", **overrides))
        assert message in str(refused.value), (overrides, str(refused.value))


async def test_a_key_whose_public_half_the_wire_model_refuses_is_refused_at_start(tmp_path: Path) -> None:
    """The broker reads an uploaded JWKS with its typed model (public parameters only, each bounded)."""
    ec_jwk = private_jwks()["keys"][0]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"comment": "laptop key"}, "keys[0].comment"),
        ({"ext": True}, "keys[0].ext"),
    ]
    for extra, where in cases:
        odd = tmp_path / "odd.json"
        odd.write_text(json.dumps({"keys": [{**ec_jwk, **extra}]}))
        with pytest.raises(GatewayConfigError, match="the broker would refuse its public half") as refused:
            load_signing_key(odd)
        assert where in str(refused.value)


async def test_key_ops_must_allow_signing(tmp_path: Path) -> None:
    rsa_jwk = private_jwks()["keys"][1]
    assert rsa_jwk["key_ops"] == ["sign"]
    wrapping = tmp_path / "wrapping.json"
    wrapping.write_text(json.dumps({"keys": [{**rsa_jwk, "key_ops": ["decrypt"]}]}))
    with pytest.raises(GatewayConfigError, match="key_ops without 'sign'"):
        load_signing_key(wrapping)


async def test_the_entry_point_refuses_without_a_traceback(
    files: Files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [name for name in os.environ if name.startswith("CONVEYOR_GATEWAY_")]:
        monkeypatch.delenv(name)
    with pytest.raises(SystemExit) as exited:
        gateway_main([])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "CONVEYOR_GATEWAY_BROKER_URL: required field is missing" in error
    assert "Traceback" not in error

    public_file = tmp_path / "public.json"
    public_file.write_text(json.dumps(public_jwks(private_jwks())))
    monkeypatch.setenv("CONVEYOR_GATEWAY_BROKER_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("CONVEYOR_GATEWAY_ANTENNA_ID", ANTENNA)
    monkeypatch.setenv("CONVEYOR_GATEWAY_SIGNING_KEYS_FILE", str(public_file))
    monkeypatch.setenv("CONVEYOR_GATEWAY_USERS_FILE", str(files.users))
    with pytest.raises(SystemExit):
        gateway_main([])
    assert "CONVEYOR_GATEWAY_BROKER_URL: broker_url must be the broker's root" in capsys.readouterr().err

    monkeypatch.setenv("CONVEYOR_GATEWAY_BROKER_URL", "http://127.0.0.1:9")
    with pytest.raises(SystemExit):
        gateway_main([])
    assert "is not a private key" in capsys.readouterr().err

    monkeypatch.setenv("CONVEYOR_GATEWAY_SIGNING_KEYS_FILE", str(files.keys))
    gateway_main(["--public-jwks"])
    printed = json.loads(capsys.readouterr().out)
    assert printed == public_jwks(private_jwks())
    assert set(parse_jwks(printed)) == {"ec-1", "rsa-1"}


async def test_python_m_app_gateway_serves(files: Files, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")},
        "CONVEYOR_GATEWAY_BROKER_URL": "http://127.0.0.1:9",
        "CONVEYOR_GATEWAY_ANTENNA_ID": ANTENNA,
        "CONVEYOR_GATEWAY_SIGNING_KEYS_FILE": str(files.keys),
        "CONVEYOR_GATEWAY_USERS_FILE": str(files.users),
        "CONVEYOR_GATEWAY_PORT": str(port),
    }
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "app.gateway", cwd=REPO, env=env, stdout=out, stderr=out
        )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=5) as client:
            deadline = time.monotonic() + 15
            while True:
                assert process.returncode is None, log.read_text()
                try:
                    response = await client.get("/healthz")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, log.read_text()
                    await asyncio.sleep(0.05)  # a poll interval, not a wait for something to happen
            assert response.json() == {"status": "ok"}
            assert (await client.get("/v1/admin/users", headers=bearer())).status_code == 404
    finally:
        if process.returncode is None:
            os.kill(process.pid, signal.SIGTERM)
        await asyncio.wait_for(process.wait(), timeout=10)
