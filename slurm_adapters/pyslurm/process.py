"""One pyslurm worker process as its parent sees it: spawn, handshake, one request at a time, kill.

Knows the protocol (:mod:`slurm_adapters.pyslurm.protocol`) and nothing about pyslurm. Everything that
goes wrong with the process itself (it could not start, it died, it wrote something that is not protocol)
is a :class:`WorkerFailed`; a typed error the worker *answered* is raised as that error and leaves the
worker usable. Deadlines are the caller's: it wraps calls in ``asyncio.timeout`` and calls :meth:`kill`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Mapping, Sequence
from typing import Any

from slurm_adapters.codec import ProtocolError
from slurm_adapters.pyslurm.protocol import (
    MAX_LINE_BYTES,
    PROTOCOL,
    Hello,
    decode_response,
    encode_request,
    hello_from_json,
)

STDERR_TAIL_BYTES = 4096
# How long a killed (or closed) worker gets to be reaped before the parent stops waiting for it.
REAP_TIMEOUT_S = 1.0


class WorkerFailed(Exception):
    """The worker process failed as a process. ``sent``: the current request had been written to it."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


class WorkerProcess:
    """A spawned worker. Use :meth:`spawn`, then :meth:`handshake`, then :meth:`request` repeatedly."""

    def __init__(self, proc: asyncio.subprocess.Process, *, cluster: str | None = None) -> None:
        self.proc = proc
        self.cluster = cluster
        self.hello: Hello | None = None
        self.sent = False  # the request in progress has been written
        self._stderr = bytearray()
        self._drain = asyncio.ensure_future(self._drain_stderr())

    @classmethod
    async def spawn(cls, argv: Sequence[str], env: Mapping[str, str], *, cluster: str | None = None) -> WorkerProcess:
        """Start the process: its own session (no terminal signals reach it), ``/`` as its directory."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=dict(env),
                cwd="/",
                start_new_session=True,
                limit=MAX_LINE_BYTES,
            )
        except OSError as error:
            raise WorkerFailed(f"cannot start {argv[0]!r}: {error}", sent=False) from error
        return cls(proc, cluster=cluster)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def handshake(self) -> Hello:
        """Read the worker's first line. A worker that could not load pyslurm answers its typed error."""
        greeting = await self._read_response("its greeting")
        try:
            hello = hello_from_json(greeting)
        except ProtocolError as error:
            raise WorkerFailed(f"sent a malformed greeting: {error}", sent=False) from error
        if hello.protocol != PROTOCOL:
            raise WorkerFailed(f"speaks protocol {hello.protocol}, this adapter {PROTOCOL}", sent=False)
        self.hello = hello
        return hello

    async def request(self, op: str, args: Mapping[str, Any] | None = None) -> Any:
        """Send one request and return its result (JSON data); raise the typed error it answers with."""
        assert self.proc.stdin is not None
        self.sent = False
        try:
            self.proc.stdin.write(encode_request(op, args))
            await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as error:
            await self._reap()
            raise WorkerFailed(f"is gone ({describe_exit(self.proc.returncode)}) before {op}", sent=False) from error
        self.sent = True
        result = await self._read_response(f"the answer to {op}")
        self.sent = False
        return result

    async def _read_response(self, what: str) -> Any:
        assert self.proc.stdout is not None
        try:
            line = await self.proc.stdout.readline()
        except ValueError as error:  # over MAX_LINE_BYTES without a newline
            raise WorkerFailed(f"sent more than {MAX_LINE_BYTES} bytes as {what}", sent=self.sent) from error
        if not line:
            await self._reap()
            raise WorkerFailed(f"{describe_exit(self.proc.returncode)} instead of sending {what}", sent=self.sent)
        try:
            return decode_response(line, cluster=self.cluster)
        except ProtocolError as error:
            raise WorkerFailed(f"sent garbage as {what}: {error}", sent=self.sent) from error

    # -- ending it -----------------------------------------------------------------------------------

    async def kill(self) -> None:
        """SIGKILL by pid, then reap (briefly: a process stuck in the kernel is left to the event loop)."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await self._reap()
        self._close_stdin()

    async def close(self, grace_s: float = 2.0) -> None:
        """End of input: the worker finishes its current call and exits; killed after ``grace_s``."""
        self._close_stdin()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.proc.wait()), grace_s)
        await self.kill()

    def _close_stdin(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()

    async def _reap(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.proc.wait()), REAP_TIMEOUT_S)
        if self.proc.returncode is not None:
            # The pipe's end is near: let the drain read the last words, then stop it either way.
            if not self._drain.done():
                await asyncio.wait({self._drain}, timeout=REAP_TIMEOUT_S)
            self._drain.cancel()

    # -- stderr --------------------------------------------------------------------------------------

    async def _drain_stderr(self) -> None:
        """Keep reading stderr (a full pipe would block the worker) and keep its last few KiB."""
        assert self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(65536):
            self._stderr += chunk
            del self._stderr[:-STDERR_TAIL_BYTES]

    def stderr_tail(self, lines: int = 10) -> list[str]:
        text = self._stderr.decode("utf-8", errors="replace")
        return [line for line in text.splitlines() if line.strip()][-lines:]
