"""The project's own PostgreSQL (dev/postgres.py): fast when warm, local only, an unprivileged role."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from dev import postgres

pytestmark = pytest.mark.postgresql


def test_start_is_idempotent_and_fast_when_the_server_is_up() -> None:
    started = time.monotonic()
    shown = postgres.start()
    assert time.monotonic() - started < 5
    assert "***" in shown  # the password is never printed
    assert postgres.url_file().read_text().strip() == postgres.url()
    assert postgres.url_file().stat().st_mode & 0o077 == 0


async def test_the_server_listens_on_loopback_and_the_role_is_not_a_superuser() -> None:
    engine = create_async_engine(postgres.url())
    try:
        async with engine.connect() as connection:
            listen = (await connection.execute(text("SHOW listen_addresses"))).scalar_one()
            role = (
                await connection.execute(
                    text("SELECT rolsuper, rolcreatedb FROM pg_roles WHERE rolname = current_user")
                )
            ).one()
    finally:
        await engine.dispose()
    assert listen == "127.0.0.1"
    assert tuple(role) == (False, True)
