"""What every SDK operation asks of the broker and how it reads the answer, written once for both clients.

Each operation is a *flow*: a generator that yields :class:`Call` (send this request, give me the answer) or
:class:`Pause` (wait this long) and returns its result. :class:`conveyor.client.Client` drives flows with
httpx's blocking client and ``time.sleep``; :class:`conveyor.client.AsyncClient` with httpx's async client
and ``asyncio.sleep``. So the two clients cannot disagree on a path, a parameter, a retry or a parse: only
the two ten-line drivers differ.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
import uuid
from collections.abc import Callable, Collection, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from conveyor.models import (
    DryRun,
    EventList,
    FactoryView,
    Job,
    JobList,
    JobOutput,
    JobOutputChunk,
    Me,
    NewToken,
    TokenView,
)
from conveyor.problems import PROBLEM_MEDIA_TYPE, ConveyorError, Problem, error_from_problem
from conveyor.spec import TERMINAL_STATES, JobSpec, JobState

T = TypeVar("T")
ModelT = TypeVar("ModelT", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP request of a flow; the driver answers it with the final :class:`httpx.Response` (after
    retries), or raises the typed error of a problem answer."""

    method: str
    path: str
    params: Mapping[str, Any] | None = None
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Pause:
    """Wait ``seconds`` before the flow goes on (between polls of :func:`wait`)."""

    seconds: float


Step = Call | Pause
Flow = Generator[Step, httpx.Response | None, T]


class WaitTimeout(TimeoutError):
    """The job did not reach the wanted states in time; ``job`` is how it was last seen."""

    def __init__(self, job: Job, until: Collection[JobState], timeout_s: float) -> None:
        wanted = ", ".join(sorted(state.value for state in until))
        super().__init__(f"job {job.id} is {job.state.value} after {timeout_s:g} s (waiting for: {wanted})")
        self.job = job


# --- retries --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Which failures are tried again, and after how long.

    429 and 503 (and 502/504 from a proxy in front) honour the broker's Retry-After, capped at ``cap_s``;
    connection errors back off exponentially from ``base_s`` with full jitter. Every request is safe to
    repeat: reads are, a submit carries its Idempotency-Key (the broker answers the same job again), and a
    cancel only records an intent.
    """

    attempts: int = 6  # tries in all, the first one included
    base_s: float = 0.5
    cap_s: float = 30.0
    statuses: frozenset[int] = frozenset({429, 502, 503, 504})

    def delay_s(self, attempt: int, retry_after_s: float | None) -> float:
        """How long to wait before try ``attempt + 1`` (``attempt`` counts from 1)."""
        if retry_after_s is not None:
            return min(max(retry_after_s, 0.0), self.cap_s)
        return random.uniform(0, min(self.cap_s, self.base_s * 2 ** (attempt - 1)))  # noqa: S311 - jitter, not crypto


def next_delay(
    policy: RetryPolicy, attempt: int, response: httpx.Response | None, error: httpx.TransportError | None
) -> float | None:
    """After try ``attempt``: None when ``response`` is the answer, else the seconds to wait before the next
    try. Raises the typed error of an answer not worth another try, or ``error`` once tries are used up."""
    last = attempt >= policy.attempts
    if error is not None:
        if last or isinstance(error, httpx.UnsupportedProtocol):
            raise error
        return policy.delay_s(attempt, None)
    assert response is not None
    if response.is_success:
        return None
    if last or response.status_code not in policy.statuses:
        raise error_of(response)
    return policy.delay_s(attempt, retry_after_s(response))


def retry_after_s(response: httpx.Response, now: Callable[[], float] = time.time) -> float | None:
    """The answer's Retry-After in seconds (delta-seconds or an HTTP date), if it has a usable one."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now())


def error_of(response: httpx.Response) -> ConveyorError:
    """The typed error of an error answer: the broker's problem details, or one made from the status."""
    problem: Problem | None = None
    if response.headers.get("content-type", "").startswith((PROBLEM_MEDIA_TYPE, "application/json")):
        try:
            problem = Problem.model_validate(response.json())
        except ValueError:
            problem = None
    if problem is None:
        problem = Problem(status=response.status_code, title=response.reason_phrase or "error",
                          detail=response.text[:500] or None)  # fmt: skip
    if problem.retry_after_s is None:
        after = retry_after_s(response)
        if after is not None:
            problem = problem.model_copy(update={"retry_after_s": math.ceil(after)})
    return error_from_problem(problem)


def model(response: httpx.Response | None, cls: type[ModelT]) -> ModelT:
    assert response is not None, "a flow was resumed without the answer to its call"
    return cls.model_validate(response.json())


# --- the operations -------------------------------------------------------------------------------------


def spec_json(spec: JobSpec | Mapping[str, Any]) -> dict[str, Any]:
    """The job spec as sent: validated here first, so a mistake is a local ValidationError, not a round trip."""
    checked = spec if isinstance(spec, JobSpec) else JobSpec.model_validate(spec)
    return checked.model_dump(mode="json", exclude_none=True)


def submit(spec: JobSpec | Mapping[str, Any], idempotency_key: str | None = None) -> Flow[Job]:
    """Submit once: a fresh Idempotency-Key unless given, so a retried POST answers the same job."""
    key = idempotency_key or f"sdk-{uuid.uuid4()}"
    answer = yield Call("POST", "/v1/jobs", json=spec_json(spec), headers={"Idempotency-Key": key})
    return model(answer, Job)


def dry_run(spec: JobSpec | Mapping[str, Any]) -> Flow[DryRun]:
    """Where the job would go and exactly what would be sent to Slurm; nothing is submitted."""
    answer = yield Call("POST", "/v1/jobs", params={"dry_run": "true"}, json=spec_json(spec))
    return model(answer, DryRun)


def get_job(job_id: str) -> Flow[Job]:
    return model((yield Call("GET", f"/v1/jobs/{job_id}")), Job)


def cancel(job_id: str) -> Flow[Job]:
    return model((yield Call("POST", f"/v1/jobs/{job_id}/cancel")), Job)


def output(job_id: str, stream: str = "stdout", max_bytes: int | None = None) -> Flow[JobOutput]:
    params: dict[str, Any] = {"stream": stream, **({"max_bytes": max_bytes} if max_bytes is not None else {})}
    return model((yield Call("GET", f"/v1/jobs/{job_id}/output", params=params)), JobOutput)


def output_chunk(
    job_id: str, offset: int, stream: str = "stdout", max_bytes: int | None = None
) -> Flow[JobOutputChunk]:
    """The stream's bytes from ``offset`` (the server caps ``max_bytes`` at 1 MiB)."""
    params: dict[str, Any] = {"stream": stream, "offset": offset}
    if max_bytes is not None:
        params["max_bytes"] = max_bytes
    return model((yield Call("GET", f"/v1/jobs/{job_id}/output", params=params)), JobOutputChunk)


def job_page(
    cursor: str | None = None, *, page_size: int = 100, state: Iterable[JobState | str] = (),
    factory: str | None = None, project: str | None = None, label: Mapping[str, str] | None = None,
) -> Flow[JobList]:  # fmt: skip
    """One page of ``GET /v1/jobs`` (the clients' ``jobs.list`` follows ``next_cursor`` through all)."""
    params: dict[str, Any] = {"limit": page_size, "state": [JobState(s).value for s in state]}
    params |= {k: v for k, v in (("factory", factory), ("project", project), ("cursor", cursor)) if v is not None}
    if label:
        params["label"] = [f"{k}={v}" for k, v in label.items()]
    return model((yield Call("GET", "/v1/jobs", params=params)), JobList)


def event_page(job_id: str, cursor: str | None = None, *, after: int | None = None) -> Flow[EventList]:
    params: dict[str, Any] = {"limit": 500}
    if cursor is not None:
        params["cursor"] = cursor
    elif after is not None:
        params["after"] = after
    return model((yield Call("GET", f"/v1/jobs/{job_id}/events", params=params)), EventList)


def factories() -> Flow[list[FactoryView]]:
    answer = yield Call("GET", "/v1/factories")
    assert answer is not None
    return [FactoryView.model_validate(item) for item in answer.json()]


def me() -> Flow[Me]:
    return model((yield Call("GET", "/v1/me")), Me)


def tokens() -> Flow[list[TokenView]]:
    answer = yield Call("GET", "/v1/tokens")
    assert answer is not None
    return [TokenView.model_validate(item) for item in answer.json()]


def create_token(name: str, scopes: Collection[str], days: int | None = None) -> Flow[NewToken]:
    body: dict[str, Any] = {"name": name, "scopes": list(scopes), **({"days": days} if days else {})}
    return model((yield Call("POST", "/v1/tokens", json=body)), NewToken)


def revoke_token(token_id: str) -> Flow[TokenView]:
    return model((yield Call("DELETE", f"/v1/tokens/{token_id}")), TokenView)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Polling intervals of :func:`wait`: from ``first_s`` doubling to ``cap_s``."""

    first_s: float = 0.5
    cap_s: float = 10.0


def wait(
    job_id: str,
    until: Collection[JobState | str] = TERMINAL_STATES,
    timeout_s: float | None = None,
    *,
    backoff: Backoff = Backoff(),
    on_poll: Callable[[Job], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Flow[Job]:
    """Poll the job until its state is in ``until`` (default: any end); :class:`WaitTimeout` after
    ``timeout_s``. A job that ends in a state outside ``until`` is returned too: it can never get there."""
    wanted = frozenset(JobState(s) for s in until)
    deadline = None if timeout_s is None else clock() + timeout_s
    delay = backoff.first_s
    while True:
        job = yield from get_job(job_id)
        if on_poll is not None:
            on_poll(job)
        if job.state in wanted or job.state.is_terminal:
            return job
        if deadline is not None and clock() >= deadline:
            raise WaitTimeout(job, wanted, timeout_s or 0)
        pause = delay if deadline is None else max(0.0, min(delay, deadline - clock()))
        yield Pause(pause)
        delay = min(delay * 2, backoff.cap_s)


__all__ = [
    "Backoff",
    "Call",
    "Flow",
    "Pause",
    "RetryPolicy",
    "WaitTimeout",
    "error_of",
    "next_delay",
    "retry_after_s",
]
