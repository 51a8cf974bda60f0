"""A proxy between an agent and its broker that the test steers: cut the link, drop some requests, hold a
response until a condition holds.

It speaks just enough HTTP/1.1 for the agent link (each request and answer carries Content-Length, as httpx
and uvicorn send them): each request the agent sends on a client connection is read whole, passed to
``drop_request`` (True: the connection is closed without an answer, as a broken link does), forwarded on an
upstream connection of its own, and its answer read whole and passed to ``on_answer`` (which may wait before
the answer goes on). :meth:`cut` closes every connection and closes each new one at once until
:meth:`restore`. It runs its own event loop in a thread, so sync and async tests alike can steer it; the
hooks run in that loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

LISTEN = "127.0.0.1"
HEAD_LIMIT = 64 * 1024


@dataclass(frozen=True)
class Exchange:
    """One request the agent sent and the broker's answer to it."""

    method: str
    path: str
    request_body: bytes
    status: int
    answer_body: bytes


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
        if name.strip().lower() == b"transfer-encoding":
            raise ValueError(f"the link proxy reads only Content-Length bodies, not {line!r}")
    return 0


async def _read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """One HTTP message's head and body; None at a clean end of stream."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        return None
    body = await reader.readexactly(_content_length(head)) if _content_length(head) else b""
    return head, body


class LinkProxy:
    """One listening port on 127.0.0.1 forwarding to the broker's port; see the module docstring."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.is_cut = False
        self.drop_request: Callable[[str, str], bool] = lambda method, path: False
        self.on_answer: Callable[[Exchange], Awaitable[None]] | None = None
        self.requests: collections.Counter[str] = collections.Counter()  # path kind -> forwarded
        self.dropped: collections.Counter[str] = collections.Counter()
        self.refused = 0  # connections closed at once while cut
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="link-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def base_url(self) -> str:
        return f"http://{LISTEN}:{self.port}"

    def start(self) -> None:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(asyncio.start_server(self._accept, LISTEN, 0),
                                                        self._loop).result(10)  # fmt: skip
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    def cut(self) -> None:
        """Break every open connection; every new one is closed at once until :meth:`restore`."""

        async def cut() -> None:
            self.is_cut = True
            for writer in list(self._clients):
                writer.transport.abort()

        asyncio.run_coroutine_threadsafe(cut(), self._loop).result(10)

    def restore(self) -> None:
        self.is_cut = False

    def _broken(self) -> bool:
        """Whether the link is cut now (a method: it changes while a request waits)."""
        return self.is_cut

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self.is_cut:
            self.refused += 1
            writer.transport.abort()
            return
        self._tasks.add(task)
        self._clients.add(writer)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while (request := await _read_message(reader)) is not None:
                head, body = request
                method, path = head.split(b" ", 2)[:2]
                exchange = await self._forward(upstream, method.decode(), path.decode(), head, body)
                if exchange is None:  # dropped, or the broker broke the connection: so does the proxy
                    return
                upstream, status_head, answer = exchange
                if self._broken():
                    return
                writer.write(status_head + answer.answer_body)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            self._clients.discard(writer)
            writer.transport.abort()
            if upstream is not None:
                upstream[1].transport.abort()
            self._tasks.discard(task)

    async def _forward(
        self,
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None,
        method: str,
        path: str,
        head: bytes,
        body: bytes,
    ) -> tuple[tuple[asyncio.StreamReader, asyncio.StreamWriter], bytes, Exchange] | None:
        kind = path.rstrip("/").rsplit("/", 1)[-1]
        if self.is_cut or self.drop_request(method, path):
            self.dropped[kind] += 1
            return None
        if upstream is None:
            upstream = await asyncio.open_connection(LISTEN, self.upstream_port)
        upstream[1].write(head + body)
        await upstream[1].drain()
        answer = await _read_message(upstream[0])
        if answer is None:
            return None
        self.requests[kind] += 1
        answer_head, answer_body = answer
        exchange = Exchange(method, path, body, int(answer_head.split(b" ", 2)[1]), answer_body)
        if self.on_answer is not None:
            await self.on_answer(exchange)
        return upstream, answer_head, exchange


@contextlib.contextmanager
def running(proxy: LinkProxy) -> Iterator[LinkProxy]:
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
