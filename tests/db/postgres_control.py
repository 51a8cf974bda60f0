"""Stopping and starting the lab's shared PostgreSQL, as outage tests do: only through the project's own
``python -m dev.postgres`` (which ends the server by its recorded PID), and always up again afterwards."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.db.conftest import postgres_server_url

REPO = Path(__file__).resolve().parents[2]


def dev_postgres(command: str) -> None:
    """``python -m dev.postgres start|stop``: the project's own way (stop: SIGINT to the recorded PID)."""
    result = subprocess.run(
        [sys.executable, "-m", "dev.postgres", command],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"dev.postgres {command} failed:\n{result.stdout}{result.stderr}"


async def postgres_answers() -> bool:
    engine = create_async_engine(postgres_server_url())
    try:
        async with engine.connect() as connection:
            return bool((await connection.execute(text("SELECT 1"))).scalar() == 1)
    except Exception:  # any failure to connect is "not up yet"
        return False
    finally:
        await engine.dispose()


async def ensure_postgres_up() -> None:
    await asyncio.to_thread(dev_postgres, "start")  # fast when it is already up
    deadline = time.monotonic() + 60
    while not await postgres_answers():
        assert time.monotonic() < deadline, "PostgreSQL does not accept connections 60 s after start"
        await asyncio.sleep(0.2)  # a poll interval
