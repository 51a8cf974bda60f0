"""``pip install ./agent`` into a fresh venv gives a working ``conveyor-agent`` that pulls in no server
dependency: it runs, makes a key, and neither FastAPI, SQLAlchemy, uvicorn nor the broker's own packages are
installed or imported."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVER_ONLY = {"fastapi", "sqlalchemy", "uvicorn", "alembic", "starlette", "asyncpg", "aiosqlite", "conveyor-broker"}

PROBE = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys
    import agent
    names = [info.name for info in pkgutil.iter_modules(agent.__path__, "agent.")]
    for name in names + ["slurm_adapters.factory", "slurm_adapters.rest", "slurm_adapters.cli"]:
        importlib.import_module(name)
    loaded = sorted({name.split(".")[0] for name in sys.modules})
    print(json.dumps({"names": names, "modules": loaded, "file": agent.__file__}))
    """
)


def test_the_agent_alone_in_a_fresh_venv(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    # A copy with the repository's layout (agent/ beside slurm_adapters/): building in place would leave build/
    # and egg-info/ in the repository.
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    shutil.copytree(REPO / "agent", source / "agent", ignore=ignore)
    shutil.copytree(REPO / "slurm_adapters", source / "slurm_adapters", ignore=ignore)
    pip = str(venv / "bin" / "pip")
    installed = subprocess.run([pip, "install", "-q", str(source / "agent")], env=env, capture_output=True,
                               text=True, check=False)  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    listing = subprocess.run([pip, "list", "--format=json"], env=env, capture_output=True, text=True, check=True)
    packages = {entry["name"].lower() for entry in json.loads(listing.stdout)}
    assert {"conveyor-agent", "httpx", "pydantic", "pyjwt", "pyyaml", "cryptography"} <= packages
    assert not packages & SERVER_ONLY, packages & SERVER_ONLY

    command = str(venv / "bin" / "conveyor-agent")
    helped = subprocess.run([command, "--help"], env=env, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert helped.returncode == 0, helped.stderr
    assert all(word in helped.stdout for word in ("run", "keygen", "check"))

    key = tmp_path / "agent.jwk"
    made = subprocess.run([command, "keygen", "--kid", "site-1", "--out", str(key)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    [public] = json.loads(made.stdout)["keys"]
    assert (public["kid"], public["alg"], public["crv"]) == ("site-1", "ES256", "P-256")
    assert "d" not in public

    probe = subprocess.run([str(venv / "bin" / "python"), "-I", "-c", PROBE], env=env, cwd=tmp_path,
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    seen = json.loads(probe.stdout)
    assert seen["file"].startswith(str(venv)), seen["file"]  # the installed copy, not the repository's
    assert {"agent.runner", "agent.executor", "agent.policy", "agent.link", "agent.__main__"} <= set(seen["names"])
    assert not {"fastapi", "starlette", "sqlalchemy", "uvicorn", "broker", "app", "conveyor"} & set(seen["modules"])
