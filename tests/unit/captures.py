"""The recorded Slurm output under data/: slurmrestd answers (data/rest) and client tool output (data/cli)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data"
REST_DATA = DATA / "rest"
CLI_DATA = DATA / "cli"


@cache
def _load(path: Path) -> Any:
    return json.loads(path.read_text())


def rest_capture(name: str) -> Any:
    """A data/rest file as stored: a capture ({"status", "body"}), a shared sample, or a table."""
    return _load(REST_DATA / name)


def rest_body(name: str) -> dict[str, Any]:
    """A slurmrestd answer's body (captures are {"status", "body"}; shared samples are the body itself)."""
    doc = rest_capture(name)
    return dict(doc["body"]) if "status" in doc else dict(doc)


def rest_status(name: str) -> int:
    return int(rest_capture(name)["status"])


def cli_json(name: str) -> dict[str, Any]:
    """A client tool's ``--json`` output."""
    body = _load(CLI_DATA / name)
    assert isinstance(body, dict)
    return dict(body)


def cli_text(name: str) -> str:
    return (CLI_DATA / name).read_text()
