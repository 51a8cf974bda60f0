"""The SDK's pure parts: retry decisions, Retry-After, the wait flow, configuration; and both drivers over an
in-memory transport (the live tests against a broker and the lab are in tests/sdk/)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from conveyor import AsyncClient, Client, ConfigError, JobState, RetryPolicy, WaitTimeout
from conveyor.calls import Backoff, Call, Flow, Pause, next_delay, retry_after_s, wait
from conveyor.config import resolve
from conveyor.models import _JOB_EXAMPLE as JOB_EXAMPLE
from conveyor.problems import AuthError, RateLimited, Unavailable

T = TypeVar("T")
POLICY = RetryPolicy(attempts=3, base_s=0.0, cap_s=5.0)
SPEC = {"name": "t", "project": "P-1", "command": ["true"]}


def answer(status: int, body: Any = None, **headers: str) -> httpx.Response:
    content = b"" if body is None else json.dumps(body).encode()
    media = "application/problem+json" if status >= 400 else "application/json"
    return httpx.Response(status, content=content, headers={"content-type": media, **headers})


def test_retry_after_is_read_as_seconds_or_as_a_date() -> None:
    assert retry_after_s(answer(429, **{"Retry-After": "7"})) == 7
    later = datetime.now(UTC) + timedelta(seconds=30)
    assert 28 <= (retry_after_s(answer(503, **{"Retry-After": format_datetime(later, usegmt=True)})) or 0) <= 30
    assert retry_after_s(answer(503, **{"Retry-After": "soon"})) is None
    assert retry_after_s(answer(503)) is None


def test_which_answers_are_retried_and_after_how_long() -> None:
    assert next_delay(POLICY, 1, answer(200, {}), None) is None
    assert next_delay(POLICY, 1, answer(429, {"status": 429}, **{"Retry-After": "2"}), None) == 2
    assert next_delay(POLICY, 1, answer(503, {"status": 503}, **{"Retry-After": "999"}), None) == 5  # capped
    with pytest.raises(RateLimited):  # tries used up: the typed error, with the broker's Retry-After
        next_delay(POLICY, 3, answer(429, {"status": 429, "code": "rate_limited"}, **{"Retry-After": "2"}), None)
    with pytest.raises(AuthError):  # not worth another try
        next_delay(POLICY, 1, answer(401, {"status": 401, "code": "unauthorized.expired"}), None)
    refused = httpx.ConnectError("refused")
    assert next_delay(POLICY, 1, None, refused) == 0.0
    with pytest.raises(httpx.ConnectError):
        next_delay(POLICY, 3, None, refused)


def drive(flow: Flow[T], respond: Callable[[Call], httpx.Response], now: list[float]) -> tuple[T, list[float]]:
    """Run a flow as a client would, on a fake clock: pauses advance ``now`` and are recorded."""
    pauses: list[float] = []
    step = flow.send(None)
    while True:
        try:
            if isinstance(step, Pause):
                pauses.append(step.seconds)
                now[0] += step.seconds
                step = flow.send(None)
            else:
                step = flow.send(respond(step))
        except StopIteration as done:
            return done.value, pauses


def test_wait_polls_with_capped_backoff_until_the_state_or_the_timeout() -> None:
    now = [0.0]
    states = iter(["queued", "submitted", "running"])

    def job_in_next_state(call: Call) -> httpx.Response:
        assert (call.method, call.path) == ("GET", "/v1/jobs/job_x")
        return answer(200, {**JOB_EXAMPLE, "state": next(states)})

    flow = wait("job_x", until={"running"}, timeout_s=60, backoff=Backoff(first_s=1, cap_s=2), clock=lambda: now[0])
    job, pauses = drive(flow, job_in_next_state, now)
    assert job.state is JobState.RUNNING
    assert pauses == [1, 2]

    timed = wait("job_x", until={"completed"}, timeout_s=3, backoff=Backoff(first_s=2, cap_s=2), clock=lambda: now[0])
    with pytest.raises(WaitTimeout, match="is running after 3 s"):
        drive(timed, lambda _: answer(200, {**JOB_EXAMPLE, "state": "running"}), now)


def test_a_job_that_ended_elsewhere_ends_the_wait() -> None:
    flow = wait("job_x", until={"running"}, timeout_s=None)
    flow.send(None)
    with pytest.raises(StopIteration) as done:
        flow.send(answer(200, {**JOB_EXAMPLE, "state": "failed"}))
    assert done.value.value.state is JobState.FAILED


def recorder(given: Iterable[httpx.Response | Exception]) -> tuple[list[httpx.Request], Callable[..., Any]]:
    """A transport handler answering from ``given`` in order (an exception is raised), and what it saw."""
    seen: list[httpx.Request] = []
    answers = list(given)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        item = answers.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    return seen, handle


def test_the_blocking_client_retries_a_submit_with_one_idempotency_key() -> None:
    seen, handle = recorder([httpx.ConnectError("down"), answer(503, {"status": 503}, **{"Retry-After": "0"}),
                             answer(201, JOB_EXAMPLE)])  # fmt: skip
    with Client("http://broker.test", token="t0ken", retry=POLICY, transport=httpx.MockTransport(handle)) as client:
        job = client.submit(SPEC)
    assert job.id == JOB_EXAMPLE["id"]
    keys = {request.headers["idempotency-key"] for request in seen}
    assert len(seen) == 3
    assert len(keys) == 1
    assert seen[0].headers["authorization"] == "Bearer t0ken"


async def test_the_async_client_gives_up_with_the_typed_error() -> None:
    _, handle = recorder([answer(503, {"status": 503, "code": "unavailable.database"}, **{"Retry-After": "0"})] * 3)
    async with AsyncClient("http://broker.test", token="t", retry=POLICY,
                           transport=httpx.MockTransport(handle)) as client:  # fmt: skip
        with pytest.raises(Unavailable) as failed:
            await client.submit(SPEC)
    assert failed.value.code == "unavailable.database"


def test_listing_follows_every_page() -> None:
    pages = [
        answer(200, {"items": [{**JOB_EXAMPLE, "id": "job_a"}], "next_cursor": "c1"}),
        answer(200, {"items": [{**JOB_EXAMPLE, "id": "job_b"}], "next_cursor": None}),
    ]
    seen, handle = recorder(pages)
    with Client("http://broker.test", token="t", transport=httpx.MockTransport(handle)) as client:
        assert [job.id for job in client.jobs.list(state=["running"], page_size=1)] == ["job_a", "job_b"]
    assert seen[1].url.params["cursor"] == "c1"
    assert seen[0].url.params.get_list("state") == ["running"]


def test_configuration_order_arguments_environment_profile(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    (tmp_path / "be.token").write_text("from-file\n")
    config.write_text(
        'default_profile = "direct"\n'
        '[profiles.direct]\nurl = "https://conveyor.example.eu/"\ntoken = "direct-token"\n'
        f'[profiles.be]\nurl = "https://antenna.example.be"\ntoken_file = "{tmp_path / "be.token"}"\nvia = "antenna"\n'
    )
    env = {"CONVEYOR_CONFIG": str(config)}
    assert resolve(environ=env).url == "https://conveyor.example.eu"
    be = resolve(environ={**env, "CONVEYOR_PROFILE": "be"})
    assert (be.url, be.token, be.via) == ("https://antenna.example.be", "from-file", "antenna")
    assert resolve(environ={**env, "CONVEYOR_TOKEN": "env"}).token == "env"
    assert resolve(token="arg", environ={**env, "CONVEYOR_TOKEN": "env"}).token == "arg"
    assert "from-file" not in repr(be)
    with pytest.raises(ConfigError, match="no profile 'nope'"):
        resolve(profile="nope", environ=env)
    with pytest.raises(ConfigError, match="no token"):
        resolve(environ={"CONVEYOR_CONFIG": str(tmp_path / "missing.toml")})
