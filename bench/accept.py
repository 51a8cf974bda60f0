"""What the accept path costs, as ratios to a naive one measured side by side in the same run.

For each database (SQLite, PostgreSQL) this starts two servers, each its own process exactly as deployed
(one uvicorn worker): the broker (``python -m app``, real identities, no static token, loops off so nothing
reaches Slurm) and the naive app (bench/naive_app.py: one ORM transaction per POST, no auth, no idempotency).
Then for each client count it runs, one after another in alternating order so that drift hits all alike, the
load generator (bench/loadgen.py, a separate process) against: the naive ``POST /jobs``; the broker's
``POST /v1/jobs`` as a researcher of a project with a large GPU-hour allocation, with a unique
Idempotency-Key per request (so authentication, tenancy, validation, placement, idempotency and the
allocation compare-and-set all run); and the broker's cheapest authenticated call, ``GET /v1/me``, with the
same token: the practical ceiling of this box for an authenticated request. A second, baseline broker
process on the same database takes the same POSTs and GETs with one fix switched off: by default
``CONVEYOR_ACCEPT_BATCH=0`` (every accept its own transaction, as before group commit came); with
``--baseline-env CONVEYOR_AUTH_CACHE_S=0``, no remembered tokens. Its figures beside the first's are that
fix's before/after.

    .venv/bin/python -m bench.accept                                   # sqlite and postgresql, 1/16/64 clients
    .venv/bin/python -m bench.accept --seconds 5 --databases sqlite --clients 16
    .venv/bin/python -m bench.accept --clients 16 --rounds 3                # medians of 3 rounds (a noisy box)
    .venv/bin/python -m bench.accept --clients 16 --profile /tmp/accept-profile   # then py-spy its POST (needs py-spy)
    .venv/bin/python -m bench.accept --clients 16 --baseline-env CONVEYOR_AUTH_CACHE_S=0   # the token cache's gain

Afterwards every 201 the load generator was given is checked against the rows in each database (no lost
accepts) and any non-2xx answer is printed. Targets (issue): broker POST/s >= 1.6x naive on PostgreSQL and
>= 1.8x naive on SQLite at 16 clients, with p99 < 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bench.naive_app import TABLE as NAIVE_TABLE
from broker.db.migrate import upgrade
from tests.api.server import LAB_FACTORIES, REPO, Server, free_port, start_server
from tests.db.conftest import PostgresDatabases, postgres_server_url

PROJECT = "EHPC-AIF-2026PG01-1147"
FACTORY = "alpha"  # the allocation's Factory: the only one the project may use, so placement ends there
JOB: dict[str, Any] = {
    "name": "bench-accept",
    "project": PROJECT,
    "command": ["python", "train.py", "--epochs", "3"],
    "resources": {"gpus_per_node": 1, "gpu_type": "a100", "time_limit_min": 30},  # reserves 0.5 GPU-hours
    "labels": {"bench": "accept"},
}
TARGET_CLIENTS = 16
TARGET_RATIO = {"sqlite": 1.8, "postgresql": 1.6}
TARGET_P99_MS = 50.0
KINDS = ("naive", "post", "baseline", "get", "baseline_get")
ACCEPTING = ("naive", "post", "baseline")
# The second broker's settings: by default the accept path before group commit (each accept its own
# transaction); --baseline-env measures another fix against its absence, e.g. CONVEYOR_AUTH_CACHE_S=0.
DEFAULT_BASELINE = {"CONVEYOR_ACCEPT_BATCH": "0"}
READY_TIMEOUT_S = 60.0


@dataclass
class Side:
    """One database's two servers and what is needed to load and check them."""

    database: str
    broker: Server
    baseline: Server  # the same broker on the same database, with the baseline's settings
    naive: Server
    broker_url: str
    naive_url: str
    token: str
    accepted: Counter[str] = field(default_factory=Counter)  # every 201 handed out, by server


@dataclass(frozen=True)
class Load:
    """How long each run lasts and what a POST sends."""

    seconds: float
    warmup: float
    body: Path


def _ratio(over: float, under: float) -> float:
    return over / under if under else float("nan")


@dataclass
class Row:
    """One client count: each round's figures per kind (naive, post, get), measured back to back."""

    clients: int
    rounds: list[dict[str, dict[str, Any]]]

    def median(self, kind: str, key: str) -> float:
        return float(statistics.median(float(figures[kind][key]) for figures in self.rounds))

    def ratio(self, over: str, under: str) -> float:
        """The median of the per-round ratios: each round's pair ran minutes apart at most, so drift of the
        box cancels in it better than in a ratio of medians."""
        return float(statistics.median(_ratio(f[over]["rate"], f[under]["rate"]) for f in self.rounds))


# --- setup ------------------------------------------------------------------------------------------------


def _env(extra: dict[str, str]) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "NAIVE_"))}, **extra}


def _create_admin(url: str, data_dir: Path) -> str:
    """The first admin's personal token, made by the broker's own command (as an operator would)."""
    env = _env({"CONVEYOR_DATABASE_URL": url, "CONVEYOR_DATA_DIR": str(data_dir),
                "CONVEYOR_FACTORIES_FILE": str(LAB_FACTORIES)})  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "broker", "create-admin", "bench-ops"],
        cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"create-admin failed: {result.stderr}")
    return result.stdout.strip()


def _researcher(base_url: str, admin_token: str) -> str:
    """A researcher of PROJECT, which holds 1e8 GPU-hours (the most a grant may have) on FACTORY: its token
    goes through every check."""
    now = datetime.now(UTC)
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=30) as admin:

        def call(method: str, path: str, body: dict[str, Any], expected: int) -> dict[str, Any]:
            response = admin.request(method, path, json=body)
            if response.status_code != expected:
                raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
            return response.json() if response.content else {}

        call("POST", "/v1/admin/projects", {"id": PROJECT, "title": "accept-path benchmark"}, 201)
        call("POST", "/v1/admin/allocations", {
            "project": PROJECT, "factory": FACTORY, "unit": "gpu_hours", "hours": 1e8,
            "starts_at": (now - timedelta(hours=1)).isoformat(), "ends_at": (now + timedelta(days=30)).isoformat(),
        }, 201)  # fmt: skip
        made = call("POST", "/v1/admin/users", {"name": "bench-researcher"}, 201)
        call("PUT", f"/v1/projects/{PROJECT}/members/{made['user']['id']}", {"role": "researcher"}, 204)
    token: str = made["token"]["token"]
    return token


def _start_naive(directory: Path, url: str) -> Server:
    port = free_port()
    log = directory / f"naive-{port}.log"
    env = _env({"NAIVE_DATABASE_URL": url, "NAIVE_HOST": "127.0.0.1", "NAIVE_PORT": str(port)})
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "bench.naive_app"], cwd=REPO, env=env, stdout=out, stderr=out)
    return Server(process, f"http://127.0.0.1:{port}", log)


@contextlib.contextmanager
def databases(kind: str, directory: Path) -> Iterator[tuple[str, str]]:
    """(broker URL, naive URL): two files, or two fresh databases on the lab's PostgreSQL (dropped after)."""
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{directory / 'conveyor.db'}", f"sqlite+aiosqlite:///{directory / 'naive.db'}"
        return
    server = PostgresDatabases(postgres_server_url())
    try:
        yield server.create(), server.create()
    finally:
        server.drop_all()


@contextlib.contextmanager
def side(kind: str, directory: Path, baseline_env: dict[str, str]) -> Iterator[Side]:
    """Both servers of one database, ready and configured; stopped (by PID) at the end."""
    with databases(kind, directory) as (broker_url, naive_url):
        upgrade(broker_url)
        admin_token = _create_admin(broker_url, directory)
        broker, baseline = (
            start_server(directory, directory / "conveyor.db", LAB_FACTORIES, run_loops=False,
                         env={"CONVEYOR_DATABASE_URL": broker_url, **extra}, dev=False)
            for extra in ({}, baseline_env)
        )  # fmt: skip
        naive = _start_naive(directory, naive_url)
        try:
            for server in (broker, baseline):
                server.wait_ready(READY_TIMEOUT_S)
            naive.wait_ready(READY_TIMEOUT_S, path="/healthz")
            token = _researcher(broker.base_url, admin_token)
            yield Side(kind, broker, baseline, naive, broker_url, naive_url, token)
        finally:
            for server in (broker, baseline, naive):
                server.stop()


# --- measuring --------------------------------------------------------------------------------------------


def _batches(server: Server) -> tuple[float, float]:
    """(group commits, jobs they carried) so far, from the broker's /metrics."""
    found = {}
    for line in httpx.get(f"{server.base_url}/metrics", timeout=30).text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("conveyor_accept_batches_total", "conveyor_accept_batched_jobs_total"):
            found[name] = float(value)
    return found.get("conveyor_accept_batches_total", 0.0), found.get("conveyor_accept_batched_jobs_total", 0.0)


def loadgen(target: Side, kind: str, clients: int, load: Load) -> dict[str, Any]:
    """One load-generator process against one endpoint; its JSON result (for the broker's POST, with the
    mean number of jobs per group commit)."""
    auth = ["--header", f"Authorization: Bearer {target.token}"]
    if kind == "naive":
        argv = ["--url", f"{target.naive.base_url}/jobs", "--method", "POST", "--body-file", str(load.body)]
    elif kind in ("post", "baseline"):
        server = target.broker if kind == "post" else target.baseline
        argv = ["--url", f"{server.base_url}/v1/jobs", "--method", "POST", "--body-file", str(load.body), *auth,
                "--idempotency-prefix", f"bench-{kind}-{clients}-{time.monotonic_ns()}"]  # fmt: skip
    else:
        server = target.broker if kind == "get" else target.baseline
        argv = ["--url", f"{server.base_url}/v1/me", "--method", "GET", *auth]
    argv += ["--connections", str(clients), "--seconds", str(load.seconds), "--warmup", str(load.warmup)]
    argv += ["--label", kind]
    before = _batches(target.broker) if kind == "post" else (0.0, 0.0)
    result = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", *argv],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=load.seconds + load.warmup + 300,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"loadgen {kind} x{clients} failed: {result.stderr}")
    figures: dict[str, Any] = json.loads(result.stdout)
    if kind == "post":
        after = _batches(target.broker)
        figures["jobs_per_batch"] = _ratio(after[1] - before[1], after[0] - before[0])
    if kind in ACCEPTING:
        target.accepted["naive" if kind == "naive" else "broker"] += int(figures["all_statuses"].get("201", 0))
    return figures


def measure(target: Side, clients: list[int], load: Load, rounds: int) -> list[Row]:
    """Every client count ``rounds`` times; the three kinds back to back, their order alternating."""
    runs: dict[int, list[dict[str, dict[str, Any]]]] = {count: [] for count in clients}
    for turn in range(rounds):
        for index, count in enumerate(clients):
            order = KINDS if (turn + index) % 2 == 0 else tuple(reversed(KINDS))
            figures = {kind: loadgen(target, kind, count, load) for kind in order}
            runs[count].append(figures)
            rates = ", ".join(f"{k} {figures[k]['rate']:.0f}/s" for k in KINDS)
            rates += f" (broker: {figures['post']['jobs_per_batch']:.1f} jobs per group commit)"
            print(f"  {target.database} x{count} round {turn + 1}: {rates}", file=sys.stderr, flush=True)
    return [Row(count, runs[count]) for count in clients]


async def _count(url: str, table: str) -> int:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return int((await connection.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())
    finally:
        await engine.dispose()


def check(target: Side, rows: list[Row]) -> list[str]:
    """Problems found: lost accepts (201s without a row, or rows without a 201) and any non-2xx answer."""
    problems = []
    # The setup made no job; every row in either table came from a 201 the load generator counted.
    stored = {"broker": asyncio.run(_count(target.broker_url, "jobs")),
              "naive": asyncio.run(_count(target.naive_url, NAIVE_TABLE))}  # fmt: skip
    for kind, rows_in_db in stored.items():
        if rows_in_db != target.accepted[kind]:
            problems.append(f"{target.database} {kind}: {target.accepted[kind]} answered 201, {rows_in_db} stored")
    for row in rows:
        for turn, figures_by_kind in enumerate(row.rounds, 1):
            for kind, figures in figures_by_kind.items():
                if figures["errors"]:
                    problems.append(f"{target.database} {kind} x{row.clients} round {turn}: errors {figures['errors']}")
    return problems


# --- reporting --------------------------------------------------------------------------------------------


def _cell(row: Row, kind: str) -> str:
    rate, p50, p99 = (row.median(kind, key) for key in ("rate", "p50_ms", "p99_ms"))
    return f"{rate:7.0f} ({p50:5.1f}, {p99:6.1f})"


HEADER = (
    f"{'database':10} {'clients':>7} | {'naive POST/s (p50, p99 ms)':>28} | {'broker POST/s (p50, p99 ms)':>28} | "
    f"{'broker/naive':>12} | {'baseline POST/s (p50, p99)':>28} | {'POST/baseline':>13} | "
    f"{'GET /v1/me/s (p50, p99 ms)':>28} | {'POST/GET':>8} | {'baseline GET/s (p50, p99)':>28} | "
    f"{'GET/baseline':>12}"
)


def table(database: str, rows: list[Row]) -> list[str]:
    """Medians over the rounds (one round: the figures themselves). "group commit" is broker POST/s over the
    baseline broker's (the fix's after/before), and the GETs' likewise."""
    return [
        f"{database:10} {row.clients:7d} | {_cell(row, 'naive'):>28} | {_cell(row, 'post'):>28} | "
        f"{row.ratio('post', 'naive'):11.2f}x | {_cell(row, 'baseline'):>28} | "
        f"{row.ratio('post', 'baseline'):12.2f}x | {_cell(row, 'get'):>28} | {row.ratio('post', 'get'):7.2f}x | "
        f"{_cell(row, 'baseline_get'):>28} | {row.ratio('get', 'baseline_get'):11.2f}x"
        for row in rows
    ]


def spreads(database: str, rows: list[Row]) -> list[str]:
    """Each round's broker/naive ratio, so the reader sees how much the box drifted."""
    return [
        f"{database} x{row.clients}: broker/naive per round "
        + " ".join(f"{_ratio(figures['post']['rate'], figures['naive']['rate']):.2f}" for figures in row.rounds)
        for row in rows
        if len(row.rounds) > 1
    ]


def verdicts(database: str, rows: list[Row]) -> list[str]:
    lines = []
    for row in rows:
        if row.clients != TARGET_CLIENTS:
            continue
        ratio, p99 = row.ratio("post", "naive"), row.median("post", "p99_ms")
        wanted = TARGET_RATIO[database]
        met = ratio >= wanted and p99 < TARGET_P99_MS
        lines.append(
            f"{database}: broker/naive {ratio:.2f}x (target >= {wanted}x), broker p99 {p99:.1f} ms "
            f"(target < {TARGET_P99_MS:.0f} ms) at {TARGET_CLIENTS} clients: {'MET' if met else 'NOT MET'}"
        )
    return lines


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{platform.node()}: {os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}, {platform.system()} {platform.release()}"
    )


# --- profiling --------------------------------------------------------------------------------------------


def profile(target: Side, load: Load, directory: Path) -> Path:
    """py-spy on the broker while it takes 16 clients' POSTs; the raw (collapsed) stacks are written out."""
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    out = directory / f"{target.database}-post.txt"
    recorder = subprocess.Popen(
        [py_spy, "record", "--pid", str(target.broker.process.pid), "--rate", "250", "--format", "raw",
         "--duration", str(int(load.warmup + load.seconds)), "--output", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        figures = loadgen(target, "post", TARGET_CLIENTS, load)
    finally:
        _, stderr = recorder.communicate(timeout=load.seconds + load.warmup + 60)
    if recorder.returncode != 0:
        raise RuntimeError(f"py-spy failed: {stderr.decode()}")
    print(f"profiled {target.database} POST x{TARGET_CLIENTS}: {figures['rate']:.0f}/s (under py-spy) -> {out}")
    return out


# Which step of the accept path a sample of the event-loop thread is in: the innermost matching frame wins.
STEPS = (
    ("reserve (broker/db/repositories/allocations.py", "write txn: allocation compare-and-set + charge row"),
    ("insert_ignoring_conflict", "write txn: idempotency key insert"),
    ("create_or_get (broker/db/repositories/jobs.py:115", "write txn: idempotency key insert"),
    ("Database.write", "write txn: BEGIN/COMMIT, pool checkout"),
    ("JobRepository.create_or_get", "write txn: job + event rows (ORM)"),
    ("IdentityService.authenticate", "auth: token lookup (read txn)"),
    ("get_principal", "auth: other"),
    ("ProjectService.tenancy", "tenancy: roles_of (read txn)"),
    ("AllocationService.budget", "allocations in force (read txn)"),
    ("_check_feasible", "placement"),
    ("request_hash", "idempotency fingerprint"),
    ("job_to_wire", "response: job_to_wire"),
    ("submit_job (app/routes/jobs.py", "response: model_dump, JSONResponse"),
    ("request_body_to_args", "validation: JobSpec (pydantic)"),
    ("solve_dependencies", "FastAPI dependencies, other"),
    ("EpollSelector.select", "idle: waiting for sockets/threads"),
)
# What the database layer is doing in that sample, whatever the step.
LAYERS = (
    ("_async_ping", "pool pre-ping"),
    ("_do_ping", "pool pre-ping"),
    ("_checkout", "pool checkout"),
    ("_checkin", "pool checkin/reset"),
    ("_finalize_fairy", "pool checkin/reset"),
    ("commit", "COMMIT"),
    ("_start_transaction", "BEGIN"),
    ("_sqlite_on_begin", "BEGIN"),
    ("_prepare_and_execute", "driver execute"),
    ("aiosqlite/cursor", "driver execute"),
    ("aiosqlite/core", "driver execute"),
    ("loading.py", "ORM row loading"),
    ("flush", "ORM flush"),
    ("pydantic", "pydantic"),
)


def summarize(stacks: Path) -> list[str]:
    """Where the broker's event-loop thread spends its samples: by step of the accept path, and by what the
    database layer is doing (py-spy raw stacks; threads other than the loop, e.g. aiosqlite's, are left out)."""
    steps: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    total = 0
    for line in stacks.read_text().splitlines():
        frames_text, _, count_text = line.rpartition(" ")
        if "run_forever" not in frames_text or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = frames_text.split(";")
        steps[_first_match(frames, STEPS) or f"other: {_short(frames[-1])}"] += count
        layers[_first_match(frames, LAYERS) or "not in the database layer"] += count
    if not total:
        return ["no samples of the event loop"]
    lines = [f"{total} samples of the event-loop thread, by step (innermost first):"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in steps.most_common(18)]
    lines.append("by database-layer activity:")
    lines += [f"  {n / total:6.1%}  {name}" for name, n in layers.most_common()]
    return lines


def _first_match(frames: list[str], table: tuple[tuple[str, str], ...]) -> str | None:
    for frame in reversed(frames):
        for marker, name in table:
            if marker in frame:
                return name
    return None


def _short(frame: str) -> str:
    """``func (path/to/site-packages/pkg/mod.py:12)`` -> ``func (pkg/mod.py)``."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/lib/python3.11/"):
        path = path.split(marker, 1)[-1]
    return f"{name} ({path})" if where else name


# --- main -------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window of each run")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured load before each window")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--clients", default="1,16,64")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every client count; the table shows medians")
    parser.add_argument("--profile", type=Path, help="afterwards, py-spy the broker's POST at 16 clients into DIR")
    parser.add_argument(
        "--baseline-env", action="append", default=[], metavar="KEY=VALUE",
        help="the baseline broker's settings (default: CONVEYOR_ACCEPT_BATCH=0, the accept path before group commit)",
    )  # fmt: skip
    args = parser.parse_args()
    kinds = [d.strip() for d in args.databases.split(",") if d.strip()]
    if unknown := set(kinds) - set(TARGET_RATIO):
        parser.error(f"unknown database {sorted(unknown)}: use sqlite, postgresql")
    clients = [int(c) for c in args.clients.split(",")]
    baseline_env = dict(pair.split("=", 1) for pair in args.baseline_env) or DEFAULT_BASELINE
    print(machine())
    print("baseline broker: " + " ".join(f"{key}={value}" for key, value in baseline_env.items()))
    print(
        f"{args.seconds:g} s per run after {args.warmup:g} s warm-up, {args.rounds} round(s); naive, broker POST, "
        "GET, and the baseline broker's POST and GET interleaved; medians over the rounds"
    )
    results: dict[str, list[Row]] = {}
    problems: list[str] = []
    profiles: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="bench-accept-") as tmp:
        for kind in kinds:
            directory = Path(tmp) / kind
            directory.mkdir()
            with side(kind, directory, baseline_env) as target:
                load = Load(args.seconds, args.warmup, _body(directory))
                results[kind] = measure(target, clients, load, args.rounds)
                if args.profile:
                    args.profile.mkdir(parents=True, exist_ok=True)
                    profiles[kind] = profile(target, load, args.profile)
                problems += check(target, results[kind])  # before PostgreSQL's databases are dropped
    print(HEADER)
    for kind, rows in results.items():
        for line in table(kind, rows):
            print(line)
    for kind, rows in results.items():
        for line in spreads(kind, rows):
            print(line)
    for kind, rows in results.items():
        for line in verdicts(kind, rows):
            print(line)
    print("no lost accepts, no errors" if not problems else "PROBLEMS:\n  " + "\n  ".join(problems))
    for kind, stacks in profiles.items():
        print(f"\n{kind}: where the broker's POST spends its CPU")
        print("\n".join(summarize(stacks)))
    return 1 if problems else 0


def _body(directory: Path) -> Path:
    path = directory / "job.json"
    path.write_text(json.dumps(JOB))
    return path


if __name__ == "__main__":
    sys.exit(main())
