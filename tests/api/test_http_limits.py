"""The broker's HTTP edge over a real socket (``python -m app`` under uvicorn, as in production): oversized
requests are refused while they are read, with a problem, and the broker's memory stays bounded; heads beyond
the app's header limits or the server's parse limit, and requests the server cannot parse, get a problem too."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app.limits import LARGE_BODIES_AT_ONCE
from conveyor.problems import PROBLEM_MEDIA_TYPE, Problem
from tests.api.conftest import TOKEN, write_factories
from tests.api.raw_http import Answer, Exchange, chunked, exchange
from tests.api.server import Server, serving

MIB = 1024 * 1024
KIB = 1024
BODY_LIMIT = 2 * MIB  # the limits are set explicitly, so that the sizes below are relative to known ones
REPORT_LIMIT = 8 * MIB  # a Factory agent's reports
HEADER_LIMIT = 32 * KIB  # all header fields together: name, ": ", value and CRLF of each
FIELD_LIMIT = 16 * KIB  # one header field: name and value
CONCURRENT = 20
UPLOAD_BYTES = 100 * MIB
# What a refused upload may leave in the broker at once: the bytes read up to the limit (twice, while they are
# gathered), per concurrent upload, plus the server's own buffers and allocator slack.
MEMORY_ALLOWANCE = CONCURRENT * 2 * BODY_LIMIT + 64 * MIB


@pytest.fixture
def server(tmp_path: Path, sqlite_copy: Path) -> Iterator[Server]:
    env = {
        "CONVEYOR_MAX_BODY_BYTES": str(BODY_LIMIT),
        "CONVEYOR_MAX_HEADER_BYTES": str(HEADER_LIMIT),
        "CONVEYOR_MAX_HEADER_FIELD_BYTES": str(FIELD_LIMIT),
        "CONVEYOR_AGENT_MAX_REPORT_BYTES": str(REPORT_LIMIT),
    }
    with serving(
        tmp_path, sqlite_copy, write_factories(tmp_path), run_loops=False, env=env, ready_timeout_s=30
    ) as server:
        yield server


def port_of(server: Server) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


def memory_bytes(pid: int) -> dict[str, int]:
    """The process's resident set now (VmRSS) and at its highest so far (VmHWM), from /proc."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in {"VmRSS", "VmHWM"}:
            values[name] = int(value.split()[0]) * 1024  # reported in kB
    return values


def head(method: str, path: str, *fields: tuple[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{name}: {value}" for name, value in fields)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def problem_in(result: Exchange, status: int, code: str) -> Problem:
    """The answer's problem, after checking it is one with this status and (sub-)code."""
    assert result.answer is not None, result.error
    answer: Answer = result.answer
    assert answer.status == status, answer
    assert answer.headers.get("content-type") == PROBLEM_MEDIA_TYPE, answer
    problem = Problem.model_validate(json.loads(answer.body))
    assert (problem.status, problem.code) == (status, code), problem
    return problem


def json_prefixed(total: int) -> Iterator[bytes]:
    """``total`` bytes of the start of a JSON object whose one string never ends (so no parser stops early)."""
    first = b'{"name": "'
    yield first
    filler = b"a" * (64 * 1024)
    left = total - len(first)
    while left > 0:
        yield filler[: min(left, len(filler))]
        left -= len(filler)


REPORTS = "/v1/agent/sessions/as_x/reports"
LISTING = "/v1/agent/sessions/as_x/listing"


def upload(
    port: int, *, chunked_framing: bool, stop: threading.Event, path: str = "/v1/jobs", size: int = UPLOAD_BYTES
) -> Exchange:
    """POST a ``size`` (~100 MB) body, declared by Content-Length or sent chunked."""
    auth = ("Authorization", f"Bearer {TOKEN}")
    kind = ("Content-Type", "application/json")
    if chunked_framing:
        request = head("POST", path, auth, kind, ("Transfer-Encoding", "chunked"))
        return exchange(port, request, chunked(json_prefixed(size)), stop=stop)
    request = head("POST", path, auth, kind, ("Content-Length", str(size)))
    return exchange(port, request, json_prefixed(size), stop=stop)


@pytest.mark.parametrize(
    ("path", "limit", "allowance"),
    [
        ("/v1/jobs", BODY_LIMIT, MEMORY_ALLOWANCE),
        # at most LARGE_BODIES_AT_ONCE bodies are read past BODY_LIMIT at a time
        (REPORTS, REPORT_LIMIT, MEMORY_ALLOWANCE + LARGE_BODIES_AT_ONCE * 2 * REPORT_LIMIT),
    ],
    ids=["job", "agent-report"],
)
def test_defect_03_oversized_bodies_are_refused_while_read_and_memory_stays_bounded(
    server: Server, path: str, limit: int, allowance: int
) -> None:
    """20 concurrent ~100 MB uploads (half declared by Content-Length, half chunked) are each answered 413 long
    before their end was sent, and the broker's resident memory never grows beyond the allowance. A watcher
    stops the uploads at once if it does (without a limit the broker would take gigabytes). The same for an
    agent's reports, whose limit is larger."""
    pid, port = server.process.pid, port_of(server)
    before = memory_bytes(pid)
    ceiling = max(before.values()) + allowance
    over, done = threading.Event(), threading.Event()

    def watch() -> None:
        while not done.wait(0.01):
            if memory_bytes(pid)["VmRSS"] > ceiling:
                over.set()  # the uploads stop: the machine is shared
                return

    with ThreadPoolExecutor(CONCURRENT + 1) as pool:
        pool.submit(watch)
        futures = [
            pool.submit(upload, port, chunked_framing=i % 2 == 1, stop=over, path=path) for i in range(CONCURRENT)
        ]
        results = [future.result() for future in futures]
        done.set()
    peak = memory_bytes(pid)["VmHWM"]
    grown = f"the broker's memory grew by {(peak - max(before.values())) / MIB:.0f} MiB"
    assert not over.is_set(), f"{grown} (allowed: {allowance / MIB:.0f} MiB): the uploads were stopped"
    assert peak <= ceiling, f"{grown} (allowed: {allowance / MIB:.0f} MiB)"
    for result in results:
        problem = problem_in(result, 413, "payload_too_large")
        assert str(limit) in (problem.detail or ""), problem
        assert result.body_bytes_sent < UPLOAD_BYTES // 4, "refused only after most of the body was read"


@pytest.mark.parametrize("path", [REPORTS, LISTING], ids=["reports", "listing"])
def test_an_agents_report_may_be_larger_than_other_bodies_but_not_without_bound(server: Server, path: str) -> None:
    """A 5 MiB report (or listing) passes the edge (the route reads it: this one is no JSON, so a 422 says so);
    the same body elsewhere is a 413; a report past its own limit is a 413 naming that limit."""
    port, stop = port_of(server), threading.Event()
    passed = upload(port, chunked_framing=False, stop=stop, path=path, size=5 * MIB)
    problem_in(passed, 422, "validation_error")
    problem_in(upload(port, chunked_framing=True, stop=stop, size=5 * MIB), 413, "payload_too_large")
    over = problem_in(upload(port, chunked_framing=True, stop=stop, path=path, size=REPORT_LIMIT + MIB), 413,
                      "payload_too_large")  # fmt: skip
    assert str(REPORT_LIMIT) in (over.detail or ""), over


AUTH = ("Authorization", f"Bearer {TOKEN}")


def padding(count: int, size: int) -> list[tuple[str, str]]:
    """``count`` header fields of ``size`` bytes each (name and value)."""
    return [(f"X-Padding-{index:03d}", "p" * (size - 14)) for index in range(count)]


def test_defect_09_oversized_headers_get_a_431_problem_over_a_real_socket(server: Server) -> None:
    """Beyond the app's limits (one field, all fields) but within the server's parse limit: the app's 431.
    Far beyond every limit (a 1 MiB Authorization header): the server's 431, also a problem, and an answer
    rather than a reset. A head the server cannot parse: a 400 problem, never uvicorn's text/plain. Heads just
    within the limits are served."""
    port = port_of(server)
    for fields in (padding(1, FIELD_LIMIT - 64), padding(2, HEADER_LIMIT // 2 - 256)):
        within = exchange(port, head("GET", "/v1/jobs", AUTH, *fields))
        assert within.answer is not None, within.error
        assert within.answer.status == 200, within.answer

    one_field = exchange(port, head("GET", "/v1/jobs", AUTH, *padding(1, FIELD_LIMIT + 4 * KIB)))
    problem_in(one_field, 431, "headers_too_large.field")
    all_fields = exchange(port, head("GET", "/v1/jobs", AUTH, *padding(30, 1200)))
    problem_in(all_fields, 431, "headers_too_large.total")
    huge = exchange(port, head("GET", "/v1/jobs", ("Authorization", "Bearer " + "a" * MIB)))
    problem_in(huge, 431, "headers_too_large")

    unparsable = exchange(port, b"GET /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nno colon here\r\n\r\n")
    problem_in(unparsable, 400, "malformed_request.http")
