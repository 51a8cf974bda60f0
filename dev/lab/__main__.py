"""The local Slurm lab: ``python3 -m dev.lab {install,start,stop,status,destroy,kill-ctld,start-ctld}``.

Run as root from the repository root. ``start`` installs what is missing, (re)starts every cluster that is
not fully up with a wiped state, builds pyslurm for the sid chroot (lab-only), and writes lab.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time

from dev import postgres
from dev.lab import accounting, cluster, commands, describe, factories_config, install, procs
from dev.lab.layout import ClusterLayout, all_chroots, host_suite, lab_root, layout
from dev.lab.pivot_root import install_enter_script
from dev.lab.pyslurm_build import ensure_pyslurm
from dev.lab.topology import CLUSTERS, chroot_suites


def _sites() -> list[ClusterLayout]:
    suite = host_suite()
    return [layout(c, suite) for c in CLUSTERS]


def _site(name: str) -> ClusterLayout:
    for site in _sites():
        if site.cluster.name == name:
            return site
    raise SystemExit(f"no lab cluster named {name!r}; known: {', '.join(c.name for c in CLUSTERS)}")


def cmd_install() -> None:
    install.host()
    for suite in chroot_suites(host_suite()):
        install.chroot(suite)


def _pyslurm_status() -> dict[str, object]:
    sid = [c for c in all_chroots(host_suite()) if c.name == "sid"]
    if not sid:
        return {"status": "skipped", "reason": "no sid chroot in this lab"}
    build = ensure_pyslurm(sid[0])
    return {
        "status": build.status,
        "reason": build.reason,
        "slurm_release": build.slurm_release,
        "venv_python": build.venv_python,
        "chroot": str(sid[0]),
    }


def cmd_start(*, skip_pyslurm: bool) -> None:
    t0 = time.monotonic()
    cmd_install()
    t_install = time.monotonic() - t0
    sites = _sites()
    releases: list[tuple[ClusterLayout, str]] = []
    for site in sites:
        release = commands.slurm_release(site)
        releases.append((site, release))
        if cluster.is_current(site, release):
            print(f"{site.cluster.name}: already up (Slurm {release})")
            continue
        t = time.monotonic()
        cluster.start(site, release)
        print(f"{site.cluster.name}: up in {time.monotonic() - t:.1f} s (Slurm {release}, {site.suite})")
    path = describe.write(releases, host_suite())
    factories_config.write_factories(json.loads(path.read_text()), path.with_name("factories.yaml"))
    if not skip_pyslurm:
        status = _pyslurm_status()
        doc = json.loads(path.read_text())
        doc["pyslurm"] = status
        path.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"pyslurm: {status['status']} {status.get('reason') or ''}".rstrip())
    print(f"lab ready in {time.monotonic() - t0:.1f} s (installing: {t_install:.1f} s); description: {path}")


def cmd_stop() -> None:
    for site in _sites():
        cluster.stop(site)
    accounting.stop_mariadb()
    for suite in chroot_suites(host_suite()):
        install.unmount_chroot(suite)
    (lab_root() / "lab.json").unlink(missing_ok=True)
    (lab_root() / "factories.yaml").unlink(missing_ok=True)
    print("lab stopped")


def cmd_status() -> int:
    down = 0
    for site in _sites():
        states = {d: procs.recorded_pid(site.pid_file(d)) for d in cluster.daemon_names(site)}
        missing = [d for d, pid in states.items() if pid is None]
        down += bool(missing)
        print(f"{site.cluster.name:8} {'up' if not missing else 'DOWN: ' + ', '.join(missing)}")
    return 1 if down else 0


def cmd_destroy() -> None:
    cmd_stop()
    postgres.stop()  # its data lives under the lab directory removed below
    shutil.rmtree(lab_root(), ignore_errors=True)
    print(f"removed {lab_root()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m dev.lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install", help="install packages, users and chroots only")
    start = sub.add_parser("start", help="install what is missing and start every cluster not fully up")
    start.add_argument("--skip-pyslurm", action="store_true", help="do not build pyslurm in the sid chroot")
    sub.add_parser("stop", help="stop every daemon by its recorded PID and unmount the chroots")
    sub.add_parser("status", help="which clusters are up (exit 1 if any is down)")
    sub.add_parser("destroy", help="stop, then remove the whole lab directory (chroots included)")
    for name in ("kill-ctld", "start-ctld"):
        p = sub.add_parser(name, help=f"{name.split('-')[0]} one cluster's slurmctld (fault tests)")
        p.add_argument("cluster")
    args = parser.parse_args(argv)
    if args.command != "destroy":
        install_enter_script(lab_root())  # every chroot cluster's exec prefix (dev/lab/pivot_root.py)
    if args.command == "install":
        cmd_install()
    elif args.command == "start":
        cmd_start(skip_pyslurm=args.skip_pyslurm)
    elif args.command == "stop":
        cmd_stop()
    elif args.command == "status":
        return cmd_status()
    elif args.command == "destroy":
        cmd_destroy()
    elif args.command == "kill-ctld":
        print(procs.kill(_site(args.cluster).pid_file("slurmctld")))
    elif args.command == "start-ctld":
        cluster.restart_ctld(_site(args.cluster))
    return 0


if __name__ == "__main__":
    sys.exit(main())
