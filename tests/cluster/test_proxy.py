"""The round-robin proxy alone (no broker, no lab): connections in turn, a dead backend skipped, bytes intact."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from tests.cluster.harness import RoundRobinProxy


class _Named(socketserver.BaseRequestHandler):
    """Answers each connection with the server's name and then the bytes it was sent, until the client ends."""

    def handle(self) -> None:
        assert isinstance(self.server, _Backend)
        self.request.sendall(self.server.name + b":")
        while data := self.request.recv(65536):
            self.request.sendall(data)


class _Backend(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, name: bytes) -> None:
        super().__init__(("127.0.0.1", 0), _Named)
        self.name = name
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        port: int = self.server_address[1]
        return port

    def close(self) -> None:
        self.shutdown()
        self.server_close()


@pytest.fixture
def backends() -> Iterator[list[_Backend]]:
    made = [_Backend(name) for name in (b"a", b"b", b"c")]
    yield made
    for backend in made:
        backend.close()


def _exchange(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while data := sock.recv(65536):
            received += data
        return received


def test_connections_go_round_robin_and_skip_a_dead_backend(backends: list[_Backend]) -> None:
    proxy = RoundRobinProxy([backend.port for backend in backends])
    proxy.start()
    try:
        payload = bytes(range(256)) * 1024  # 256 KiB each way
        answered = [_exchange(proxy.port, payload) for _ in range(6)]
        assert [answer[:2] for answer in answered] == [b"a:", b"b:", b"c:", b"a:", b"b:", b"c:"]
        assert all(answer[2:] == payload for answer in answered)
        dead = backends[1].port
        backends[1].close()
        assert [_exchange(proxy.port, b"x")[:2] for _ in range(4)] == [b"a:", b"c:", b"a:", b"c:"]
        assert proxy.refused[dead] == 2
        assert proxy.connections == {backends[0].port: 4, dead: 2, backends[2].port: 4}
    finally:
        proxy.stop()
