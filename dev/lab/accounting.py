"""slurmdbd with a MariaDB of the lab's own (own datadir, socket and port), for the accounting cluster."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from pathlib import Path

from dev.lab import procs, slurmconf
from dev.lab.commands import READY_TIMEOUT_S, client_env, run_in
from dev.lab.layout import ClusterLayout, lab_root
from dev.lab.topology import LAB_ACCOUNTS, MARIADB_PORT, SUBMIT_USERS


def _mysql_dir() -> Path:
    return lab_root() / "mysql"


def _socket() -> Path:
    return lab_root() / "run" / "mysqld.sock"


def _sql(statement: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["mariadb", f"--socket={_socket()}", "-u", "root", "-e", statement],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )


def _pid_file() -> Path:
    return lab_root() / "run" / "mariadb.pid"


def start_mariadb() -> None:
    if procs.recorded_pid(_pid_file()) is not None:
        return
    data = _mysql_dir() / "data"
    if not (data / "mysql").exists():
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        shutil.chown(data, "mysql", "mysql")
        subprocess.run(
            ["mariadb-install-db", "--user=mysql", f"--datadir={data}", "--auth-root-authentication-method=socket"],
            capture_output=True,
            check=True,
            timeout=120,
        )
    _socket().parent.mkdir(parents=True, exist_ok=True)
    argv = [
        "setpriv", "--reuid=mysql", "--regid=mysql", "--init-groups",
        "mariadbd", "--no-defaults", f"--datadir={data}", f"--socket={_socket()}", f"--port={MARIADB_PORT}",
        "--bind-address=127.0.0.1", f"--pid-file={data}/mariadbd.pid", "--innodb-buffer-pool-size=128M",
        "--innodb-lock-wait-timeout=900", "--skip-log-bin",
    ]  # fmt: skip
    shutil.chown(_socket().parent, "root", "mysql")
    _socket().parent.chmod(0o775)
    procs.spawn(_pid_file(), argv, _mysql_dir() / "mariadbd.out")
    if not procs.wait_ready(_pid_file(), lambda: _sql("SELECT 1").returncode == 0, READY_TIMEOUT_S):
        raise SystemExit(f"MariaDB did not start; see {_mysql_dir()}/mariadbd.out")


def _password_file() -> Path:
    return _mysql_dir() / "slurm.password"


def _password() -> str:
    if not _password_file().exists():
        _password_file().write_text(secrets.token_hex(16))
        _password_file().chmod(0o600)
    return _password_file().read_text().strip()


def slurmdbd_conf_is_current(site: ClusterLayout) -> bool:
    """The written slurmdbd.conf is what this checkout would write."""
    try:
        return (site.host_dir / "slurmdbd.conf").read_text() == slurmconf.slurmdbd_conf(site, _password())
    except OSError:
        return False


def start_slurmdbd(site: ClusterLayout) -> None:
    """A clean accounting database, slurmdbd, and the cluster registered in it."""
    start_mariadb()
    password = _password()
    setup = (
        "DROP DATABASE IF EXISTS slurm_acct_db; CREATE DATABASE slurm_acct_db; "
        f"CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '{password}'; "
        f"CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '{password}'; "
        "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
    )
    result = _sql(setup)
    if result.returncode != 0:
        raise SystemExit(f"MariaDB setup failed: {result.stderr}")
    conf = site.host_dir / "slurmdbd.conf"
    conf.write_text(slurmconf.slurmdbd_conf(site, password))
    conf.chmod(0o600)
    argv = [*site.exec_prefix, "slurmdbd", "-D"]
    procs.spawn(site.pid_file("slurmdbd"), argv, site.host_dir / "log/slurmdbd.out", client_env(site))

    def registered() -> bool:
        listed = run_in(site, ["sacctmgr", "-n", "-P", "show", "cluster", "format=cluster"])
        if listed.returncode != 0:
            return False
        if site.cluster.name in listed.stdout.split():
            return True
        run_in(site, ["sacctmgr", "-i", "add", "cluster", site.cluster.name])
        return False

    if not procs.wait_ready(site.pid_file("slurmdbd"), registered, READY_TIMEOUT_S):
        raise SystemExit(f"slurmdbd did not come up; see {site.host_dir}/log/slurmdbd.log")
    _associations(site)


def _associations(site: ClusterLayout) -> None:
    """Accounts and user associations: with associations enforced, Slurm refuses jobs without them."""
    for account in LAB_ACCOUNTS:
        _sacctmgr(site, "add", "account", account, f"Description=lab account {account}", "Organization=lab")
    users = ",".join(SUBMIT_USERS)
    _sacctmgr(site, "add", "user", users, f"Account={','.join(LAB_ACCOUNTS)}", f"DefaultAccount={LAB_ACCOUNTS[0]}")


def _sacctmgr(site: ClusterLayout, *args: str) -> None:
    result = run_in(site, ["sacctmgr", "-i", *args])
    if result.returncode != 0 and "Nothing new added" not in result.stdout + result.stderr:
        raise SystemExit(f"sacctmgr {' '.join(args)} failed: {result.stderr or result.stdout}")


def stop_slurmdbd(site: ClusterLayout) -> None:
    procs.stop(site.pid_file("slurmdbd"))


def stop_mariadb() -> None:
    procs.stop(_pid_file(), grace_s=20)
