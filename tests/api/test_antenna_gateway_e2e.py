"""An Antenna end to end: the gateway and the broker as two uvicorn processes on 127.0.0.1, the job on the
Antenna's linked lab Factory as the mapped site user (read from Slurm itself); and a captured assertion
refused by a second broker process sharing the first one's PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from broker.antennas.assertion import SCHEME, BoundRequest, public_jwks, sign
from broker.db.engine import Database
from broker.db.migrate import upgrade
from broker.identity.service import IdentityService
from tests.api.conftest import PROJECT, job_body
from tests.api.server import REPO, Server, free_port, lab_factories, start_server
from tests.db.conftest import PostgresDatabases
from tests.lab import clusters

NATIONAL_TOKEN = "gateway-token-of-ada-0123456789abcdef"
OUTSIDER_TOKEN = "gateway-token-of-bob-0123456789abcdef"
ADA, BOB = "ada@ugent.be", "bob@kuleuven.be"
ADMIN_LOOKALIKE = "cvy_abcdefgh_" + "x" * 43  # a broker token's shape: the gateway knows no such tokens
TERMINAL = {"completed", "failed", "cancelled", "timeout", "rejected", "lost"}


@dataclass
class AntennaKeys:
    private: dict[str, Any]
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def new(cls) -> AntennaKeys:
        key = ec.generate_private_key(ec.SECP256R1())
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key))
        return cls({"keys": [{**jwk, "kid": "be-1", "alg": "ES256"}]}, key)


def admin_client(server: Server, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def ok(response: httpx.Response, *statuses: int) -> dict[str, Any]:
    assert response.status_code in (statuses or (200,)), response.text
    return response.json() if response.content else {}


def register_antenna(server: Server, admin_token: str, keys: AntennaKeys, factory: str) -> None:
    body = {"id": "be", "country": "BE", "title": "Antenna Belgium", "factories": [factory],
            "jwks": public_jwks(keys.private)}  # fmt: skip
    with admin_client(server, admin_token) as admin:
        ok(admin.post("/v1/admin/antennas", json=body), 201)


def start_gateway(tmp_path: Path, broker_url: str, keys: AntennaKeys) -> Server:
    """``python -m app.gateway`` as an Antenna operator runs it, with a users file of two national users."""
    (tmp_path / "keys.json").write_text(json.dumps(keys.private))
    users = {"tokens": [{"sha256": hashlib.sha256(token.encode()).hexdigest(), "sub": sub}
                        for token, sub in ((NATIONAL_TOKEN, ADA), (OUTSIDER_TOKEN, BOB))]}  # fmt: skip
    (tmp_path / "users.json").write_text(json.dumps(users))
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")},
        "CONVEYOR_GATEWAY_BROKER_URL": broker_url,
        "CONVEYOR_GATEWAY_ANTENNA_ID": "be",
        "CONVEYOR_GATEWAY_SIGNING_KEYS_FILE": str(tmp_path / "keys.json"),
        "CONVEYOR_GATEWAY_USERS_FILE": str(tmp_path / "users.json"),
        "CONVEYOR_GATEWAY_PORT": str(port),
    }
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "app.gateway"], cwd=REPO, env=env, stdout=out, stderr=out)
    return Server(process, f"http://127.0.0.1:{port}", log)


@pytest.fixture
async def admin_token(db: Database) -> str:
    """The broker's first admin, made as on a server (no static token exists in these brokers)."""
    _, issued = await IdentityService(db).create_first_admin("ops")
    return issued.text


@pytest.fixture
def broker_and_gateway(
    tmp_path: Path, sqlite_copy: Path, database_url: str, admin_token: str
) -> Iterator[tuple[Server, Server]]:
    keys = AntennaKeys.new()
    broker = start_server(tmp_path, sqlite_copy, lab_factories(tmp_path, only=["bravo"]), run_loops=True,
                          env={"CONVEYOR_DATABASE_URL": database_url}, dev=False)  # fmt: skip
    gateway: Server | None = None
    try:
        broker.wait_ready(timeout_s=60)
        register_antenna(broker, admin_token, keys, "bravo")
        gateway = start_gateway(tmp_path, broker.base_url, keys)
        gateway.wait_ready(timeout_s=30, path="/healthz")
        yield broker, gateway
    finally:
        if gateway is not None:
            gateway.stop()
        broker.stop()


def test_a_national_user_submits_through_the_gateway_and_runs_as_the_mapped_site_user(
    broker_and_gateway: tuple[Server, Server], admin_token: str
) -> None:
    broker, gateway = broker_and_gateway
    with admin_client(broker, admin_token) as admin:
        ok(admin.post("/v1/admin/projects", json={"id": PROJECT, "title": "Antenna users' project"}), 201)
        ok(admin.post("/v1/admin/allocations", json={
            "project": PROJECT, "factory": "bravo", "unit": "node_hours", "hours": 100,
            "starts_at": "2026-01-01T00:00:00Z", "ends_at": "2030-01-01T00:00:00Z"}), 201)  # fmt: skip
        ada = ok(admin.put(f"/v1/antennas/be/users/{ADA}"))["id"]
        ok(admin.put(f"/v1/projects/{PROJECT}/members/{ada}", json={"role": "researcher"}), 204)
        ok(admin.put(f"/v1/factories/bravo/accounts/user/{ada}", json={"slurm_user": "bob"}))

    with httpx.Client(base_url=gateway.base_url, headers={"Authorization": f"Bearer {NATIONAL_TOKEN}"},
                      timeout=15) as national:  # fmt: skip
        me = ok(national.get("/v1/me"))
        assert (me["id"], me["antenna"], me["subject"], me["factories"]) == (ada, "be", ADA, ["bravo"])
        created = national.post("/v1/jobs", json=job_body(command=["true"], resources={"time_limit_min": 5}),
                                headers={"Idempotency-Key": "first-job"})  # fmt: skip
        job = ok(created, 201)
        read = ok(national.get(created.headers["location"]))  # the Location works at the gateway
        assert read["id"] == job["id"]
        deadline = time.monotonic() + 90
        while read["state"] not in TERMINAL:
            assert time.monotonic() < deadline, read
            time.sleep(0.2)  # a poll interval
            read = ok(national.get(f"/v1/jobs/{job['id']}"))
        assert (read["state"], read["factory"]) == ("completed", "bravo"), read
        events = ok(national.get(f"/v1/jobs/{job['id']}/events"))
        assert (events["items"][0]["kind"], events["items"][0]["actor"]) == ("created", ada)
        assert events["items"][-1]["to_state"] == "completed"
        # Slurm's own record: the job ran on bravo as bob.
        bravo = next(cluster for cluster in clusters() if cluster.name == "bravo")
        assert bravo.show_job(int(read["slurm_job_id"]))["UserId"].startswith("bob("), read
        # The gateway forwards user routes only; the broker refuses the rest for a national user.
        assert national.get("/v1/admin/antennas").status_code == 404
        assert national.post("/v1/tokens", json={"name": "t", "scopes": ["read"]}).status_code == 404
    with httpx.Client(base_url=gateway.base_url, timeout=15) as anonymous:
        assert anonymous.get("/v1/me").status_code == 401
        wrong = anonymous.get("/v1/me", headers={"Authorization": f"Bearer {ADMIN_LOOKALIKE}"})
        assert wrong.status_code == 401
    with httpx.Client(base_url=gateway.base_url, headers={"Authorization": f"Bearer {OUTSIDER_TOKEN}"},
                      timeout=15) as outsider:  # fmt: skip
        refused = outsider.post("/v1/jobs", json=job_body())
        assert refused.status_code == 403, refused.text
        assert refused.json()["code"] == "forbidden"
        assert outsider.get(f"/v1/jobs/{job['id']}").status_code == 404


def test_a_captured_assertion_is_refused_by_another_broker_sharing_the_database(
    tmp_path: Path, postgres_databases: PostgresDatabases
) -> None:
    url = postgres_databases.create()
    upgrade(url)
    token = subprocess.run(
        [sys.executable, "-m", "broker", "create-admin", "ops"], cwd=REPO, check=True, capture_output=True,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}, "CONVEYOR_DATABASE_URL": url},
    ).stdout.decode().strip()  # fmt: skip
    keys = AntennaKeys.new()
    factories = lab_factories(tmp_path, only=["bravo"])
    env = {"CONVEYOR_DATABASE_URL": url}
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    first = start_server(tmp_path / "one", tmp_path / "unused.db", factories, run_loops=False, env=env, dev=False)
    second = start_server(tmp_path / "two", tmp_path / "unused.db", factories, run_loops=False, env=env, dev=False)
    try:
        for server in (first, second):
            server.wait_ready(timeout_s=60)
        register_antenna(first, token, keys, "bravo")

        def assertion() -> dict[str, str]:
            signed = sign(keys.key, kid="be-1", alg="ES256", antenna="be", subject=ADA, audience="conveyor",
                          request=BoundRequest("GET", "/v1/me"))  # fmt: skip
            return {"Authorization": f"{SCHEME} {signed}"}

        for used_on, replayed_on in ((first, second), (second, first)):
            captured = assertion()
            assert httpx.get(f"{used_on.base_url}/v1/me", headers=captured).status_code == 200
            replayed = httpx.get(f"{replayed_on.base_url}/v1/me", headers=captured)
            assert replayed.status_code == 401, replayed.text
            assert replayed.json()["code"] == "unauthorized.replayed"
    finally:
        first.stop()
        second.stop()
