"""OIDC through the whole broker: the app verifies bearer JWTs against a JWKS served over HTTPS on 127.0.0.1,
on SQLite and PostgreSQL. A caller is (issuer, subject); every refused token is a 401 with its reason and an
audit record, never a 500; an issuer whose keys cannot be had is a 503 with Retry-After."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from app.main import create_app
from broker.db.engine import Database
from broker.db.repositories.identity import IdentityRepository
from broker.factories.adapters import AdapterPool
from broker.factories.registry import FactoryRegistry
from tests.api.conftest import FakeAdapter, api_settings, client_for
from tests.api.test_jobs import problem_of
from tests.identity.test_oidc_jwks_https import (  # noqa: F401 - pki and server are module-scoped fixtures
    EC,
    RSA,
    JwksServer,
    Pki,
    Realm,
    new_realm,
    pki,
    server,
)
from tests.unit.test_oidc import claims_for, forge_hs256, unsigned_token


@pytest.fixture
def realm(server: JwksServer) -> Realm:  # noqa: F811
    chosen = new_realm(server)
    server.publish(chosen.jwks_path, [RSA.jwk(), EC.jwk()])
    return chosen


@pytest.fixture
async def app(  # noqa: PLR0917 - fixtures
    db: Database,
    database_url: str,
    tmp_path: Path,
    registry: FactoryRegistry,
    realm: Realm,
    pki: Pki,  # noqa: F811
) -> AsyncIterator[FastAPI]:
    issuers = [realm.config().model_dump(mode="json"), {**realm.config().model_dump(mode="json"),
               "issuer": realm.issuer + "-down", "jwks_uri": realm.jwks_uri + "-missing"}]  # fmt: skip
    settings = api_settings(
        tmp_path, database_url, dev_mode=False, dev_token=None, oidc_issuers=issuers, oidc_ca_file=pki.ca
    )
    pool = AdapterPool(registry, build=FakeAdapter)
    made = create_app(settings, adapters=pool)
    async with made.router.lifespan_context(made):
        yield made
    await pool.aclose()


async def get_me(app: FastAPI, token: str) -> httpx.Response:
    async with client_for(app, token) as client:
        return await client.get("/v1/me")


async def test_a_valid_token_is_the_user_of_issuer_and_subject_made_once(
    app: FastAPI, realm: Realm, db: Database
) -> None:
    first = await get_me(app, RSA.sign(claims_for(realm.issuer, sub="alice-123", preferred_username="alice")))
    assert first.status_code == 200, first.text
    again = await get_me(app, EC.sign(claims_for(realm.issuer, sub="alice-123")))
    assert again.json()["id"] == first.json()["id"]
    assert first.json()["name"] == "alice"
    assert first.json()["admin"] is False
    other = await get_me(app, RSA.sign(claims_for(realm.issuer, sub="bob-456")))
    assert other.json()["id"] != first.json()["id"]
    user = await IdentityRepository(db).user_by_identity(realm.issuer, "alice-123")
    assert user is not None
    assert user.id == first.json()["id"]


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("unknown issuer", "unknown_issuer"),
        ("wrong audience", "bad_audience"),
        ("alg none", "bad_algorithm"),
        ("HS256 signed with the issuer's public key", "bad_algorithm"),
        ("expired", "expired"),
    ],
)
async def test_refused_tokens_are_401_with_their_reason_and_audited(
    app: FastAPI,
    realm: Realm,
    db: Database,
    case: str,
    reason: str,
) -> None:
    claims = claims_for(realm.issuer)
    token = {
        "unknown issuer": lambda: RSA.sign(claims_for("https://127.0.0.1:1/realms/evil")),
        "wrong audience": lambda: RSA.sign(claims_for(realm.issuer, aud="another-service")),
        "alg none": lambda: unsigned_token(claims, kid=RSA.kid),
        "HS256 signed with the issuer's public key": lambda: forge_hs256(claims, RSA.public_pem(), RSA.kid),
        "expired": lambda: RSA.sign(claims_for(realm.issuer, iat=claims["iat"] - 900, exp=claims["iat"] - 600)),
    }[case]()
    problem_of(await get_me(app, token), 401, f"unauthorized.{reason}")
    [event] = await IdentityRepository(db).audit_log(limit=1)
    assert (event.action, event.outcome, event.detail) == (
        "auth.failed",
        "denied",
        {"reason": reason, "method": "oidc"},
    )


async def test_an_issuer_whose_keys_cannot_be_fetched_is_503_with_retry_after(app: FastAPI, realm: Realm) -> None:
    response = await get_me(app, RSA.sign(claims_for(realm.issuer + "-down")))
    problem_of(response, 503, "unavailable.identity_provider")
    assert int(response.headers["retry-after"]) >= 1
