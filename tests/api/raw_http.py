"""A minimal HTTP/1.1 client over a plain socket, for requests no ordinary client sends: heads beyond every
limit, 100 MB bodies, chunked framing written by hand.

It behaves as a careful client does: it stops sending as soon as an answer is waiting (a server may refuse a
request before reading all of it), then reads that answer. It reports how much of the body went out, so a test
can tell a refusal made while reading from one made after reading everything.
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

PIECE = 64 * 1024  # how much is sent between two looks for an early answer


@dataclass(frozen=True)
class Answer:
    """A response as received: status, headers (names lower-cased; the last of a repeated name wins), body."""

    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Exchange:
    """One request's outcome: the answer (None when none could be read, ``error`` says why) and how many body
    bytes were handed to the socket before the client stopped sending."""

    answer: Answer | None
    body_bytes_sent: int
    error: str | None = None


def pieces(data: bytes, size: int = PIECE) -> Iterator[bytes]:
    """``data`` in slices of at most ``size`` bytes."""
    view = memoryview(data)
    for start in range(0, len(data), size):
        yield bytes(view[start : start + size])


def chunked(body: Iterable[bytes]) -> Iterator[bytes]:
    """``body`` in HTTP/1.1 chunked framing, ending with the last (empty) chunk."""
    for piece in body:
        yield b"%x\r\n%s\r\n" % (len(piece), piece)
    yield b"0\r\n\r\n"


def exchange(
    port: int, head: bytes, body: Iterable[bytes] = (), *, stop: threading.Event | None = None, timeout_s: float = 60
) -> Exchange:
    """Send ``head`` then ``body`` to 127.0.0.1:``port`` until an answer waits, everything is sent or the server
    closes; then read the answer. Once ``stop`` is set, give up without an answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sent = 0
        try:
            for piece in pieces(head):
                if _answer_waiting(sock):
                    break
                sock.sendall(piece)
            else:
                for piece in body:
                    if stop is not None and stop.is_set():
                        return Exchange(None, sent, "stopped before the request was complete")
                    if _answer_waiting(sock):
                        break
                    sock.sendall(piece)
                    sent += len(piece)
        except OSError:
            pass  # the server closed while the request was being sent: its answer may still be readable
        return _read_answer(sock, sent)


def _answer_waiting(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


def _read_answer(sock: socket.socket, sent: int) -> Exchange:
    data = bytearray()
    closed, error = False, None
    while True:
        answer = _parse(bytes(data), closed=closed)
        if answer is not None:
            return Exchange(answer, sent)
        if closed:
            return Exchange(None, sent, f"{error or 'closed'} after {len(data)} bytes: {bytes(data[:200])!r}")
        try:
            chunk = sock.recv(PIECE)
        except OSError as exc:
            chunk, error = b"", repr(exc)
        closed = not chunk
        data += chunk


def _parse(data: bytes, *, closed: bool) -> Answer | None:
    """The answer in ``data`` once it is complete, else None. Its body is framed by Content-Length, chunked
    encoding, or else by the end of the connection (``closed``)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    status_line, *lines = data[:end].decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    status, rest = int(status_line.split()[1]), data[end + 4 :]
    if "content-length" in headers:
        length = int(headers["content-length"])
        return Answer(status, headers, rest[:length]) if len(rest) >= length else None
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _unchunked(rest)
        return None if body is None else Answer(status, headers, body)
    return Answer(status, headers, rest) if closed else None


def _unchunked(data: bytes) -> bytes | None:
    """The body of complete chunked framing in ``data``, or None while its last chunk has not arrived."""
    body, at = bytearray(), 0
    while (line_end := data.find(b"\r\n", at)) >= 0:
        size = int(data[at:line_end].split(b";")[0], 16)
        if size == 0:
            return bytes(body)
        body += data[line_end + 2 : line_end + 2 + size]
        at = line_end + 2 + size + 2
    return None
