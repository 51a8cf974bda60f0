"""A stub ``torchrun`` for the lab, with torchrun's command line (no torch wheel is installed there).

Each node's copy connects its ``--nproc-per-node`` ranks to rank 0 at the ``--rdzv-endpoint`` it was given, and
node 0 prints ``rendezvous ENDPOINT id ID: N ranks joined`` once all ``--nnodes`` x ``--nproc-per-node`` ranks
have joined with the same ``--rdzv-id``; then every rank runs the program with RANK, WORLD_SIZE and LOCAL_RANK.
A launcher line that starts the wrong number of nodes or ranks, or names the wrong endpoint, never completes.
With ``STUB_TORCHRUN_HOLD`` set to a file name, node 0 waits for that file before the ranks run.
"""

from __future__ import annotations

from dev.lab.view import Cluster

STUB_TORCHRUN = r"""#!/usr/bin/env python3
import argparse, os, socket, subprocess, sys, time

parser = argparse.ArgumentParser()
parser.add_argument("--nnodes", type=int, required=True)
parser.add_argument("--nproc-per-node", type=int, required=True)
parser.add_argument("--rdzv-backend", required=True)
parser.add_argument("--rdzv-endpoint", required=True)
parser.add_argument("--rdzv-id", required=True)
parser.add_argument("program", nargs=argparse.REMAINDER)
args = parser.parse_args()
host, port = args.rdzv_endpoint.rsplit(":", 1)
world = args.nnodes * args.nproc_per_node
node = int(os.environ["SLURM_NODEID"])
deadline = time.monotonic() + 60
if node == 0:
    server = socket.create_server((host, int(port)))
    server.settimeout(60)
ranks = []
for local in range(args.nproc_per_node):
    while True:
        try:
            conn = socket.create_connection((host, int(port)), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"rank {node}/{local}: no rendezvous at {args.rdzv_endpoint}")
            time.sleep(0.1)
    conn.sendall(f"{args.rdzv_id}\n".encode())
    ranks.append(conn)
if node == 0:
    ids = []
    for _ in range(world):
        peer, _ = server.accept()
        ids.append(peer.makefile().readline().strip())
    assert set(ids) == {args.rdzv_id}, ids
    print(f"rendezvous {args.rdzv_endpoint} id {args.rdzv_id}: {world} ranks joined", flush=True)
    hold = os.environ.get("STUB_TORCHRUN_HOLD")
    while hold and not os.path.exists(hold):
        time.sleep(0.1)
for local in range(args.nproc_per_node):
    rank = node * args.nproc_per_node + local
    env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(local)}
    subprocess.run(args.program, env=env, check=True)
"""


def install_stub_torchrun(cluster: Cluster, directory: str) -> str:
    """Writes the stub as ``directory``/bin/torchrun on ``cluster``; a job's PATH that finds it first."""
    stubs = cluster.host_path(directory) / "bin"
    stubs.mkdir(exist_ok=True)
    (stubs / "torchrun").write_text(STUB_TORCHRUN)
    (stubs / "torchrun").chmod(0o755)
    return f"{directory}/bin:/usr/local/bin:/usr/bin:/bin"
