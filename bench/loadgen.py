"""A small HTTP/1.1 load generator, run as its own process so its CPU is not the server's.

N keep-alive connections, each sending one request after another (closed loop) for a warm-up and then for
the measured window; only answers that complete inside the window count towards the rate and the
latency percentiles. It speaks raw HTTP/1.1 over asyncio streams rather than through httpx: on a small box
the client's own cost per request must stay well below the server's, or the benchmark measures the client.

    .venv/bin/python -m bench.loadgen --url http://127.0.0.1:8000/v1/jobs --method POST --body-file job.json \\
        --header 'Authorization: Bearer T' --idempotency-prefix run1 --connections 16 --seconds 10

Prints one JSON object: count and rate of 2xx answers in the window, their p50/p99 in ms, statuses in the
window, errors (non-2xx statuses and transport failures) in the window, and ``all_statuses``: every answer
including warm-up and drain, so a caller can check that every 201 it was given is in the database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

RECONNECT_PAUSE_S = 0.05  # after a transport failure: do not spin on a dead server
CONNECT_TIMEOUT_S = 30.0


class Closed(Exception):
    """The server closed the connection, or said it would (``Connection: close``)."""


@dataclass
class Results:
    """What all connections saw; the window is [window_start, window_end) in perf_counter seconds."""

    window_start: float
    window_end: float
    latencies_s: list[float] = field(default_factory=list)
    window_statuses: Counter[str] = field(default_factory=Counter)
    all_statuses: Counter[str] = field(default_factory=Counter)

    def record(self, status: str, started: float, finished: float) -> None:
        self.all_statuses[status] += 1
        if self.window_start <= finished < self.window_end:
            self.window_statuses[status] += 1
            if status.startswith("2"):  # only successes count towards the rate and the latencies
                self.latencies_s.append(finished - started)


@dataclass(frozen=True)
class Request:
    """A request's bytes up to the per-request header, and what follows it."""

    head: bytes
    tail: bytes
    idempotency_prefix: str | None

    def encode(self, connection: int, sequence: int) -> bytes:
        if self.idempotency_prefix is None:
            return self.head + self.tail
        key = f"Idempotency-Key: {self.idempotency_prefix}-{connection}-{sequence}\r\n".encode()
        return self.head + key + self.tail


def build_request(url: str, method: str, headers: list[str], body: bytes | None, prefix: str | None) -> Request:
    parts = urlsplit(url)
    target = parts.path or "/"
    if parts.query:
        target += f"?{parts.query}"
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}", *headers]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    head = ("\r\n".join(lines) + "\r\n").encode()
    return Request(head, b"\r\n" + (body or b""), prefix)


async def read_response(reader: asyncio.StreamReader) -> int:
    """One response's status; the body is read (Content-Length or chunked) and dropped."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        raise Closed from exc
    status = int(head[9:12])
    lower = head.lower()
    length = 0
    marker = lower.find(b"\r\ncontent-length:")
    if marker >= 0:
        end = lower.index(b"\r\n", marker + 2)
        length = int(lower[marker + 17 : end])
        await reader.readexactly(length)
    elif b"\r\ntransfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    if b"\r\nconnection: close" in lower:
        raise Closed(status)
    return status


@dataclass
class Start:
    """Every connection opens first and reports in; then all start together and run until ``stop_at``."""

    connections: int
    connected: int = 0
    stop_at: float = float("inf")
    all_connected: asyncio.Event = field(default_factory=asyncio.Event)
    go: asyncio.Event = field(default_factory=asyncio.Event)

    def report_in(self) -> None:
        self.connected += 1
        if self.connected == self.connections:
            self.all_connected.set()


async def connection_loop(
    index: int, address: tuple[str, int], request: Request, start: Start, results: Results
) -> None:
    """Send requests back to back on one keep-alive connection until the deadline; reconnect if it drops."""
    sequence = 0
    host, port = address
    reader, writer = await asyncio.open_connection(host, port)
    start.report_in()
    await start.go.wait()
    try:
        while time.perf_counter() < start.stop_at:
            sequence += 1
            started = time.perf_counter()
            try:
                writer.write(request.encode(index, sequence))
                status = await read_response(reader)
            except Closed as closed:
                # An answer that came with Connection: close counts as that answer; then reconnect.
                results.record(str(closed.args[0]) if closed.args else "closed", started, time.perf_counter())
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            except OSError as exc:
                results.record(type(exc).__name__, started, time.perf_counter())
                writer.close()
                await asyncio.sleep(RECONNECT_PAUSE_S)
                reader, writer = await asyncio.open_connection(host, port)
                continue
            results.record(str(status), started, time.perf_counter())
    finally:
        writer.close()


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (no interpolation: a p99 is a latency some request really had)."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, math.ceil(fraction * len(sorted_values)) - 1))
    return sorted_values[rank]


async def run(args: argparse.Namespace, request: Request) -> dict[str, object]:
    parts = urlsplit(args.url)
    address = (parts.hostname or "127.0.0.1", parts.port or 80)
    results = Results(0.0, 0.0)
    start = Start(args.connections)
    tasks = [asyncio.create_task(connection_loop(i, address, request, start, results)) for i in range(args.connections)]
    connecting = asyncio.ensure_future(start.all_connected.wait())
    await asyncio.wait([connecting, *tasks], timeout=CONNECT_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
    if not start.all_connected.is_set():  # a connection failed or hangs: report it rather than wait forever
        for task in tasks:
            task.cancel()
        connecting.cancel()
        failed = [repr(task.exception()) for task in tasks if task.done() and not task.cancelled() and task.exception()]
        raise SystemExit(f"only {start.connected} of {args.connections} connections opened: {failed[:3]}")
    began = time.perf_counter()
    results.window_start = began + args.warmup
    results.window_end = results.window_start + args.seconds
    start.stop_at = results.window_end
    start.go.set()
    await asyncio.gather(*tasks)
    latencies = sorted(results.latencies_s)
    count = sum(n for status, n in results.window_statuses.items() if status.startswith("2"))
    errors = {status: n for status, n in results.window_statuses.items() if not status.startswith("2")}
    return {
        "label": args.label,
        "connections": args.connections,
        "seconds": args.seconds,
        "count": count,
        "rate": count / args.seconds,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "statuses": dict(results.window_statuses),
        "errors": errors,
        "all_statuses": dict(results.all_statuses),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    parser.add_argument("--body-file", help="the JSON body to send (POST)")
    parser.add_argument("--idempotency-prefix", help="send a unique Idempotency-Key per request with this prefix")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    body = Path(args.body_file).read_bytes() if args.body_file else None
    request = build_request(args.url, args.method, args.header, body, args.idempotency_prefix)
    print(json.dumps(asyncio.run(run(args, request))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
