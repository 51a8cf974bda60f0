"""A schemathesis run against a broker of its own: ``python -m app`` on 127.0.0.1 with its loops running, a
fresh SQLite file, the lab's expendable Factory ``echo`` only, and real identities (no static token).

The broker's first admin comes from ``python -m broker create-admin`` against that database, as an operator
makes it; through the API that admin then makes what the generated requests need to reach past 404: a project
with hours on echo, a plain user who is its PI, an Antenna, a job, a spare token. Their ids go to schemathesis
as dictionaries (half of the generated path ids and project/factory fields are drawn from them, the rest are
generated).

The run is the schemathesis CLI itself (``st run``, every phase: examples, coverage, fuzzing and stateful with
the links it infers from the document), one worker, a fixed seed, its JSON report read back. Shared by the
suite's test (tests/fuzz/test_fuzz.py, 25 examples per operation) and ``python -m bench.fuzz`` (200).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from broker.db.migrate import upgrade
from conveyor.spec import TERMINAL_STATES
from tests.api.server import REPO, Server, lab_factories, start_server

SEED = 20260311
EXPENDABLE = "echo"
PROJECT = "EHPC-AIF-2026PG01-1147"  # the project the document's own examples name
ANTENNA = "be"
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
# Every check schemathesis has, but these (each with the reason it cannot hold here).
EXCLUDED_CHECKS = {
    "positive_data_acceptance": (
        "a schema-valid request may name what does not exist (a Factory, a cursor this broker never issued, "
        "countries no Factory is in): the document cannot list what exists, and the broker rightly answers 422"
    ),
}
# The failure codes (schemathesis.failure_codes) the suite holds without exception.
SERVER_ERRORS = frozenset({"ST101", "ST102"})  # a 5xx; a 5xx with a bad content type
UNDOCUMENTED_STATUS = "ST103"
RUN_TIMEOUT_S = 600.0
# Every request comes from 127.0.0.1, and schemathesis sends many without valid credentials on purpose
# (ignored_auth, missing headers): with the default limit the address is soon refused 429 for everything,
# which would hide the operations behind it. The limiter itself is tested in tests/api/test_rate_limits.py.
FUZZ_SETTINGS = {"CONVEYOR_AUTH_FAILURES_PER_MINUTE": "1000000"}
TERMINAL = frozenset(str(state) for state in TERMINAL_STATES)


@dataclass(frozen=True)
class Finding:
    """One failing case: its code (ST...) and title, the operation (or "Stateful tests"), and the CLI's text
    of the case (the response it got and a curl to reproduce it; empty if the text did not show it)."""

    code: str
    title: str
    operation: str
    text: str = ""

    def __str__(self) -> str:
        return f"{self.code} {self.title}: {self.operation}"


_SECTION = re.compile(r"^_{3,} (?P<operation>.+?) _{3,}$", re.MULTILINE)
_CASE = re.compile(r"^\d+\. Test Case ID: ", re.MULTILINE)
_CODE = re.compile(r"^- (?P<code>ST\d{3}) (?P<title>.+)$", re.MULTILINE)


# A 503 naming the Factory because Slurm did not answer in time (a timeout, a refused connection): the answer the
# document promises then, not a defect; the machine being loaded, or a fault test killing echo's slurmctld
# meanwhile, is enough. The output of a job whose Slurm record is gone is no such case (issue 12 item 16).
_SLURM_DID_NOT_ANSWER = (
    re.compile(r"^\[503\] ", re.MULTILINE),
    re.compile(r'"code":"unavailable"'),
    re.compile(r'"detail":"Factory \w+ could not be reached[^"]*(Timeout|ConnectError|refused)'),
)


def slurm_did_not_answer(finding: Finding) -> bool:
    """A 5xx that is the broker's documented 503 for a Factory that did not answer (see above)."""
    return finding.code in SERVER_ERRORS and all(part.search(finding.text) for part in _SLURM_DID_NOT_ANSWER)


def findings_of(report: Mapping[str, Any], output: str) -> list[Finding]:
    """Every failing case the CLI printed, one finding per code it failed; plus, with no text, any code and
    operation the JSON report lists that the text did not show."""
    found: list[Finding] = []
    failures = output.split(" FAILURES ", 1)[1] if " FAILURES " in output else ""
    failures = re.split(r"^=+ (WARNINGS|SUMMARY) =+$", failures, maxsplit=1, flags=re.MULTILINE)[0]
    headers = list(_SECTION.finditer(failures))
    for index, header in enumerate(headers):
        end = headers[index + 1].start() if index + 1 < len(headers) else len(failures)
        for case in _CASE.split(failures[header.end() : end])[1:]:
            for code in _CODE.finditer(case):
                found.append(Finding(code["code"], code["title"].strip(), header["operation"], case.strip()))
    shown = {(finding.code, finding.operation) for finding in found}
    for failure in report["failures"]:
        for operation in failure["operations"]:
            if (failure["code"], operation) not in shown:
                found.append(Finding(failure["code"], failure["title"], operation))
    return found


@dataclass
class FuzzReport:
    """What one run found, its counts, and the CLI's own text (which names every failing case and its curl)."""

    principal: str
    report: dict[str, Any]
    output: str
    seconds: float

    @property
    def findings(self) -> list[Finding]:
        return findings_of(self.report, self.output)

    @staticmethod
    def details(findings: list[Finding]) -> str:
        """The CLI's text of these failing cases (each with the answer it got and a curl)."""
        return "\n\n".join(f"--- {finding}\n{finding.text}" for finding in findings)[-12000:]

    def summary(self) -> str:
        cases = self.report["test_cases"]
        ops = self.report["operations"]
        found = "; ".join(sorted({str(f) for f in self.findings})) or "nothing"
        return (
            f"{self.principal}: {ops['tested']}/{ops['total']} operations, {cases['generated']} cases in "
            f"{self.seconds:.1f} s, phases {_phase_states(self.report)}; found {found}"
        )


def _phase_states(report: Mapping[str, Any]) -> dict[str, str]:
    return {name: phase["status"] for name, phase in report["phases"].items()}


@dataclass
class Fixture:
    """What the broker holds before the run: ids the generated requests draw from (see the module doc)."""

    admin_token: str
    researcher_token: str
    researcher_id: str
    job_id: str
    spare_token_id: str

    def token_of(self, principal: str) -> str:
        return {"admin": self.admin_token, "researcher": self.researcher_token}[principal]


def create_admin(server_env: Mapping[str, str]) -> str:
    """The first admin's token, made by the broker's own command against the broker's database."""
    result = subprocess.run(
        [sys.executable, "-m", "broker", "create-admin", "fuzz-admin"],
        cwd=REPO, env=dict(server_env), capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    if result.returncode != 0:
        raise AssertionError(f"create-admin failed ({result.returncode}): {result.stderr}")
    return result.stdout.strip()


def _call(
    client: httpx.Client, method: str, path: str, body: Any, expected: int, *, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    response = client.request(method, path, json=body, params=params)
    if response.status_code != expected:
        raise AssertionError(f"setup: {method} {path} answered {response.status_code}: {response.text}")
    answer: dict[str, Any] = response.json() if response.content else {}
    return answer


def _jwks() -> dict[str, Any]:
    """A JWK Set holding one new P-256 public key (an Antenna's; nothing here ever signs with it)."""
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key))
    return {"keys": [{**jwk, "kid": "k1", "alg": "ES256", "use": "sig"}]}


def prepare(base_url: str, admin_token: str, job_root: str) -> Fixture:
    """The project on echo, a plain user who is its PI, an Antenna linked to echo, one job of the PI's, and a
    spare token of the PI's (for DELETE)."""
    now = datetime.now(UTC)
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=30) as admin:
        _call(admin, "POST", "/v1/admin/projects", {"id": PROJECT, "title": "fuzzing"}, 201)
        _call(admin, "POST", "/v1/admin/allocations", {
            "project": PROJECT, "factory": EXPENDABLE, "unit": "node_hours", "hours": 1000.0,
            "starts_at": (now - timedelta(hours=1)).isoformat(), "ends_at": (now + timedelta(days=30)).isoformat(),
        }, 201)  # fmt: skip
        made = _call(admin, "POST", "/v1/admin/users", {"name": "fuzz-researcher"}, 201)
        researcher_id, researcher_token = made["user"]["id"], made["token"]["token"]
        _call(admin, "PUT", f"/v1/projects/{PROJECT}/members/{researcher_id}", {"role": "pi"}, 204)
        _call(admin, "POST", "/v1/admin/antennas", {
            "id": ANTENNA, "country": "BE", "title": "fuzzing", "factories": [EXPENDABLE], "jwks": _jwks(),
        }, 201)  # fmt: skip
    with httpx.Client(
        base_url=base_url, headers={"Authorization": f"Bearer {researcher_token}"}, timeout=30
    ) as researcher:
        job = _call(researcher, "POST", "/v1/jobs", {
            "name": "fuzz-seed", "project": PROJECT, "command": ["true"], "working_directory": job_root,
            "resources": {"time_limit_min": 1, "memory_mb": 100}, "placement": {"factory": EXPENDABLE},
        }, 201)  # fmt: skip
        spare = _call(researcher, "POST", "/v1/tokens", {"name": "spare", "days": 1, "scopes": ["read"]}, 201)
    return Fixture(admin_token, researcher_token, researcher_id, job["id"], spare["id"])


def _toml(value: Any) -> str:
    """A TOML value (strings as JSON strings, which TOML reads alike)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def config_text(fixture: Fixture, token: str, examples: int, seed: int) -> str:
    """schemathesis.toml for one run: seed, examples, checks, headers, and the dictionaries of known ids."""
    dictionaries = {
        "factories": [EXPENDABLE],
        "projects": [PROJECT],
        "users": [fixture.researcher_id],
        "jobs": [fixture.job_id],
        "tokens": [fixture.spare_token_id],
        "antennas": [ANTENNA],
    }
    bindings = {
        "path.factory_id": "factories",
        "body.factory": "factories",
        "path.project_id": "projects",
        "body.project": "projects",
        "path.user_id": "users",
        "path.job_id": "jobs",
        "path.token_id": "tokens",
        "path.antenna_id": "antennas",
    }
    lines = [
        f"seed = {seed}",
        "workers = 1",
        "[headers]",
        f"Authorization = {_toml('Bearer ' + token)}",
        "[generation]",
        f"max-examples = {examples}",
        'database = "none"',
        "[checks]",
        *(f"{name}.enabled = false" for name in EXCLUDED_CHECKS),
        "[parameters]",
        *(f"{_toml(key)} = {_toml({'dictionary': name, 'probability': 0.5})}" for key, name in bindings.items()),
    ]
    for name, values in dictionaries.items():
        lines += [f"[dictionaries.{name}]", f"values = {_toml(values)}"]
    return "\n".join(lines) + "\n"


def run_schemathesis(
    base_url: str, fixture: Fixture, principal: str, workdir: Path, *, examples: int, seed: int = SEED
) -> FuzzReport:
    """``st run`` over the broker's own document as ``principal``; every check but :data:`EXCLUDED_CHECKS`."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / f"schemathesis-{principal}.toml"
    config.write_text(config_text(fixture, fixture.token_of(principal), examples, seed))
    report_path = workdir / f"report-{principal}.json"
    argv = [
        str(SCHEMATHESIS), "--config-file", str(config), "--no-color", "run", f"{base_url}/openapi.json",
        "--checks", "all", "--exclude-checks", ",".join(EXCLUDED_CHECKS),
        "--report", "json", "--report-json-path", str(report_path),
    ]  # fmt: skip
    started = time.monotonic()
    env = {**os.environ, "SCHEMATHESIS_HOOKS": ""}
    result = subprocess.run(
        argv, cwd=workdir, env=env, capture_output=True, text=True, check=False, timeout=RUN_TIMEOUT_S
    )
    seconds = time.monotonic() - started
    output = result.stdout + result.stderr
    (workdir / f"schemathesis-{principal}.out").write_text(output)
    if not report_path.exists():
        raise AssertionError(f"schemathesis wrote no report (exit {result.returncode}):\n{output[-6000:]}")
    report = json.loads(report_path.read_text())
    return FuzzReport(principal, report, output, seconds)


@dataclass
class FuzzBroker:
    """The broker under fuzzing and what was made in it before the run."""

    server: Server
    fixture: Fixture
    workdir: Path

    def cancel_active_jobs(self) -> int:
        """Cancel every job not yet ended (the fuzzer's accepted jobs must not linger on echo)."""
        cancelled = 0
        headers = {"Authorization": f"Bearer {self.fixture.admin_token}"}
        with httpx.Client(base_url=self.server.base_url, headers=headers, timeout=30) as admin:
            cursor: str | None = None
            while True:
                params: dict[str, Any] = {"limit": 500, **({"cursor": cursor} if cursor else {})}
                page = _call(admin, "GET", "/v1/jobs", None, 200, params=params)
                for job in page["items"]:
                    if job["state"] not in TERMINAL:
                        admin.post(f"/v1/jobs/{job['id']}/cancel")
                        cancelled += 1
                cursor = page.get("next_cursor")
                if not cursor:
                    return cancelled


def job_root(factories_file: Path) -> str:
    document = json.loads(factories_file.read_text())
    root: str = document["factories"][0]["job_root"]
    return root


@contextmanager
def fuzz_broker(workdir: Path, template: Path | None = None) -> Iterator[FuzzBroker]:
    """A broker of its own (loops on, echo only, a fresh SQLite file, no static token) with its fixture;
    stopped by its PID at the end, after its remaining jobs are cancelled."""
    workdir.mkdir(parents=True, exist_ok=True)
    database = workdir / "conveyor.db"
    url = f"sqlite+aiosqlite:///{database}"
    if template is not None:
        shutil.copyfile(template, database)
    else:
        upgrade(url)
    factories = lab_factories(workdir, only=[EXPENDABLE])
    server = start_server(workdir, database, factories, run_loops=True, dev=False, env=FUZZ_SETTINGS)
    broker: FuzzBroker | None = None
    try:
        server.wait_ready(60)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")},
            "CONVEYOR_DATA_DIR": str(workdir),
            "CONVEYOR_DATABASE_URL": url,
            "CONVEYOR_FACTORIES_FILE": str(factories),
        }
        admin_token = create_admin(env)
        broker = FuzzBroker(server, prepare(server.base_url, admin_token, job_root(factories)), workdir)
        yield broker
    finally:
        try:
            if broker is not None and server.process.poll() is None:
                broker.cancel_active_jobs()
        finally:
            server.stop()
