"""``pip install ./sdk`` into a fresh venv gives a working client that pulls in no server dependency: it
imports, talks to a live broker, and neither FastAPI, SQLAlchemy, uvicorn nor the broker's own packages are
installed or imported."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.api.conftest import TOKEN
from tests.api.server import REPO, lab_factories, start_server

SERVER_ONLY = {"fastapi", "sqlalchemy", "uvicorn", "alembic", "starlette", "asyncpg", "aiosqlite", "pyjwt"}

PROBE = textwrap.dedent(
    """
    import json, sys
    import conveyor
    with conveyor.Client(sys.argv[1], token=sys.argv[2]) as client:
        me = client.me()
        dry = client.dry_run({"name": "probe", "project": "EHPC-AIF-2026PG01-1147", "command": ["hostname"]})
    loaded = sorted({name.split(".")[0] for name in sys.modules})
    print(json.dumps({"me": me.id, "factory": dry.factory, "modules": loaded, "file": conveyor.__file__}))
    """
)


def test_the_sdk_alone_in_a_fresh_venv_reaches_a_live_broker(tmp_path: Path, migrated_sqlite_template: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    # A copy: building in place would leave build/ and egg-info/ in the repository.
    source = shutil.copytree(REPO / "sdk", tmp_path / "sdk", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    installed = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(source)], env=env,
                               capture_output=True, text=True, check=False)  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    listing = subprocess.run([str(venv / "bin" / "pip"), "list", "--format=json"], env=env, capture_output=True,
                             text=True, check=True)  # fmt: skip
    packages = {entry["name"].lower() for entry in json.loads(listing.stdout)}
    assert {"conveyor-sdk", "httpx", "pydantic"} <= packages
    assert not packages & SERVER_ONLY, packages & SERVER_ONLY

    database = tmp_path / "conveyor.db"
    database.write_bytes(migrated_sqlite_template.read_bytes())
    server = start_server(tmp_path, database, lab_factories(tmp_path, only=["bravo"]), run_loops=False)
    try:
        server.wait_ready(timeout_s=60)
        probe = subprocess.run([str(venv / "bin" / "python"), "-c", PROBE, server.base_url, TOKEN], env=env,
                               cwd=tmp_path, capture_output=True, text=True, check=False)  # fmt: skip
    finally:
        server.stop()
    assert probe.returncode == 0, probe.stderr
    seen = json.loads(probe.stdout)
    assert (seen["me"], seen["factory"]) == ("dev", "bravo")
    assert seen["file"].startswith(str(venv)), seen["file"]  # the installed copy, not the repository's
    assert not {"fastapi", "sqlalchemy", "broker", "app", "slurm_adapters"} & set(seen["modules"])
