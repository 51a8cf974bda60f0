"""Fixtures of the fault tests: the lab's expendable cluster, a workspace on it, a broker process per test.

The broker only ever sees the expendable cluster ``echo`` (a Factory file of its own): its slurmctld is the one
tests may SIGKILL, and every job these tests submit goes there. Databases are fresh per test: a copy of a
migrated SQLite file, or a new database on the project's PostgreSQL (tests/db's fixtures).
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from dev.lab.view import lab_json_path
from tests.db import conftest as database_fixtures
from tests.faults.harness import BrokerProcess, Workspace, factories_file_with
from tests.lab import Cluster, clusters

postgres_databases = database_fixtures.postgres_databases
migrated_sqlite_template = database_fixtures.migrated_sqlite_template

EXPENDABLE = "echo"


@pytest.fixture(scope="session")
def echo() -> Cluster:
    """The expendable lab cluster (fails loudly without a lab, or if it is not marked expendable)."""
    found = [cluster for cluster in clusters() if cluster.name == EXPENDABLE]
    assert found, f"the lab has no cluster {EXPENDABLE!r}"
    assert found[0].raw["expendable"], f"{EXPENDABLE} is not expendable: fault tests must not kill its slurmctld"
    return found[0]


@pytest.fixture
def run_id() -> str:
    return secrets.token_hex(4)


CALL_PASSED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[CALL_PASSED] = report.passed
    return report


@pytest.fixture
def workspace(request: pytest.FixtureRequest, echo: Cluster, run_id: str) -> Iterator[Workspace]:
    """The test's directory on echo: removed after a pass, kept after a failure (the ledger is evidence)."""
    made = Workspace.create(echo, run_id)
    yield made
    if request.node.stash.get(CALL_PASSED, False):
        shutil.rmtree(echo.host_path(made.inside), ignore_errors=True)


@pytest.fixture
def echo_factories(tmp_path: Path, echo: Cluster) -> Path:
    return factories_file_with(lab_json_path().with_name("factories.yaml"), [echo.name], tmp_path)


@pytest.fixture
def sqlite_url(tmp_path: Path, migrated_sqlite_template: Path) -> str:
    path = tmp_path / "conveyor.db"
    shutil.copyfile(migrated_sqlite_template, path)
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture
def postgres_url(postgres_databases: database_fixtures.PostgresDatabases) -> str:
    from broker.db.migrate import upgrade

    url = postgres_databases.create()
    upgrade(url)
    return url


def _broker(tmp_path: Path, url: str, factories: Path) -> Iterator[BrokerProcess]:
    broker = BrokerProcess(workdir=tmp_path, database_url=url, factories_file=factories)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def broker(tmp_path: Path, sqlite_url: str, echo_factories: Path) -> Iterator[BrokerProcess]:
    """A broker (not started) on a fresh SQLite database, serving echo only; stopped by PID at the end."""
    yield from _broker(tmp_path, sqlite_url, echo_factories)


@pytest.fixture
def postgres_broker(tmp_path: Path, postgres_url: str, echo_factories: Path) -> Iterator[BrokerProcess]:
    """A broker (not started) on a fresh PostgreSQL database, serving echo only; stopped by PID at the end."""
    yield from _broker(tmp_path, postgres_url, echo_factories)
