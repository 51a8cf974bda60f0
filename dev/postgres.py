"""A PostgreSQL of the project's own for development and tests: ``python3 -m dev.postgres {start,stop,status,url}``.

Run as root (by dev/install.sh). Python standard library only. ``start`` installs Debian's PostgreSQL if no
server binaries exist, initialises a cluster under ``$CONVEYOR_LAB_DIR/postgres`` (not Debian's
``/etc/postgresql`` clusters, which it never touches), starts ``postgres`` in the foreground as the postgres
user on 127.0.0.1:5433 with its socket in our directory, records its PID (dev/lab/procs.py), ensures the role
and database ``conveyor`` (password in a 0600 file) and writes the SQLAlchemy URL to ``url`` beside it,
which the tests read. A second ``start`` only checks: it is fast when the server is up.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from dev.lab import procs
from dev.lab.layout import lab_root

PORT = int(os.environ.get("CONVEYOR_PG_PORT", "5433"))
ROLE = "conveyor"
DATABASE = "conveyor"
SERVER_USER = "postgres"
READY_TIMEOUT_S = 60.0
_NO_MAIN_CLUSTER = Path("/etc/postgresql-common/createcluster.d/50-conveyor-no-main-cluster.conf")


def root_dir() -> Path:
    return lab_root() / "postgres"


def data_dir() -> Path:
    return root_dir() / "data"


def socket_dir() -> Path:
    return root_dir() / "run"


def pid_file() -> Path:
    return root_dir() / "postgres.pid"


def url_file() -> Path:
    return root_dir() / "url"


def password_file() -> Path:
    return root_dir() / "password"


def log_file() -> Path:
    return root_dir() / "postgres.log"


def _bin_dir() -> Path | None:
    """The newest installed server's bin directory (Debian 12: 15, Debian 13: 17)."""
    found = [
        p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "postgres").exists() and (p / "initdb").exists()
    ]
    found.sort(key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return found[-1] if found else None


def _install() -> Path:
    bin_dir = _bin_dir()
    if bin_dir is not None:
        return bin_dir
    # Debian's package would create and start a "main" cluster on 5432; we run our own, so ask it not to.
    _NO_MAIN_CLUSTER.parent.mkdir(parents=True, exist_ok=True)
    _NO_MAIN_CLUSTER.write_text("# dev/postgres.py runs its own cluster\ncreate_main_cluster = false\n")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"], check=True, env=env)
    bin_dir = _bin_dir()
    if bin_dir is None:
        raise SystemExit("PostgreSQL was installed but no server binaries are under /usr/lib/postgresql/*/bin")
    return bin_dir


def _as_server_user(argv: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={SERVER_USER}", f"--regid={SERVER_USER}", "--init-groups", *argv]


def _initdb(bin_dir: Path) -> None:
    """A fresh cluster if there is none, or if it was made by another major version (a dev database)."""
    version_file = data_dir() / "PG_VERSION"
    major = bin_dir.parent.name
    if version_file.exists() and version_file.read_text().strip() == major:
        return
    if version_file.exists():
        print(f"postgres: cluster is version {version_file.read_text().strip()}, server is {major}: recreating")
    shutil.rmtree(data_dir(), ignore_errors=True)
    root_dir().mkdir(parents=True, exist_ok=True)
    root_dir().chmod(0o755)
    data_dir().mkdir(mode=0o700)
    shutil.chown(data_dir(), SERVER_USER, SERVER_USER)
    argv = [
        str(bin_dir / "initdb"), "-D", str(data_dir()), "-U", SERVER_USER, "--encoding=UTF8", "--no-locale",
        "--auth-local=peer", "--auth-host=scram-sha-256",
    ]  # fmt: skip
    result = subprocess.run(_as_server_user(argv), capture_output=True, text=True, timeout=300, check=False)
    if result.returncode != 0:
        raise SystemExit(f"initdb failed:\n{result.stdout}{result.stderr}")


def _psql(bin_dir: Path, sql: str, database: str = "postgres") -> subprocess.CompletedProcess[str]:
    argv = [
        str(bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
        "-h", str(socket_dir()), "-p", str(PORT), "-U", SERVER_USER, "-d", database, "-c", sql,
    ]  # fmt: skip
    return subprocess.run(_as_server_user(argv), capture_output=True, text=True, timeout=30, check=False)


def _answers(bin_dir: Path) -> bool:
    return _psql(bin_dir, "SELECT 1").returncode == 0


def _start_server(bin_dir: Path) -> None:
    socket_dir().mkdir(parents=True, exist_ok=True)
    shutil.chown(socket_dir(), SERVER_USER, SERVER_USER)
    socket_dir().chmod(0o755)
    argv = _as_server_user([
        str(bin_dir / "postgres"), "-D", str(data_dir()), "-p", str(PORT), "-k", str(socket_dir()),
        "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200", "-c", "logging_collector=off",
    ])  # fmt: skip
    procs.spawn(pid_file(), argv, log_file())
    if not procs.wait_ready(pid_file(), lambda: _answers(bin_dir), READY_TIMEOUT_S):
        tail = log_file().read_text(errors="replace")[-2000:] if log_file().exists() else ""
        raise SystemExit(f"PostgreSQL did not start on 127.0.0.1:{PORT}; {log_file()}:\n{tail}")


def _password() -> str:
    if not password_file().exists():
        password_file().write_text(secrets.token_hex(24) + "\n")
        password_file().chmod(0o600)
    password = password_file().read_text().strip()
    if not re.fullmatch(r"[0-9a-f]+", password):
        raise SystemExit(f"{password_file()} must hold a hex password")
    return password


def _ensure_role_and_database(bin_dir: Path) -> None:
    """Role ``conveyor`` (may create databases: each test session makes its own) owning database ``conveyor``."""
    password = _password()
    role_sql = (
        f"DO $$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') "
        f"THEN ALTER ROLE {ROLE} LOGIN CREATEDB NOSUPERUSER PASSWORD '{password}'; "
        f"ELSE CREATE ROLE {ROLE} LOGIN CREATEDB NOSUPERUSER PASSWORD '{password}'; END IF; END $$;"
    )
    result = _psql(bin_dir, role_sql)
    if result.returncode != 0:
        raise SystemExit(f"creating role {ROLE} failed: {result.stderr}")
    exists = _psql(bin_dir, f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'")
    if exists.stdout.strip() != "1":
        created = _psql(bin_dir, f"CREATE DATABASE {DATABASE} OWNER {ROLE}")
        if created.returncode != 0:
            raise SystemExit(f"creating database {DATABASE} failed: {created.stderr}")


def url(password: str | None = None) -> str:
    secret = password if password is not None else _password()
    return f"postgresql+asyncpg://{ROLE}:{secret}@127.0.0.1:{PORT}/{DATABASE}"


def start() -> str:
    bin_dir = _install()
    if procs.recorded_pid(pid_file()) is None or not _answers(bin_dir):
        procs.stop(pid_file())  # a half-dead server of ours, if any
        _initdb(bin_dir)
        _start_server(bin_dir)
    _ensure_role_and_database(bin_dir)
    url_file().write_text(url() + "\n")
    url_file().chmod(0o600)
    return url(password="***")


def stop(grace_s: float = 30.0) -> bool:
    """SIGINT (PostgreSQL's fast shutdown: clients are disconnected), then procs.stop's TERM/KILL escalation."""
    pid = procs.recorded_pid(pid_file())
    if pid is None:
        pid_file().unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGINT)
    if procs.wait_for(lambda: procs.recorded_pid(pid_file()) is None, grace_s):
        pid_file().unlink(missing_ok=True)
        return True
    return procs.stop(pid_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m dev.postgres", description=__doc__)
    parser.add_argument("command", choices=["start", "stop", "status", "url"])
    args = parser.parse_args(argv)
    if args.command == "start":
        shown = start()
        print(f"postgres: up on 127.0.0.1:{PORT} ({shown}); URL with password in {url_file()}")
    elif args.command == "stop":
        print("postgres: stopped" if stop() else "postgres: was not running")
    elif args.command == "status":
        up = procs.recorded_pid(pid_file()) is not None
        print(f"postgres: {'up' if up else 'down'} (127.0.0.1:{PORT}, data {data_dir()})")
        return 0 if up else 1
    else:
        print(url())
    return 0


if __name__ == "__main__":
    sys.exit(main())
