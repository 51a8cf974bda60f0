"""Issue #3's polling shield: 200 clients polling ``GET /v1/jobs/{id}`` for 30 s cost slurmctld no more job
reads than 30 s of no client at all.

The broker serves job reads from its database; Slurm is asked only by the reconciler, once per Factory per
cycle, whatever the number of clients. Measured on slurmctld itself: the REQUEST_JOB_INFO and
REQUEST_JOB_INFO_SINGLE counts of ``sdiag``'s RPC-by-message-type table, read before and after each window
(differences of slurmctld's cumulative counters: the same figures as ``sdiag -r`` then ``sdiag``, without
resetting statistics other lab users may be reading).

One Factory (bravo) with the broker's default loop intervals (reconciler every 5 s), one long job running
there, then two windows of the same length on a monotonic clock: a control with 0 pollers, and one with 200
concurrent pollers. Bound: polled <= control * 1.5 + 5. The reconciler's cycles per window are fixed by time
(6 or 7 at 5 s), so the slack covers cycle phase and a health check or two, and it is independent of the number
of clients: one Slurm read per poll would be thousands. The figures go to stdout and /tmp/polling-shield.txt.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import TOKEN, job_body
from tests.api.server import lab_factories, start_server
from tests.lab import Cluster, clusters

WINDOW_S = 30.0
POLLERS = 200
RESULTS = Path("/tmp/polling-shield.txt")
JOB_READS = ("REQUEST_JOB_INFO", "REQUEST_JOB_INFO_SINGLE")
_RPC_LINE = re.compile(r"^\s*(?P<name>[A-Z][A-Z0-9_]+)\s+\(\s*\d+\)\s+count:(?P<count>\d+)")
_BY_TYPE = "Remote Procedure Call statistics by message type"


def rpc_counts(sdiag: str) -> dict[str, int]:
    """RPC counts by message type from ``sdiag``'s output (that table only: not by user, not pending)."""
    counts: dict[str, int] = {}
    inside = False
    for line in sdiag.splitlines():
        if not line.strip():
            continue
        if _BY_TYPE in line:
            inside = True
            continue
        if not inside:
            continue
        match = _RPC_LINE.match(line)
        if match is None:
            break  # the next section's header
        counts[match["name"]] = int(match["count"])
    return counts


def job_reads(cluster: Cluster) -> dict[str, int]:
    counts = rpc_counts(cluster.slurm("sdiag"))
    assert counts, "sdiag printed no RPC statistics by message type"
    return {name: counts.get(name, 0) for name in JOB_READS}


def test_rpc_counts_reads_only_the_by_type_table() -> None:
    sdiag = """*******************************************************
sdiag output at Wed Mar 11 10:00:00 2026 (1773223200)
Server thread count:  3

Remote Procedure Call statistics by message type
\tREQUEST_PARTITION_INFO                  ( 2009) count:31     ave_time:128    total_time:3991
\tREQUEST_JOB_INFO                        ( 2003) count:52     ave_time:301    total_time:15670
\tREQUEST_JOB_INFO_SINGLE                 ( 2021) count:4      ave_time:90     total_time:360

Remote Procedure Call statistics by user
\troot            (       0) count:87     ave_time:250    total_time:21750

Pending RPC statistics
\tREQUEST_JOB_INFO                        ( 2003) count:2
"""
    assert rpc_counts(sdiag) == {"REQUEST_PARTITION_INFO": 31, "REQUEST_JOB_INFO": 52, "REQUEST_JOB_INFO_SINGLE": 4}


@dataclass
class Polling:
    requests: int = 0
    not_ok: int = 0
    transport_errors: int = 0


async def _get_loop(host: str, port: int, request: bytes, deadline: float, result: Polling) -> None:
    """One poller: one kept-alive HTTP/1.1 connection, GETs back to back until ``deadline`` (monotonic)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.monotonic() < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            assert length is not None, head
            await reader.readexactly(int(length[1]))
            result.requests += 1
            if status != 200:
                result.not_ok += 1
    except (OSError, asyncio.IncompleteReadError):
        result.transport_errors += 1
    finally:
        writer.close()


async def poll(base_url: str, path: str, pollers: int, deadline: float) -> Polling:
    """``pollers`` concurrent clients, each on a connection of its own, GETting ``path`` until ``deadline``.

    Plain HTTP/1.1 over asyncio streams rather than httpx: with 200 connections in one process httpx spent more
    CPU per request than the broker (measured: the test, not the broker, was the bottleneck on 2 CPUs)."""
    url = httpx.URL(base_url)
    host, port = url.host, url.port or 80
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Accept: application/json\r\n\r\n"
    ).encode()
    result = Polling()
    await asyncio.gather(*(_get_loop(host, port, request, deadline, result) for _ in range(pollers)))
    return result


def wait_for_state(client: httpx.Client, location: str, states: set[str], timeout_s: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while (job := client.get(location).json())["state"] not in states:
        assert time.monotonic() < deadline, f"job not {states} within {timeout_s} s: {job}"
        time.sleep(0.2)  # poll interval
    result: dict[str, object] = job
    return result


@pytest.mark.lab
@pytest.mark.timeout(300)
def test_200_pollers_cost_slurmctld_no_more_job_reads_than_none(tmp_path: Path, sqlite_copy: Path) -> None:
    bravo = next(cluster for cluster in clusters() if cluster.name == "bravo")
    factories = lab_factories(tmp_path, only={"bravo"})
    env = {"CONVEYOR_RECONCILER_INTERVAL_S": "5", "CONVEYOR_DISPATCHER_INTERVAL_S": "1"}  # the broker's defaults
    server = start_server(tmp_path, sqlite_copy, factories, run_loops=True, env=env)
    try:
        server.wait_ready(timeout_s=60)
        with server.client() as client:
            body = job_body(name="polled", command=["sleep", "600"], resources={"time_limit_min": 10})
            created = client.post("/v1/jobs", json=body)
            assert created.status_code == 201, created.text
            location = created.headers["location"]
            try:
                job = wait_for_state(client, location, {"running"}, timeout_s=60)
                assert job["factory"] == "bravo"

                before = job_reads(bravo)
                control_deadline = time.monotonic() + WINDOW_S
                while (left := control_deadline - time.monotonic()) > 0:
                    time.sleep(left)  # the control window itself: 0 pollers, only the broker's loops
                control = job_reads(bravo)
                deadline = time.monotonic() + WINDOW_S
                started = time.monotonic()
                polling = asyncio.run(poll(server.base_url, location, POLLERS, deadline))
                elapsed = time.monotonic() - started
                after = job_reads(bravo)

                control_count = sum(control[n] - before[n] for n in JOB_READS)
                polled_count = sum(after[n] - control[n] for n in JOB_READS)
                bound = control_count * 1.5 + 5
                per_type = ", ".join(f"{n} {control[n] - before[n]} -> {after[n] - control[n]}" for n in JOB_READS)
                line = (
                    f"polling-shield: slurmctld job reads in {WINDOW_S:g} s: control (0 pollers) {control_count}, "
                    f"{POLLERS} pollers {polled_count} (bound {bound:g}; {per_type}); "
                    f"{polling.requests} GETs served in {elapsed:.1f} s = {polling.requests / elapsed:.0f}/s, "
                    f"{polling.not_ok} not 200, {polling.transport_errors} transport errors"
                )
                print(line)
                RESULTS.write_text(line + "\n")

                assert polling.not_ok == 0
                assert polling.transport_errors == 0
                assert polling.requests >= POLLERS, "the pollers hardly polled: the measurement shows nothing"
                assert control_count >= 1, "the reconciler did not read Slurm in the control window"
                assert polled_count <= bound, line
            finally:
                client.post(f"{location}/cancel")
                wait_for_state(client, location, {"cancelled", "completed", "failed", "timeout", "lost"}, 60)
    finally:
        server.stop()
