"""The engine's transactions: SQLite's pragmas and BEGIN IMMEDIATE, rollback, and durable commits."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from sqlalchemy import text

from broker.db.engine import Database, create_database, sqlite_path
from broker.db.repositories import JobRepository
from tests.db.helpers import new_job, only_sqlite, wait_until


def _sqlite_file(db: Database) -> str:
    path = sqlite_path(db.engine.url)
    assert path is not None
    return str(path)


def _try_to_take_the_write_lock(path: str) -> bool:
    """Whether another process could start writing now (no waiting: timeout 0)."""
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc):
            return False
        raise
    else:
        other.execute("ROLLBACK")
        return True
    finally:
        other.close()


@only_sqlite
async def test_sqlite_connections_are_durable_wal_with_foreign_keys(db: Database) -> None:
    async with db.read() as session:
        pragmas = {
            name: (await session.execute(text(f"PRAGMA {name}"))).scalar_one()
            for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
        }
    assert pragmas == {"journal_mode": "wal", "synchronous": 2, "foreign_keys": 1, "busy_timeout": 5000}


@only_sqlite
async def test_sqlite_write_transactions_take_the_write_lock_at_begin_and_reads_do_not(db: Database) -> None:
    path = _sqlite_file(db)
    async with db.write():
        # Nothing written yet, but BEGIN IMMEDIATE already holds the lock: no late SQLITE_BUSY on upgrade.
        assert not _try_to_take_the_write_lock(path)
    assert _try_to_take_the_write_lock(path)
    async with db.read() as session:
        await session.execute(text("SELECT count(*) FROM jobs"))
        assert _try_to_take_the_write_lock(path)  # WAL: a reader never blocks a writer


@only_sqlite
async def test_sqlite_has_one_writer_at_a_time_in_fifo_order(db: Database) -> None:
    order: list[int] = []
    release = asyncio.Event()

    async def writer(n: int) -> None:
        async with db.write():
            order.append(n)
            if n == 0:
                await release.wait()

    first = asyncio.create_task(writer(0))
    await wait_until(lambda: order == [0])
    others = [asyncio.create_task(writer(n)) for n in (1, 2, 3)]
    await wait_until(lambda: db.writers_waiting == 3)
    assert order == [0]
    release.set()
    await asyncio.gather(first, *others)
    assert order == [0, 1, 2, 3]
    assert db.writers_waiting == 0


class Boom(Exception):
    pass


async def _fail_midway(db: Database, statement: str) -> None:
    async with db.write() as session:
        await session.execute(text(statement))
        raise Boom


async def test_a_failed_write_leaves_nothing_behind(db: Database, jobs: JobRepository) -> None:
    job = await jobs.insert_job_with_event(new_job(), actor="test")
    with pytest.raises(Boom):
        await _fail_midway(db, "UPDATE jobs SET name = 'changed'")
    stored = await jobs.get(job.id)
    assert stored is not None
    assert stored.name == "train"


async def test_a_returned_write_is_visible_to_another_engine_at_once(database_url: str, jobs: JobRepository) -> None:
    job = await jobs.insert_job_with_event(new_job(), actor="test")
    replica = create_database(database_url)  # as another broker process would see it
    try:
        assert await JobRepository(replica).get(job.id) is not None
    finally:
        await replica.dispose()


def test_an_in_memory_sqlite_database_is_refused() -> None:
    with pytest.raises(ValueError, match="plain file"):
        create_database("sqlite+aiosqlite:///:memory:")
