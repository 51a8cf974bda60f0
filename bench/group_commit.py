"""What one group commit costs beside writing the same jobs one transaction each, in the same process.

For each database (a fresh SQLite file; a fresh database on the lab's PostgreSQL) and each batch size N, this
stores N accepted jobs through ``JobRepository.create_many`` twice, alternating: as one batch (the group
commit's write: N keys, one compare-and-set on the allocation, bulk inserts, one commit) and as N calls of
one job each (the accept path without group commit). Every job carries an Idempotency-Key and a
reservation on one large allocation, as a researcher's POST does. It prints the milliseconds per job of
both and their ratio: the write's share of the gain that ``bench.accept`` measures end to end.

    .venv/bin/python -m bench.group_commit                       # sqlite and postgresql, N = 1, 4, 16, 64
    .venv/bin/python -m bench.group_commit --databases sqlite --sizes 16 --repeats 50
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from broker.db.engine import Database, create_database
from broker.db.migrate import upgrade
from broker.db.models import AllocationUnit
from broker.db.repositories import NewJob
from broker.db.repositories.allocations import AllocationRepository
from broker.db.repositories.jobs import Creation, JobRepository, KeyUse
from broker.db.repositories.projects import ProjectRepository
from broker.tenancy.accounting import Reservation
from tests.db.conftest import PostgresDatabases, postgres_server_url

PROJECT = "EHPC-AIF-2026PG01-1147"
CALLER = "user:bench"
SPEC = {"name": "bench", "project": PROJECT, "command": ["python", "train.py"], "labels": {"bench": "commit"}}


@contextlib.contextmanager
def database_url(kind: str, directory: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{directory / 'conveyor.db'}"
        return
    server = PostgresDatabases(postgres_server_url())
    try:
        yield server.create()
    finally:
        server.drop_all()


class Jobs:
    """Accepted jobs as the service hands them to the repository, each with a fresh key."""

    def __init__(self, allocation_id: str) -> None:
        self._allocation_id = allocation_id
        self._serial = 0

    def take(self, count: int) -> list[Creation]:
        creations = []
        for _ in range(count):
            self._serial += 1
            new = NewJob(CALLER, PROJECT, "bench", SPEC, reservation=Reservation(self._allocation_id, 1800))
            creations.append(Creation(new, CALLER, KeyUse(CALLER, f"k{self._serial}", "h")))
        return creations


async def _prepare(db: Database) -> Jobs:
    await ProjectRepository(db).create(PROJECT, "group commit benchmark")
    now = datetime.now(UTC)
    allocation = await AllocationRepository(db).add(
        PROJECT, "alpha", AllocationUnit.GPU_HOURS, 10**15, starts_at=now - timedelta(hours=1),
        ends_at=now + timedelta(days=30),
    )  # fmt: skip
    return Jobs(allocation.id)


async def measure(url: str, sizes: list[int], repeats: int) -> list[tuple[int, float, float]]:
    """Per size: (N, ms per job in one batch, ms per job one by one), medians over ``repeats`` pairs."""
    db = create_database(url)
    try:
        jobs, repository = await _prepare(db), JobRepository(db)
        await repository.create_many(jobs.take(8))  # warm the pool and the statement caches
        rows = []
        for size in sizes:
            batched: list[float] = []
            alone: list[float] = []
            for turn in range(repeats):
                for way in ("batch", "alone") if turn % 2 == 0 else ("alone", "batch"):
                    creations = jobs.take(size)
                    started = time.perf_counter()
                    if way == "batch":
                        answers = await repository.create_many(creations)
                    else:
                        answers = [answer for c in creations for answer in await repository.create_many([c])]
                    elapsed_ms = (time.perf_counter() - started) * 1000 / size
                    if any(isinstance(answer, Exception) or not answer[1] for answer in answers):
                        raise RuntimeError(f"a job was not created: {answers}")
                    (batched if way == "batch" else alone).append(elapsed_ms)
            rows.append((size, statistics.median(batched), statistics.median(alone)))
            print(f"  N={size}: done", file=sys.stderr, flush=True)
        return rows
    finally:
        await db.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--sizes", default="1,4,16,64")
    parser.add_argument("--repeats", type=int, default=20, help="pairs per size; medians are printed")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    print(f"{'database':10} {'N':>4} | {'batch ms/job':>12} | {'one by one ms/job':>17} | {'one by one / batch':>18}")
    for kind in [d.strip() for d in args.databases.split(",") if d.strip()]:
        with tempfile.TemporaryDirectory(prefix="bench-group-commit-") as tmp, database_url(kind, Path(tmp)) as url:
            upgrade(url)
            for size, batched, alone in asyncio.run(measure(url, sizes, args.repeats)):
                print(f"{kind:10} {size:4d} | {batched:12.2f} | {alone:17.2f} | {alone / batched:17.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
