"""Remembered tokens: what a replica may answer from memory, and what it must still check on every request."""

from __future__ import annotations

from datetime import datetime

import pytest

from broker.db.engine import Database
from broker.db.repositories.identity import IdentityRepository
from broker.identity.service import AuthenticationFailed, IdentityService
from broker.identity.tokens import mint
from broker.ttl_cache import TtlCache
from tests.db.helpers import at

TTL_S = 5.0


class Clocks:
    """The wall clock (token expiry) and the monotonic one (the memory's own), moved together by hand."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wall(self) -> datetime:
        return at(self.seconds)

    def monotonic(self) -> float:
        return self.seconds


async def _token(db: Database, *, lives_s: float = 3600) -> tuple[str, str]:
    """A new user's token: (text, token id)."""
    repo = IdentityRepository(db)
    user = await repo.create_user("alice")
    minted = mint()
    token = await repo.add_token(
        user.id, name="t", prefix=minted.prefix, digest=minted.digest, scopes=["read"],
        expires_at=at(lives_s),
    )  # fmt: skip
    return minted.text, token.id


def _service(db: Database, clocks: Clocks, ttl_s: float = TTL_S) -> IdentityService:
    return IdentityService(db, clocks.wall, credentials=TtlCache(ttl_s, clock=clocks.monotonic))


async def _reason(service: IdentityService, text: str) -> str:
    with pytest.raises(AuthenticationFailed) as refused:
        await service.authenticate(text)
    return refused.value.reason


async def test_a_revocation_on_another_replica_applies_here_within_the_ttl(db: Database) -> None:
    clocks = Clocks()
    text, token_id = await _token(db)
    here, elsewhere = _service(db, clocks), _service(db, clocks)
    principal = await here.authenticate(text)
    await elsewhere.revoke(principal, token_id)

    clocks.seconds = TTL_S - 0.1
    assert (await here.authenticate(text)).id == principal.id  # remembered: no read, so not yet seen
    assert await _reason(elsewhere, text) == "revoked"  # the replica that revoked it forgot it at once

    clocks.seconds = TTL_S + 0.1
    assert await _reason(here, text) == "revoked"


async def test_a_revocation_on_this_replica_applies_at_once(db: Database) -> None:
    clocks = Clocks()
    text, token_id = await _token(db)
    service = _service(db, clocks)
    principal = await service.authenticate(text)
    await service.revoke(principal, token_id)
    assert await _reason(service, text) == "revoked"


async def test_a_forged_secret_with_a_remembered_prefix_is_refused_and_audited(db: Database) -> None:
    clocks = Clocks()
    text, _ = await _token(db)
    service = _service(db, clocks)
    await service.authenticate(text)
    forged = text[:-4] + ("AAAA" if not text.endswith("AAAA") else "BBBB")
    assert await _reason(service, forged) == "unknown"
    assert (await service.authenticate(text)).name == "alice"
    failures = [event for event in await IdentityRepository(db).audit_log() if event.action == "auth.failed"]
    assert len(failures) == 1


async def test_a_remembered_token_still_expires_on_time(db: Database) -> None:
    clocks = Clocks()
    text, _ = await _token(db, lives_s=2)
    service = _service(db, clocks)
    await service.authenticate(text)
    clocks.seconds = 2.0  # the memory would hold it 3 s more; the token's own expiry wins
    assert await _reason(service, text) == "expired"


async def test_with_no_ttl_every_request_reads_the_database(db: Database) -> None:
    clocks = Clocks()
    text, token_id = await _token(db)
    here, elsewhere = _service(db, clocks, ttl_s=0), _service(db, clocks)
    principal = await here.authenticate(text)
    await elsewhere.revoke(principal, token_id)
    assert await _reason(here, text) == "revoked"
