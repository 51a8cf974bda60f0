"""Where a plaintext value sits in a broker's database: every column of every row of every table, and for SQLite
the raw bytes of its files (the database, its write-ahead log and shared memory), so a value kept anywhere, even
in a table the models do not know or a page not yet checkpointed, is found."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, make_url

from broker.db.engine import Database, create_database


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("latin-1")
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _scan(connection: Connection, needle: str) -> list[str]:
    found = []
    for table in inspect(connection).get_table_names():
        result = connection.execute(text(f'SELECT * FROM "{table}"'))
        columns = list(result.keys())
        for row in result:
            found += [f"{table}.{column}" for column, value in zip(columns, row, strict=True)
                      if value is not None and needle in _text(value)]  # fmt: skip
    return sorted(set(found))


async def columns_holding(db: Database, needle: str) -> list[str]:
    """Every ``table.column`` some row of which holds ``needle`` (as text, JSON or bytes)."""
    async with db.engine.connect() as connection:
        return await connection.run_sync(_scan, needle)


def columns_holding_at(url: str, needle: str) -> list[str]:
    """:func:`columns_holding` for the database at ``url`` (from synchronous code: it runs its own loop)."""

    async def scan() -> list[str]:
        database = create_database(url)
        try:
            return await columns_holding(database, needle)
        finally:
            await database.dispose()

    return asyncio.run(scan())


def sqlite_files_holding(url: str, needle: str) -> list[str]:
    """The files of the SQLite database at ``url`` (the database, ``-wal``, ``-shm``) whose bytes hold ``needle``;
    [] for another database."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or not parsed.database:
        return []
    path = Path(parsed.database)
    files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
    return [str(file) for file in files if file.exists() and needle.encode() in file.read_bytes()]
