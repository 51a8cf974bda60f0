"""``Client`` and ``AsyncClient``: the same operations (:mod:`conveyor.calls`), driven by blocking or async I/O.

::

    from conveyor import Client, JobSpec

    with Client() as conveyor:                      # CONVEYOR_URL / CONVEYOR_TOKEN, or a profile
        job = conveyor.submit(JobSpec(name="hello", project="EHPC-AIF-2026PG01-1147", command=["hostname"]))
        job.wait(timeout=600)                         # polls with capped backoff
        print(job.state, job.output().content)

Every submit carries an Idempotency-Key (fresh unless given), so the automatic retries (429, 502-504 and
connection errors, honouring Retry-After) can never submit a job twice. Error answers raise the typed
exceptions of :mod:`conveyor.problems`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from conveyor import calls
from conveyor.calls import Backoff, Call, Flow, Pause, RetryPolicy
from conveyor.config import Connection, resolve
from conveyor.models import DryRun, FactoryView, Job, JobEvent, JobOutput, JobOutputChunk, Me, NewToken, TokenView
from conveyor.spec import TERMINAL_STATES, JobSpec, JobState

T = TypeVar("T")
SpecLike = JobSpec | Mapping[str, Any]
USER_AGENT = "conveyor-sdk/0.1"


class _Base:
    def __init__(
        self, *, url: str | None, token: str | None, profile: str | None, retry: RetryPolicy | None,
        backoff: Backoff | None,
    ) -> None:  # fmt: skip
        self.connection: Connection = resolve(url=url, token=token, profile=profile)
        self.retry = retry or RetryPolicy()
        self.backoff = backoff or Backoff()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.connection.token}", "User-Agent": USER_AGENT,
                "Accept": "application/json"}  # fmt: skip


class Client(_Base):
    """The blocking client. ``url``/``token``/``profile`` override ``CONVEYOR_URL``/``CONVEYOR_TOKEN``/
    ``CONVEYOR_PROFILE`` and the config file (:mod:`conveyor.config`)."""

    def __init__(
        self, url: str | None = None, *, token: str | None = None, profile: str | None = None,
        timeout_s: float = 30.0, retry: RetryPolicy | None = None, backoff: Backoff | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:  # fmt: skip
        super().__init__(url=url, token=token, profile=profile, retry=retry, backoff=backoff)
        self._http = httpx.Client(base_url=self.connection.url, headers=self._headers(), timeout=timeout_s,
                                  transport=transport)  # fmt: skip
        self.jobs = Jobs(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def run(self, flow: Flow[T]) -> T:
        """Drive one flow to its result (the one place the blocking client does I/O)."""
        answer: httpx.Response | None = None
        try:
            while True:
                step = flow.send(answer)
                if isinstance(step, Pause):
                    time.sleep(step.seconds)
                    answer = None
                else:
                    answer = self._send(step)
        except StopIteration as done:
            result: T = done.value
            return result

    def _send(self, call: Call) -> httpx.Response:
        for attempt in itertools.count(1):
            response, error = None, None
            try:
                response = self._http.request(call.method, call.path, params=call.params, json=call.json,
                                              headers=dict(call.headers))  # fmt: skip
            except httpx.TransportError as exc:
                error = exc
            delay = calls.next_delay(self.retry, attempt, response, error)
            if delay is None and response is not None:
                return response
            time.sleep(delay or 0)
        raise AssertionError("unreachable")

    # --- operations -------------------------------------------------------------------------------------

    def submit(self, spec: SpecLike, *, idempotency_key: str | None = None) -> RemoteJob:
        return RemoteJob(self, self.run(calls.submit(spec, idempotency_key)))

    def dry_run(self, spec: SpecLike) -> DryRun:
        return self.run(calls.dry_run(spec))

    def job(self, job_id: str) -> RemoteJob:
        """Attach to an existing job by id."""
        return RemoteJob(self, self.run(calls.get_job(job_id)))

    def factories(self) -> list[FactoryView]:
        return self.run(calls.factories())

    def me(self) -> Me:
        return self.run(calls.me())

    def tokens(self) -> list[TokenView]:
        return self.run(calls.tokens())

    def create_token(
        self, name: str, scopes: Collection[str] = ("read", "submit"), days: int | None = None
    ) -> NewToken:
        return self.run(calls.create_token(name, scopes, days))

    def revoke_token(self, token_id: str) -> TokenView:
        return self.run(calls.revoke_token(token_id))


class Jobs:
    """``client.jobs``: listing across pages, and the per-job calls by id."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self, *, page_size: int = 100, **filters: Any) -> Iterator[Job]:
        """Every job you may see, newest first, page after page (filters: state, factory, project, label)."""
        cursor = None
        while True:
            page = self._client.run(calls.job_page(cursor, page_size=page_size, **filters))
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def events(self, job_id: str, *, after: int | None = None) -> Iterator[JobEvent]:
        """The job's history, oldest first, from after event ``after`` (resume a stream with the last id)."""
        cursor = None
        while True:
            page = self._client.run(calls.event_page(job_id, cursor, after=after))
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor


class RemoteJob:
    """A job at the broker: ``info`` is how it was last seen; the methods ask the broker again."""

    def __init__(self, client: Client, info: Job) -> None:
        self._client = client
        self.info = info

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def state(self) -> JobState:
        return self.info.state

    def refresh(self) -> Job:
        self.info = self._client.run(calls.get_job(self.id))
        return self.info

    def wait(
        self, until: Collection[JobState | str] = TERMINAL_STATES, timeout: float | None = None,
        on_poll: Callable[[Job], None] | None = None,
    ) -> Job:  # fmt: skip
        """Until the state is in ``until`` (or the job ended); :class:`calls.WaitTimeout` after ``timeout`` s."""
        self.info = self._client.run(calls.wait(self.id, until, timeout, backoff=self._client.backoff,
                                                on_poll=on_poll))  # fmt: skip
        return self.info

    def cancel(self) -> Job:
        self.info = self._client.run(calls.cancel(self.id))
        return self.info

    def events(self, *, after: int | None = None) -> Iterator[JobEvent]:
        return self._client.jobs.events(self.id, after=after)

    def output(self, stream: str = "stdout", max_bytes: int | None = None) -> JobOutput:
        return self._client.run(calls.output(self.id, stream, max_bytes))

    def output_chunk(self, offset: int, stream: str = "stdout", max_bytes: int | None = None) -> JobOutputChunk:
        """The stream's bytes from ``offset``; the next chunk starts at ``offset + len(chunk.data)``."""
        return self._client.run(calls.output_chunk(self.id, offset, stream, max_bytes))

    def __repr__(self) -> str:
        return f"<RemoteJob {self.id} {self.state.value}>"


class AsyncClient(_Base):
    """The asyncio client: the same operations as :class:`Client`, awaited."""

    def __init__(
        self, url: str | None = None, *, token: str | None = None, profile: str | None = None,
        timeout_s: float = 30.0, retry: RetryPolicy | None = None, backoff: Backoff | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:  # fmt: skip
        super().__init__(url=url, token=token, profile=profile, retry=retry, backoff=backoff)
        self._http = httpx.AsyncClient(base_url=self.connection.url, headers=self._headers(), timeout=timeout_s,
                                       transport=transport)  # fmt: skip
        self.jobs = AsyncJobs(self)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def run(self, flow: Flow[T]) -> T:
        """Drive one flow to its result (the one place the async client does I/O)."""
        answer: httpx.Response | None = None
        try:
            while True:
                step = flow.send(answer)
                if isinstance(step, Pause):
                    await asyncio.sleep(step.seconds)
                    answer = None
                else:
                    answer = await self._send(step)
        except StopIteration as done:
            result: T = done.value
            return result

    async def _send(self, call: Call) -> httpx.Response:
        for attempt in itertools.count(1):
            response, error = None, None
            try:
                response = await self._http.request(call.method, call.path, params=call.params, json=call.json,
                                                    headers=dict(call.headers))  # fmt: skip
            except httpx.TransportError as exc:
                error = exc
            delay = calls.next_delay(self.retry, attempt, response, error)
            if delay is None and response is not None:
                return response
            await asyncio.sleep(delay or 0)
        raise AssertionError("unreachable")

    async def submit(self, spec: SpecLike, *, idempotency_key: str | None = None) -> AsyncRemoteJob:
        return AsyncRemoteJob(self, await self.run(calls.submit(spec, idempotency_key)))

    async def dry_run(self, spec: SpecLike) -> DryRun:
        return await self.run(calls.dry_run(spec))

    async def job(self, job_id: str) -> AsyncRemoteJob:
        return AsyncRemoteJob(self, await self.run(calls.get_job(job_id)))

    async def factories(self) -> list[FactoryView]:
        return await self.run(calls.factories())

    async def me(self) -> Me:
        return await self.run(calls.me())

    async def tokens(self) -> list[TokenView]:
        return await self.run(calls.tokens())

    async def create_token(
        self, name: str, scopes: Collection[str] = ("read", "submit"), days: int | None = None
    ) -> NewToken:
        return await self.run(calls.create_token(name, scopes, days))

    async def revoke_token(self, token_id: str) -> TokenView:
        return await self.run(calls.revoke_token(token_id))


class AsyncJobs:
    """``client.jobs`` of the async client."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self, *, page_size: int = 100, **filters: Any) -> AsyncIterator[Job]:
        cursor = None
        while True:
            page = await self._client.run(calls.job_page(cursor, page_size=page_size, **filters))
            for job in page.items:
                yield job
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def events(self, job_id: str, *, after: int | None = None) -> AsyncIterator[JobEvent]:
        cursor = None
        while True:
            page = await self._client.run(calls.event_page(job_id, cursor, after=after))
            for event in page.items:
                yield event
            if page.next_cursor is None:
                return
            cursor = page.next_cursor


class AsyncRemoteJob:
    """A job at the broker, for the async client (see :class:`RemoteJob`)."""

    def __init__(self, client: AsyncClient, info: Job) -> None:
        self._client = client
        self.info = info

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def state(self) -> JobState:
        return self.info.state

    async def refresh(self) -> Job:
        self.info = await self._client.run(calls.get_job(self.id))
        return self.info

    async def wait(
        self, until: Collection[JobState | str] = TERMINAL_STATES,
        timeout: float | None = None,  # noqa: ASYNC109 - the documented signature, as the blocking client's
        on_poll: Callable[[Job], None] | None = None,
    ) -> Job:  # fmt: skip
        self.info = await self._client.run(calls.wait(self.id, until, timeout, backoff=self._client.backoff,
                                                      on_poll=on_poll))  # fmt: skip
        return self.info

    async def cancel(self) -> Job:
        self.info = await self._client.run(calls.cancel(self.id))
        return self.info

    def events(self, *, after: int | None = None) -> AsyncIterator[JobEvent]:
        return self._client.jobs.events(self.id, after=after)

    async def output(self, stream: str = "stdout", max_bytes: int | None = None) -> JobOutput:
        return await self._client.run(calls.output(self.id, stream, max_bytes))

    async def output_chunk(self, offset: int, stream: str = "stdout", max_bytes: int | None = None) -> JobOutputChunk:
        """The stream's bytes from ``offset``; the next chunk starts at ``offset + len(chunk.data)``."""
        return await self._client.run(calls.output_chunk(self.id, offset, stream, max_bytes))

    def __repr__(self) -> str:
        return f"<AsyncRemoteJob {self.id} {self.state.value}>"


__all__ = ["AsyncClient", "AsyncRemoteJob", "Client", "RemoteJob"]
