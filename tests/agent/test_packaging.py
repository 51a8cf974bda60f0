"""The agent stands apart from the broker: it imports neither ``broker`` nor ``app`` (nor the server's
libraries), and its distribution lists every package of ``slurm_adapters`` it ships."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
AGENT = REPO / "agent"
FORBIDDEN = {"broker", "app", "fastapi", "starlette", "sqlalchemy", "uvicorn", "alembic", "conveyor"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_agent_never_imports_the_broker_the_api_or_the_server_libraries() -> None:
    sources = sorted(AGENT.rglob("*.py"))
    assert len(sources) >= 10
    for path in sources:
        assert not imported_roots(path) & FORBIDDEN, (path, imported_roots(path) & FORBIDDEN)


def test_the_adapters_the_agent_ships_never_import_the_broker_either() -> None:
    for path in sorted((REPO / "slurm_adapters").rglob("*.py")):
        assert not imported_roots(path) & FORBIDDEN, (path, imported_roots(path) & FORBIDDEN)


def test_the_distribution_lists_every_package_it_needs() -> None:
    config = tomllib.loads((AGENT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    tree = {".".join(init.parent.relative_to(REPO).parts) for init in (REPO / "slurm_adapters").rglob("__init__.py")}
    assert listed == {"agent"} | tree
    assert config["tool"]["setuptools"]["package-dir"] == {"agent": ".", "slurm_adapters": "../slurm_adapters"}
    dependencies = {line.split(">")[0].split("[")[0] for line in config["project"]["dependencies"]}
    assert dependencies == {"httpx", "pydantic", "pyjwt", "pyyaml", "sniffio"}
    assert config["project"]["optional-dependencies"] == {"pyslurm": ["pyslurm>=22.5"]}
    assert config["project"]["scripts"] == {"conveyor-agent": "agent.__main__:main"}
