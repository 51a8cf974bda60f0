"""Small builders and waits shared by the database tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from broker.db.engine import Database
from broker.db.repositories import NewJob

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    """A fixed instant ``seconds`` after T0, so tests never depend on the wall clock."""
    return T0 + timedelta(seconds=seconds)


def new_job(
    *, owner: str = "user:alice", project: str = "EHPC-AIF-2026PG01-1147", name: str = "train", **labels: str
) -> NewJob:
    spec = {"name": name, "project": project, "command": ["python", "train.py"], "labels": labels}
    return NewJob(owner=owner, project=project, name=name, spec=spec, labels=labels)


async def wait_until(condition: Callable[[], bool | Awaitable[bool]], timeout_s: float = 10.0) -> None:
    """Poll a condition (plain or async) until it holds; fail after ``timeout_s``, a deadline, not a wait."""
    deadline = time.monotonic() + timeout_s
    while not await _value(condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.005)


async def _value(result: bool | Awaitable[bool]) -> bool:
    return result if isinstance(result, bool) else await result


async def someone_waits_for_a_lock(db: Database) -> bool:
    """Whether another transaction is queued behind a held lock: a row lock on PostgreSQL (seen in
    pg_stat_activity), the single-writer lock on SQLite."""
    if db.is_sqlite:
        return db.writers_waiting > 0
    async with db.read() as session:
        waiting = await session.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
        )
    return bool(waiting)


only_sqlite = pytest.mark.parametrize("database_url", [pytest.param("sqlite", id="sqlite")], indirect=True)
only_postgresql = pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgresql)], indirect=True
)
