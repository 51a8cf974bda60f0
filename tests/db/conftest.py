"""Every database test runs twice: on a fresh SQLite file and on the project's PostgreSQL (dev/postgres.py).

The schema always comes from ``alembic upgrade head``, never from ``create_all``. PostgreSQL gets one fresh
database per test session (so parallel runs do not meet), emptied before each test; SQLite gets a copy of a
migrated template file per test. A missing PostgreSQL fails the run: it is never skipped silently. Deselect it
explicitly with ``-m "not postgresql"`` when you mean to.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from broker.db.engine import Database, create_database
from broker.db.migrate import upgrade
from broker.db.models import Base
from broker.db.repositories import FactoryStateRepository, JobRepository

POSTGRES_URL_FILE = Path(os.environ.get("CONVEYOR_LAB_DIR", "/var/lib/conveyor-lab")) / "postgres" / "url"
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgresql),
]


def postgres_server_url() -> str:
    """The URL of our PostgreSQL: ``CONVEYOR_TEST_POSTGRES_URL``, else the file dev/postgres.py writes."""
    url = os.environ.get("CONVEYOR_TEST_POSTGRES_URL")
    if url:
        return url
    if not POSTGRES_URL_FILE.exists():
        pytest.fail(
            f"PostgreSQL for the tests is not set up ({POSTGRES_URL_FILE} is missing): run dev/install.sh or "
            "`python3 -m dev.postgres start` as root, or deselect with -m 'not postgresql'",
            pytrace=False,
        )
    return POSTGRES_URL_FILE.read_text().strip()


async def _admin(server_url: str, statement: str) -> None:
    engine = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    except OSError as exc:
        pytest.fail(f"PostgreSQL at {make_url(server_url).render_as_string()} does not answer: {exc}", pytrace=False)
    finally:
        await engine.dispose()


class PostgresDatabases:
    """Creates throw-away databases on our server and drops them at the end of the session."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.created: list[str] = []

    def create(self) -> str:
        name = f"conveyor_test_{os.getpid()}_{secrets.token_hex(4)}"
        asyncio.run(_admin(self.server_url, f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        return make_url(self.server_url).set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        for name in self.created:
            asyncio.run(_admin(self.server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    databases = PostgresDatabases(postgres_server_url())
    yield databases
    databases.drop_all()


@pytest.fixture(scope="session")
def migrated_postgres_url(postgres_databases: PostgresDatabases) -> str:
    url = postgres_databases.create()
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def migrated_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "conveyor.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database of each kind."""
    if request.param == "sqlite":
        path = tmp_path / "conveyor.db"
        shutil.copyfile(request.getfixturevalue("migrated_sqlite_template"), path)
        return f"sqlite+aiosqlite:///{path}"
    url: str = request.getfixturevalue("migrated_postgres_url")
    return url


@pytest.fixture(params=BACKENDS)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database of each kind with no tables at all (for migration tests)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
    return databases.create()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = create_database(database_url)
    if not database.is_sqlite:
        tables = ", ".join(table.name for table in Base.metadata.sorted_tables)
        async with database.write() as session:
            await session.execute(text(f"TRUNCATE {tables} RESTART IDENTITY"))
    yield database
    await database.dispose()


@pytest.fixture
def jobs(db: Database) -> JobRepository:
    return JobRepository(db)


@pytest.fixture
def factory_states(db: Database) -> FactoryStateRepository:
    return FactoryStateRepository(db)
