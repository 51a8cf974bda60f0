"""Personal access tokens through the real authenticator (database lookups, no test-only principals), on
SQLite and PostgreSQL: the first admin, scopes, expiry and revocation, each failure a clear 401 or 403 and an
audit record, never a 500."""

from __future__ import annotations

from datetime import timedelta

import pytest

from broker.db.repositories.identity import IdentityRepository
from broker.db.types import utc_now
from broker.identity.service import AlreadyInitialized, IdentityService
from broker.identity.tokens import mint
from tests.api.conftest import Api, Broker, job_body
from tests.api.test_jobs import problem_of


async def new_token(broker: Broker, *scopes: str, days: int = 30) -> tuple[str, str]:
    async with broker.client(broker.admin_token) as admin:
        response = await admin.post("/v1/tokens", json={"name": "t", "scopes": list(scopes), "days": days})
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    return body["token"], body["id"]


async def test_the_first_admin_comes_from_the_server_command_and_only_once(broker: Broker) -> None:
    with pytest.raises(AlreadyInitialized):
        await IdentityService(broker.db).create_first_admin("second")
    async with broker.client(broker.admin_token) as admin:
        me = (await admin.get("/v1/me")).json()
    assert me["admin"] is True
    assert me["name"] == "ops"
    assert sorted(me["scopes"]) == ["admin", "read", "submit"]


async def test_a_token_is_shown_once_and_stored_only_as_a_digest(broker: Broker) -> None:
    text, token_id = await new_token(broker, "read", "submit")
    assert text.startswith("cvy_")
    assert len(text) >= 4 + 10 + 1 + 43  # 256 random bits in the secret
    async with broker.client(broker.admin_token) as admin:
        listed = (await admin.get("/v1/tokens")).json()
    mine = next(token for token in listed if token["id"] == token_id)
    assert "token" not in mine
    assert text.split("_")[1] == mine["prefix"]
    stored = await IdentityRepository(broker.db).tokens_of(str((await whoami(broker, text))["id"]))
    assert stored
    for token in stored:
        assert text not in (token.digest, token.prefix)
        assert len(token.digest) == 64  # a SHA-256, hex


async def whoami(broker: Broker, token: str) -> dict[str, object]:
    async with broker.client(token) as client:
        response = await client.get("/v1/me")
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, None),  # no credential: a bare challenge, no error member (RFC 6750)
        ("Bearer cvy_notatoken", "malformed"),
        ("Bearer cvy_aaaaaaaaaa_" + "A" * 43, "unknown"),
        ("Basic dXNlcjpwYXNz", None),  # not a bearer credential at all
    ],
)
async def test_missing_malformed_and_unknown_tokens_are_401(
    broker: Broker, header: str | None, reason: str | None
) -> None:
    async with broker.client(None) as client:
        response = await client.get("/v1/jobs", headers={"Authorization": header} if header else {})
    problem = problem_of(response, 401, f"unauthorized.{reason}" if reason else "unauthorized")
    assert response.headers["www-authenticate"].startswith('Bearer realm="conveyor"')
    assert problem.detail


async def test_a_forged_secret_with_a_real_prefix_is_401_unknown(broker: Broker) -> None:
    text, _ = await new_token(broker, "read")
    forged = text[:-4] + ("AAAA" if not text.endswith("AAAA") else "BBBB")
    async with broker.client(forged) as client:
        problem_of(await client.get("/v1/jobs"), 401, "unauthorized.unknown")


async def test_an_expired_token_is_401_expired(broker: Broker) -> None:
    user = (await whoami(broker, broker.admin_token))["id"]
    minted = mint()
    await IdentityRepository(broker.db).add_token(
        str(user), name="old", prefix=minted.prefix, digest=minted.digest, scopes=["read"],
        expires_at=utc_now() - timedelta(seconds=1),
    )  # fmt: skip
    async with broker.client(minted.text) as client:
        problem_of(await client.get("/v1/jobs"), 401, "unauthorized.expired")


async def test_a_revoked_token_is_401_revoked_at_once(broker: Broker) -> None:
    text, token_id = await new_token(broker, "read")
    async with broker.client(text) as client:
        assert (await client.get("/v1/jobs")).status_code == 200
        revoked = await client.delete(f"/v1/tokens/{token_id}")  # revoking itself is allowed with read only
        assert revoked.status_code == 200
        assert revoked.json()["revoked_at"] is not None
        problem_of(await client.get("/v1/jobs"), 401, "unauthorized.revoked")


async def test_a_token_whose_scope_is_too_small_is_403(broker: Broker) -> None:
    reader, _ = await new_token(broker, "read")
    async with broker.client(reader) as client:
        assert (await client.get("/v1/jobs")).status_code == 200
        problem_of(await client.post("/v1/jobs", json=job_body()), 403, "forbidden")
        problem_of(await client.post("/v1/admin/factories/alpha/drain", json={"reason": "x"}), 403, "forbidden")
        # A token can never grant more than its own credential carries.
        problem_of(await client.post("/v1/tokens", json={"name": "up", "scopes": ["submit"]}), 403, "forbidden")
    submitter, _ = await new_token(broker, "read", "submit")
    await broker.join_project(broker.admin_token, str((await whoami(broker, submitter))["id"]), "pi")
    async with broker.client(submitter) as client:
        assert (await client.post("/v1/jobs", json=job_body())).status_code == 201


async def test_the_admin_scope_on_a_non_admin_user_grants_nothing(broker: Broker) -> None:
    user = await IdentityRepository(broker.db).create_user("researcher")
    minted = mint()
    await IdentityRepository(broker.db).add_token(
        user.id, name="odd", prefix=minted.prefix, digest=minted.digest, scopes=["read", "submit", "admin"],
        expires_at=utc_now() + timedelta(days=1),
    )  # fmt: skip
    async with broker.client(minted.text) as client:
        problem = problem_of(
            await client.post("/v1/admin/factories/alpha/drain", json={"reason": "x"}), 403, "forbidden"
        )
    assert "admin" in (problem.detail or "")


async def test_tokens_of_others_cannot_be_revoked_and_answer_404(broker: Broker) -> None:
    _, admins_token_id = await new_token(broker, "read")
    user = await IdentityRepository(broker.db).create_user("someone")
    minted = mint()
    await IdentityRepository(broker.db).add_token(
        user.id, name="x", prefix=minted.prefix, digest=minted.digest, scopes=["read"],
        expires_at=utc_now() + timedelta(days=1),
    )  # fmt: skip
    async with broker.client(minted.text) as client:
        problem_of(await client.delete(f"/v1/tokens/{admins_token_id}"), 404, "not_found")
        assert [t["id"] for t in (await client.get("/v1/tokens")).json()] != [admins_token_id]


async def test_failures_and_token_changes_are_audited_with_where_from(broker: Broker) -> None:
    text, token_id = await new_token(broker, "read")
    async with broker.client("cvy_aaaaaaaaaa_" + "B" * 43) as client:
        await client.get("/v1/jobs")
    async with broker.client(text) as client:
        await client.delete(f"/v1/tokens/{token_id}")
    log = await IdentityRepository(broker.db).audit_log(limit=10)
    actions = [(event.action, event.outcome) for event in log]
    assert ("auth.failed", "denied") in actions
    assert ("token.created", "ok") in actions
    assert ("token.revoked", "ok") in actions
    failed = next(event for event in log if event.action == "auth.failed")
    assert failed.detail == {"reason": "unknown", "method": "token", "prefix": "aaaaaaaaaa"}
    assert failed.source  # the client's address


async def test_the_dev_token_is_no_user_and_cannot_mint_personal_tokens(api: Api) -> None:
    response = await api.client.post("/v1/tokens", json={"name": "x", "scopes": ["read"]})
    problem = problem_of(response, 403, "forbidden")
    assert "create-admin" in (problem.detail or "")


async def test_too_many_failed_authentications_from_one_address_are_429_with_retry_after(broker: Broker) -> None:
    limit = 30  # the default CONVEYOR_AUTH_FAILURES_PER_MINUTE
    async with broker.client("cvy_aaaaaaaaaa_" + "C" * 43) as guesser:
        answers = [(await guesser.get("/v1/jobs")).status_code for _ in range(limit + 1)]
    assert answers == [401] * limit + [429]
    async with broker.client(broker.admin_token) as admin:  # the same address: held back, even with a good token
        response = await admin.get("/v1/jobs")
    problem_of(response, 429, "rate_limited")
    assert 1 <= int(response.headers["retry-after"]) <= 60
