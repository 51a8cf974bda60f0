"""The async engine and its transactions, for SQLite (embedded) and PostgreSQL (production).

Every repository writes through :meth:`Database.write` and reads through :meth:`Database.read`, so the
database-specific rules live here only:

SQLite: WAL (readers never block the writer), ``synchronous=FULL`` (a commit, and so a 201, survives power
loss), ``busy_timeout``, foreign keys on. pysqlite's own transaction handling is switched off
(``isolation_level = None``) and SQLAlchemy's ``begin`` event emits ``BEGIN IMMEDIATE`` for write
transactions (the connection carries the ``conveyor_write`` execution option) and a plain deferred
``BEGIN`` for reads: a writer takes the database's write lock at its first statement, waiting up to
busy_timeout for another process, instead of failing with SQLITE_BUSY when a read lock cannot be upgraded
mid-transaction. In-process, an ``asyncio.Lock`` makes the writer single, so our own transactions queue in
FIFO order instead of spinning on busy_timeout.

PostgreSQL: asyncpg, READ COMMITTED; concurrency comes from compare-and-set updates and row locks
(``FOR UPDATE SKIP LOCKED`` for claims), not from a broker-side lock, so several replicas may run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from broker.settings import Settings

WRITE_OPTION = "conveyor_write"
DEFAULT_BUSY_TIMEOUT_MS = 5_000


def _sqlite_on_connect(busy_timeout_ms: int, foreign_keys: bool) -> Callable[[Any, ConnectionPoolEntry], None]:
    def on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # The documented recipe: pysqlite must not emit BEGIN itself; the "begin" hook below does.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=FULL",
            f"PRAGMA busy_timeout={int(busy_timeout_ms)}",
            f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}",
        ):
            cursor.execute(pragma)
        cursor.close()

    return on_connect


def _sqlite_on_begin(conn: Connection) -> None:
    mode = "BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE_OPTION) else "BEGIN"
    conn.exec_driver_sql(mode)


@dataclass
class Database:
    """One engine and its two kinds of transaction. Create with :func:`create_database`."""

    engine: AsyncEngine
    _write_engine: AsyncEngine
    _read_sessions: async_sessionmaker[AsyncSession] = field(init=False)
    _write_sessions: async_sessionmaker[AsyncSession] = field(init=False)
    _write_lock: asyncio.Lock | None = field(init=False)
    _writers_waiting: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        # expire_on_commit=False: rows returned from a finished transaction stay readable as plain data.
        self._read_sessions = async_sessionmaker(self.engine, expire_on_commit=False, autoflush=False)
        self._write_sessions = async_sessionmaker(self._write_engine, expire_on_commit=False, autoflush=False)
        self._write_lock = asyncio.Lock() if self.is_sqlite else None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @property
    def write_engine(self) -> AsyncEngine:
        """The same engine and pool, with write transactions (BEGIN IMMEDIATE on SQLite); for migrations."""
        return self._write_engine

    @property
    def writers_waiting(self) -> int:
        """Write transactions queued behind SQLite's single writer (always 0 on PostgreSQL)."""
        return self._writers_waiting

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A write transaction: committed when the block ends normally, rolled back on any exception.

        The commit has returned (and on SQLite reached the disk) before the caller continues, which is what
        lets the API answer 201 only for a durable job.
        """
        async with self._single_writer(), self._write_sessions() as session, session.begin():
            await session.connection()  # BEGIN (IMMEDIATE) now, so the write lock is held from the start
            yield session

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A read-only transaction: one consistent snapshot on SQLite, statement snapshots on PostgreSQL."""
        async with self._read_sessions() as session, session.begin():
            yield session

    @contextlib.asynccontextmanager
    async def _single_writer(self) -> AsyncIterator[None]:
        if self._write_lock is None:
            yield
            return
        self._writers_waiting += 1
        try:
            await self._write_lock.acquire()
        finally:
            self._writers_waiting -= 1
        try:
            yield
        finally:
            self._write_lock.release()

    async def dispose(self) -> None:
        await self.engine.dispose()


def sqlite_path(url: URL) -> Path | None:
    """The file of a SQLite URL; None for another database."""
    if url.get_backend_name() != "sqlite":
        return None
    if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
        raise ValueError("the embedded database must be a plain file path (sqlite+aiosqlite:////ABS/PATH)")
    return Path(url.database)


def create_database(
    url: str | URL,
    *,
    busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
    echo: bool = False,
    sqlite_foreign_keys: bool = True,
) -> Database:
    """The engine for ``url`` with the per-database settings described in this module's docstring.

    ``sqlite_foreign_keys=False`` is for migrations only: SQLite rebuilds a table to alter it, which foreign
    keys would forbid; the migration checks them all before it commits instead.
    """
    parsed = make_url(url)
    path = sqlite_path(parsed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Reads run concurrently in WAL; writes are one at a time anyway. No pre-ping: a file does not drop.
        engine = create_async_engine(parsed, echo=echo, pool_size=5, max_overflow=5)
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect(busy_timeout_ms, sqlite_foreign_keys))
        event.listen(engine.sync_engine, "begin", _sqlite_on_begin)
    elif parsed.get_backend_name() == "postgresql":
        engine = create_async_engine(
            parsed,
            echo=echo,
            pool_size=10,
            max_overflow=20,
            pool_pre_ping=True,
            connect_args={"server_settings": {"application_name": "conveyor-broker"}},
        )
    else:
        raise ValueError(f"unsupported database {parsed.get_backend_name()!r}: use SQLite or PostgreSQL")
    # Shares the pool and the event hooks; only marks its connections as writers.
    write_engine = engine.execution_options(**{WRITE_OPTION: True})
    return Database(engine=engine, _write_engine=write_engine)


def database_from_settings(settings: Settings) -> Database:
    return create_database(settings.database_url, busy_timeout_ms=settings.sqlite_busy_timeout_ms)
