"""Several broker processes on one PostgreSQL database behind one address, as a replicated deployment runs.

``N`` API processes (``python -m app`` with ``CONVEYOR_RUN_LOOPS=false``: they accept, list and cancel, and
never call Slurm) and ``M`` loop processes (the same program with its loops on: dispatcher, reconciler,
health) share one database. Clients reach the API processes only through :class:`RoundRobinProxy`, a TCP
proxy on 127.0.0.1 that hands each new connection to the next API process in turn (whole connections, as an
L4 load balancer does; one that cannot be connected to is skipped, as a balancer's health check would). The
loop processes serve HTTP too, on ports of their own that the proxy does not use.

Every process is a :class:`tests.faults.harness.BrokerProcess` (dev mode, one static token), started and
ended by its PID; which process answered what is in its own log (uvicorn's access lines), and the proxy
counts the connections it gave each backend. For the next issues' tests (an agent, live streams, replicas).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from broker.secret_box import write_key_file
from tests.faults.harness import TOKEN, BrokerProcess

LISTEN = "127.0.0.1"
_ANSWER = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3})')


class RoundRobinProxy:
    """One listening port on 127.0.0.1; each accepted connection is piped to the next backend in turn.

    It runs its own event loop in a thread, so sync and async tests alike can use it. A backend that refuses
    the connection is skipped (counted in ``refused``) and the next one tried; a connection already piped to
    a backend that dies breaks, as it would behind a real balancer.
    """

    def __init__(self, backends: Sequence[int]) -> None:
        assert backends, "a proxy needs at least one backend"
        self.backends = list(backends)  # ports on 127.0.0.1
        self.connections: collections.Counter[int] = collections.Counter()  # per backend port
        self.refused: collections.Counter[int] = collections.Counter()
        self.port = 0
        self._turn = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="round-robin-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def base_url(self) -> str:
        return f"http://{LISTEN}:{self.port}"

    def start(self) -> None:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(self._accept, LISTEN, 0)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    def _next_backend(self) -> int:
        port = self.backends[self._turn % len(self.backends)]
        self._turn += 1
        return port

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        try:
            for _ in range(len(self.backends)):
                port = self._next_backend()
                try:
                    upstream_reader, upstream_writer = await asyncio.open_connection(LISTEN, port)
                except OSError:
                    self.refused[port] += 1
                    continue
                self.connections[port] += 1
                try:
                    await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))
                finally:
                    upstream_writer.close()
                return
        finally:
            client_writer.close()
            self._pipes.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until end of stream, then pass the end on; a broken side closes the other at once."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:  # a reset, a broken pipe: the far side is gone
        writer.close()


def answers(process: BrokerProcess, method: str, path_prefix: str) -> collections.Counter[int]:
    """The statuses this process answered to ``method`` on paths starting with ``path_prefix`` (its access log,
    every incarnation)."""
    counts: collections.Counter[int] = collections.Counter()
    for log in process.logs:
        text = log.read_text(errors="replace") if log.exists() else ""
        for match in _ANSWER.finditer(text):
            if match["method"] == method and match["path"].startswith(path_prefix):
                counts[int(match["status"])] += 1
    return counts


@dataclass
class BrokerCluster:
    """``api`` and ``loops`` processes on one database, the API ones behind ``proxy``."""

    api: list[BrokerProcess]
    loops: list[BrokerProcess]
    proxy: RoundRobinProxy | None = None
    killed: list[BrokerProcess] = field(default_factory=list)

    @property
    def processes(self) -> list[BrokerProcess]:
        return [*self.api, *self.loops]

    @property
    def base_url(self) -> str:
        assert self.proxy is not None, "the cluster was never started"
        return self.proxy.base_url

    def start(self, ready_timeout_s: float = 90.0) -> None:
        """Launch every process at once, wait until each says ready, then open the proxy."""
        for process in self.processes:
            process.launch()
        for process in self.processes:
            process.wait_ready(ready_timeout_s)
        self.proxy = RoundRobinProxy([process.port for process in self.api])
        self.proxy.start()

    def stop(self) -> None:
        """The proxy, then every process by its PID (SIGTERM, SIGKILL if it does not end in time)."""
        try:
            if self.proxy is not None:
                self.proxy.stop()
        finally:
            for process in self.processes:
                process.stop()

    def kill(self, process: BrokerProcess) -> int:
        """SIGKILL one process by its PID (a crash); returns its exit status."""
        self.killed.append(process)
        return process.kill()

    def client(self, *, timeout_s: float = 10.0, new_connection_per_request: bool = False) -> httpx.AsyncClient:
        """A client of the proxy with the dev token; ``new_connection_per_request`` spreads every request
        round robin (a kept-alive connection stays on one API process)."""
        kwargs: dict[str, Any] = {}
        if new_connection_per_request:
            kwargs["limits"] = httpx.Limits(max_keepalive_connections=0)
        return httpx.AsyncClient(
            base_url=self.base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=timeout_s, **kwargs
        )

    def log_tail(self, chars: int = 2000) -> str:
        return "\n".join(f"=== {process.base_url} ===\n{process.log_tail(chars)}" for process in self.processes)


@contextlib.contextmanager
def broker_cluster(
    workdir: Path, database_url: str, factories_file: Path, *, api: int, loops: int, env: dict[str, str] | None = None
) -> Iterator[BrokerCluster]:
    """``api`` API processes and ``loops`` loop processes on ``database_url`` (already migrated), started and
    behind a proxy; every process ended by its PID at the end. They share one secrets key file, as replicas must
    (a job sealed by one is unsealed by another)."""
    assert api >= 1, "a cluster needs an API process"
    assert loops >= 0
    key_file = workdir / "secrets-key"
    write_key_file(key_file)
    shared = {"CONVEYOR_SECRETS_KEY_FILE": str(key_file), **(env or {})}

    def process(name: str, run_loops: bool) -> BrokerProcess:
        directory = workdir / name
        directory.mkdir(parents=True)
        return BrokerProcess(directory, database_url, factories_file, run_loops=run_loops, extra_env=dict(shared))

    cluster = BrokerCluster(
        api=[process(f"api-{index}", False) for index in range(api)],
        loops=[process(f"loops-{index}", True) for index in range(loops)],
    )
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
