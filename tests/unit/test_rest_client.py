"""RestAdapter's own logic over a fake slurmrestd (httpx.MockTransport): negotiation, tokens, error paths.

The fake answers with the real bodies from data/rest/; the live daemons are the conformance suite's job.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from slurm_adapters.errors import (
    AccountingUnavailable,
    AuthenticationError,
    ClusterUnavailable,
    InvalidRequest,
    JobNotFound,
    OutputUnavailable,
    SubmitWindowClosed,
    UnsafeRequest,
)
from slurm_adapters.records import SlurmJobSpec, SlurmJobState, SubmitContext
from slurm_adapters.rest import RestAdapter
from slurm_adapters.safety import SitePolicy
from slurm_adapters.tokens import verify_token
from tests.unit.sites import policy_of

DATA = Path(__file__).parent / "data" / "rest"
KEY = b"k" * 32
NOT_SERVED = httpx.Response(404, text="Unable find requested URL. Please view /openapi/v3 for API reference.")

Handler = Callable[[httpx.Request], httpx.Response]


def capture(name: str) -> httpx.Response:
    doc = json.loads((DATA / name).read_text())
    if "status" in doc:
        return httpx.Response(doc["status"], json=doc["body"])
    return httpx.Response(200, json=doc)


def ok(payload: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.Response(200, json={"errors": [], **(payload or {})})


class FakeRest:
    """Routes (method, path) to answers and records every request."""

    def __init__(self, routes: dict[tuple[str, str], Handler | httpx.Response]) -> None:
        self.routes = routes
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        route = self.routes.get((request.method, request.url.path), NOT_SERVED)
        return route(request) if callable(route) else route

    def paths(self) -> list[str]:
        return [f"{r.method} {r.url.path}" for r in self.requests]


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "jwt.key"
    path.write_bytes(KEY)
    return path


def policy() -> SitePolicy:
    return policy_of({"alice": 1001, "bob": 1002})


def adapter(
    fake: FakeRest, key_file: Path, *, output_root: Path | None = None, pol: SitePolicy | None = None
) -> RestAdapter:
    return RestAdapter(
        "alpha",
        "http://slurmrestd.test",
        key_file,
        "root",
        pol or policy(),
        output_root=output_root,
        transport=httpx.MockTransport(fake),
    )


def version(rest: RestAdapter) -> str | None:
    return rest.api_version  # (a function, so that mypy does not narrow the property for good)


def spec(**overrides: Any) -> SlurmJobSpec:
    values: dict[str, Any] = {"name": "t", "script": "echo hi\n", "working_directory": "/scratch", "tag": "cvy-1"}
    values.update(overrides)
    return SlurmJobSpec(**values)


V38_PING = ("GET", "/slurm/v0.0.38/ping")
V42_PING = ("GET", "/slurm/v0.0.42/ping/")


async def test_negotiates_once_newest_first_and_falls_back_to_v0038(key_file: Path) -> None:
    fake = FakeRest(
        {
            V38_PING: ok({"pings": [{"ping": "UP"}]}),
            ("GET", "/slurm/v0.0.38/job/2065"): capture("job-get-v0.0.38.json"),
        }
    )
    rest = adapter(fake, key_file)
    assert version(rest) is None
    assert (await rest.get_job(2065)).state is SlurmJobState.COMPLETED
    await rest.get_job(2065)
    assert version(rest) == "v0.0.38"
    assert fake.paths() == [
        "GET /slurm/v0.0.42/ping/",
        "GET /slurm/v0.0.38/ping",
        "GET /slurm/v0.0.38/job/2065",
        "GET /slurm/v0.0.38/job/2065",
    ]
    await rest.aclose()


async def test_every_request_carries_a_fresh_token_for_the_right_user(key_file: Path) -> None:
    fake = FakeRest(
        {
            V42_PING: ok(),
            ("POST", "/slurm/v0.0.42/job/submit"): capture("submit-response-v0.0.42.json"),
            ("DELETE", "/slurm/v0.0.42/job/2"): ok({"status": []}),
        }
    )
    rest = adapter(fake, key_file)
    assert await rest.submit(spec(), "alice") == 2
    await rest.cancel(2, "alice")
    users = []
    for request in fake.requests:
        name = request.headers["X-SLURM-USER-NAME"]
        claims = verify_token(request.headers["X-SLURM-USER-TOKEN"], KEY)
        assert claims["sun"] == name
        assert claims["exp"] - claims["iat"] <= 60
        users.append(name)
    assert users == ["root", "alice", "alice"]  # the probe is the operator's, submit and cancel the user's
    submitted = json.loads(fake.requests[1].content)
    assert submitted["job"]["comment"] == "cvy-1"
    assert "script" in submitted["job"]
    await rest.aclose()


async def test_refuses_unsafe_users_before_any_request(key_file: Path) -> None:
    fake = FakeRest({})
    rest = adapter(fake, key_file)
    for user in ("root", "slurm", "bin", "nobody-here"):
        with pytest.raises(UnsafeRequest):
            await rest.submit(spec(), user)
        with pytest.raises(UnsafeRequest):
            await rest.cancel(1, user)
    with pytest.raises(UnsafeRequest):
        await rest.submit(spec(environment={"SLURM_JOB_ID": "1"}), "alice")
    assert fake.requests == []
    await rest.aclose()


async def test_render_uses_the_negotiated_version(key_file: Path) -> None:
    rest = adapter(FakeRest({V38_PING: ok(), ("GET", "/slurm/v0.0.38/diag"): ok()}), key_file)
    assert "script" in rest.render(spec(), "alice").payload["job"]  # v0.0.42 before any call
    await rest.health()
    rendering = rest.render(spec(), "alice")
    assert rendering.adapter == "rest"
    assert set(rendering.payload) == {"job", "script"}  # v0.0.38 shape once negotiated
    assert rendering.script.startswith("#!/bin/bash\n")
    await rest.aclose()


async def test_health_asks_diag_because_ping_passes_bad_tokens(key_file: Path) -> None:
    fake = FakeRest(
        {
            V42_PING: ok({"pings": [{"pinged": "DOWN"}]}),  # what 24.11 answers to a rejected token
            ("GET", "/slurm/v0.0.42/diag/"): capture("v0042-jobs-bad-token.json"),
        }
    )
    rest = adapter(fake, key_file)
    with pytest.raises(AuthenticationError, match="Protocol authentication error"):
        await rest.health()
    await rest.aclose()


async def test_a_job_id_in_the_answer_wins_over_errors(key_file: Path) -> None:
    answer = {"job_id": 77, "errors": [{"error_code": 2016, "error": "Requested nodes are busy"}]}
    fake = FakeRest({V42_PING: ok(), ("POST", "/slurm/v0.0.42/job/submit"): httpx.Response(200, json=answer)})
    rest = adapter(fake, key_file)
    assert await rest.submit(spec(), "alice") == 77
    await rest.aclose()


async def test_submit_errors(key_file: Path) -> None:
    routes: dict[tuple[str, str], Handler | httpx.Response] = {V38_PING: ok()}
    fake = FakeRest(routes)
    rest = adapter(fake, key_file)
    routes[("POST", "/slurm/v0.0.38/job/submit")] = capture("v0038-submit-bad-partition.json")
    with pytest.raises(InvalidRequest, match="Invalid partition name specified"):
        await rest.submit(spec(partition="nope"), "alice")
    routes[("POST", "/slurm/v0.0.38/job/submit")] = ok()
    with pytest.raises(ClusterUnavailable) as caught:  # 200 without a job id: cannot tell what happened
        await rest.submit(spec(), "alice")
    assert caught.value.maybe_applied
    await rest.aclose()


async def test_connection_refused_is_unavailable_and_not_applied(key_file: Path) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    rest = adapter(FakeRest({V42_PING: refuse}), key_file)
    with pytest.raises(ClusterUnavailable) as caught:
        await rest.submit(spec(), "alice")
    assert not caught.value.maybe_applied
    assert version(rest) is None  # nothing learnt: negotiate again next time
    await rest.aclose()


async def test_timeout_after_sending_a_submit_may_have_applied_it(key_file: Path) -> None:
    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    routes: dict[tuple[str, str], Handler | httpx.Response] = {V42_PING: hang}
    rest = adapter(FakeRest(routes), key_file)
    with pytest.raises(ClusterUnavailable) as caught:  # the probe timed out: the submit was never sent
        await rest.submit(spec(), "alice")
    assert not caught.value.maybe_applied
    routes[V42_PING] = ok()
    routes[("POST", "/slurm/v0.0.42/job/submit")] = hang
    with pytest.raises(ClusterUnavailable) as caught:
        await rest.submit(spec(), "alice")
    assert caught.value.maybe_applied
    await rest.aclose()


async def test_served_version_is_kept_when_the_probe_reports_an_error(key_file: Path) -> None:
    routes: dict[tuple[str, str], Handler | httpx.Response] = {V38_PING: capture("v0038-ping-bad-token.json")}
    fake = FakeRest(routes)
    rest = adapter(fake, key_file)
    with pytest.raises(AuthenticationError):
        await rest.health()
    assert version(rest) == "v0.0.38"
    routes[("GET", "/slurm/v0.0.38/diag")] = ok()
    assert (await rest.health()).ok
    assert fake.paths().count("GET /slurm/v0.0.38/ping") == 1
    await rest.aclose()


async def test_no_supported_version(key_file: Path) -> None:
    rest = adapter(FakeRest({}), key_file)
    with pytest.raises(ClusterUnavailable, match="none of"):
        await rest.health()
    await rest.aclose()


async def test_unknown_key_file_is_an_authentication_error(tmp_path: Path) -> None:
    rest = adapter(FakeRest({V42_PING: ok()}), tmp_path / "missing.key")
    with pytest.raises(AuthenticationError, match="token"):
        await rest.health()
    await rest.aclose()


async def test_cancel_reads_the_per_job_status(key_file: Path) -> None:
    routes: dict[tuple[str, str], Handler | httpx.Response] = {
        V42_PING: ok(),
        ("DELETE", "/slurm/v0.0.42/job/999999"): capture("v0042-delete-unknown-job-in-range.json"),
        ("DELETE", "/slurm/v0.0.42/job/2"): capture("v0042-delete-finished-job.json"),
    }
    rest = adapter(FakeRest(routes), key_file)
    with pytest.raises(JobNotFound):
        await rest.cancel(999999, "alice")
    await rest.cancel(2, "alice")  # already ended: fine
    await rest.aclose()


async def test_cancel_by_tag_reads_the_job_first_and_cancels_only_a_match(key_file: Path) -> None:
    job = json.loads((DATA / "job-get-v0.0.42.json").read_text())  # job 2, alice's
    job["jobs"][0]["comment"] = "cvy-1"
    routes: dict[tuple[str, str], Handler | httpx.Response] = {
        V42_PING: ok(),
        ("GET", "/slurm/v0.0.42/job/2"): httpx.Response(200, json=job),
        ("DELETE", "/slurm/v0.0.42/job/2"): capture("v0042-delete-finished-job.json"),
    }
    fake = FakeRest(routes)
    rest = adapter(fake, key_file)
    with pytest.raises(JobNotFound, match="its tag is 'cvy-1', not 'cvy-2'"):
        await rest.cancel(2, "alice", tag="cvy-2")
    with pytest.raises(JobNotFound, match="its user is 'alice', not 'bob'"):
        await rest.cancel(2, "bob", tag="cvy-1")
    assert "DELETE /slurm/v0.0.42/job/2" not in fake.paths()
    await rest.cancel(2, "alice", tag="cvy-1")
    assert fake.paths()[-2:] == ["GET /slurm/v0.0.42/job/2", "DELETE /slurm/v0.0.42/job/2"]  # one read, one cancel
    await rest.aclose()


async def test_a_submit_whose_deadline_would_pass_not_after_is_never_sent(key_file: Path) -> None:
    fake = FakeRest({V42_PING: ok(), ("POST", "/slurm/v0.0.42/job/submit"): ok({"job_id": 5})})
    rest = adapter(fake, key_file)  # timeout_s 8 s
    now = datetime.now(UTC)
    late = SubmitContext("job_x/1", not_after=now + timedelta(seconds=7), requester_user="u", requester_project="p")
    with pytest.raises(SubmitWindowClosed) as caught:
        await rest.submit(spec(), "alice", late)
    assert isinstance(caught.value, ClusterUnavailable)
    assert not caught.value.maybe_applied
    assert "POST /slurm/v0.0.42/job/submit" not in fake.paths()
    in_time = replace(late, not_after=now + timedelta(seconds=60))
    assert await rest.submit(spec(), "alice", in_time) == 5
    await rest.aclose()


async def test_the_submit_timeout_bounds_the_whole_request(key_file: Path) -> None:
    """httpx's timeouts bound each phase; the submit fence needs the call's whole deadline to be timeout_s."""

    fake = FakeRest({V42_PING: ok(), ("POST", "/slurm/v0.0.42/job/submit"): ok({"job_id": 5})})

    async def slow_submit(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            await asyncio.sleep(30)  # no httpx timeout fires in a mock transport
        return fake(request)

    transport = httpx.MockTransport(slow_submit)
    rest = RestAdapter(
        "alpha", "http://slurmrestd.test", key_file, "root", policy(), timeout_s=0.3, transport=transport
    )
    started = time.monotonic()
    with pytest.raises(ClusterUnavailable, match=r"within 0\.3 s") as caught:
        await rest.submit(spec(), "alice")
    assert caught.value.maybe_applied
    assert time.monotonic() - started < 5
    await rest.aclose()


async def test_list_is_one_call_filtered_by_tag(key_file: Path) -> None:
    jobs = json.loads((DATA / "job-get-v0.0.42.json").read_text())
    template = jobs["jobs"][0]
    jobs["jobs"] = [
        {**template, "job_id": 10, "comment": "cvy-a-1"},
        {**template, "job_id": 11, "comment": "cvy-a-2", "job_state": ["RUNNING"]},
        {**template, "job_id": 12, "comment": "other"},
        {**template, "job_id": 13, "comment": ""},
    ]
    fake = FakeRest({V42_PING: ok(), ("GET", "/slurm/v0.0.42/jobs/"): httpx.Response(200, json=jobs)})
    rest = adapter(fake, key_file)
    assert [r.job_id for r in await rest.list_jobs()] == [10, 11, 12, 13]
    assert [r.job_id for r in await rest.list_jobs(tag_prefix="cvy-a-")] == [10, 11]
    assert [r.job_id for r in await rest.list_jobs(tags={"cvy-a-2", "other"})] == [11, 12]
    assert [r.job_id for r in await rest.list_jobs(tags=set(), tag_prefix="cvy")] == []
    assert fake.paths().count("GET /slurm/v0.0.42/jobs/") == 4
    await rest.aclose()


async def test_cluster_info_takes_the_default_partition_from_a_newer_parser(key_file: Path) -> None:
    routes: dict[tuple[str, str], Handler | httpx.Response] = {
        V42_PING: ok(),
        ("GET", "/slurm/v0.0.42/nodes/"): capture("v0042-nodes.json"),
        ("GET", "/slurm/v0.0.42/partitions/"): capture("v0042-partitions.json"),
    }
    rest = adapter(FakeRest(routes), key_file)
    info = await rest.cluster_info()  # 24.11: v0.0.45 not served, the default stays unknown
    assert not any(p.default for p in info.partitions)
    assert info.release == "24.11.5"
    assert info.gpu_totals() == {"h100": (2, 2)}
    routes[("GET", "/slurm/v0.0.45/partitions/")] = capture("v0045-partitions-2605.json")
    info = await rest.cluster_info()
    assert {p.name: p.default for p in info.partitions} == {"cpu": True, "gpu": False}
    await rest.aclose()


# --- read_output ----------------------------------------------------------------------------------


def _job_with_output(path: str, uid: int = 1000) -> httpx.Response:
    jobs = json.loads((DATA / "job-get-v0.0.42.json").read_text())
    jobs["jobs"][0].update(standard_output=path, standard_error="", user_id=uid)
    return httpx.Response(200, json=jobs)


async def test_read_output_needs_a_view_of_the_filesystem(key_file: Path) -> None:
    rest = adapter(FakeRest({}), key_file)
    with pytest.raises(OutputUnavailable):
        await rest.read_output(2)
    await rest.aclose()


async def test_read_output_reads_the_tail_under_output_root(key_file: Path, tmp_path: Path) -> None:
    root = tmp_path / "chroot"
    out = root / "scratch" / "job" / "out.txt"
    out.parent.mkdir(parents=True)
    out.write_text("first line\n" + "x" * 100 + "\nlast line\n")
    owner = 4242 if os.geteuid() == 0 else os.geteuid()
    if os.geteuid() == 0:
        os.chown(out, owner, owner)
    pol = policy_of({"alice": owner}, uid_ranges=((1, 4294967293),))
    routes: dict[tuple[str, str], Handler | httpx.Response] = {
        V42_PING: ok(),
        ("GET", "/slurm/v0.0.42/job/2"): _job_with_output("/scratch/job/out.txt", owner),
    }
    rest = adapter(FakeRest(routes), key_file, output_root=root, pol=pol)
    assert (await rest.read_output(2)).endswith("last line\n")
    assert await rest.read_output(2, "stderr", max_bytes=10) == "last line\n"  # stderr merged into stdout

    routes[("GET", "/slurm/v0.0.42/job/2")] = _job_with_output("/scratch/job/../../etc/not-there", owner)
    with pytest.raises(OutputUnavailable, match="does not exist"):
        await rest.read_output(2)  # stays inside output_root
    link = root / "scratch" / "job" / "link.txt"
    link.symlink_to(out)
    routes[("GET", "/slurm/v0.0.42/job/2")] = _job_with_output("/scratch/job/link.txt", owner)
    with pytest.raises(OutputUnavailable, match="regular file"):
        await rest.read_output(2)  # a user-made symlink could point anywhere
    await rest.aclose()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own a file as another user")
async def test_read_output_refuses_files_the_job_user_does_not_own(key_file: Path, tmp_path: Path) -> None:
    secret = tmp_path / "etc" / "shadow"
    secret.parent.mkdir()
    secret.write_text("root:secret\n")  # owned by root, as a job's stdout=/etc/shadow would find it
    rest = adapter(
        FakeRest({V42_PING: ok(), ("GET", "/slurm/v0.0.42/job/2"): _job_with_output("/etc/shadow")}),
        key_file,
        output_root=tmp_path,
    )
    with pytest.raises(OutputUnavailable, match="not owned"):
        await rest.read_output(2)
    await rest.aclose()


V38_PING_OK = ok({"pings": [{"pinged": "UP"}]})


async def test_accounted_jobs_reads_slurmdbd_through_slurmrestd(key_file: Path) -> None:
    fake = FakeRest(
        {
            V42_PING: NOT_SERVED,
            V38_PING: V38_PING_OK,
            ("GET", "/slurmdb/v0.0.38/job/2"): capture("v0038-slurmdb-job-requeued.json"),
            ("GET", "/slurmdb/v0.0.38/job/107"): capture("v0038-slurmdb-job-failed.json"),
            ("GET", "/slurmdb/v0.0.38/job/999999"): capture("v0038-slurmdb-job-unknown.json"),
        }
    )
    rest = adapter(fake, key_file)
    records = await rest.accounted_jobs(job_ids=[2, 107, 999999, 2])
    # The requeued job once, as it is now; "Nothing found" is an empty answer, not an error.
    assert [(r.job_id, r.state, r.tag) for r in records] == [
        (2, SlurmJobState.COMPLETED, "job_rvc47u3zcehvzmccbrj3"),
        (107, SlurmJobState.FAILED, None),
    ]
    assert fake.paths().count("GET /slurmdb/v0.0.38/job/2") == 1
    assert all(r.headers["X-SLURM-USER-NAME"] == "root" for r in fake.requests)
    await rest.aclose()


async def test_accounted_jobs_since_a_time_asks_a_wider_window_and_filters_exactly(key_file: Path) -> None:
    body = json.loads((DATA / "v0038-slurmdb-job-requeued.json").read_text())["body"]
    fake = FakeRest({V42_PING: NOT_SERVED, V38_PING: V38_PING_OK, ("GET", "/slurmdb/v0.0.38/jobs"): ok(body)})
    rest = adapter(fake, key_file)
    record = next(r for r in await rest.accounted_jobs(submitted_after=datetime(2026, 1, 1, tzinfo=UTC)))
    assert record.submit_time is not None
    assert [r.job_id for r in await rest.accounted_jobs(submitted_after=record.submit_time)] == [2]
    assert await rest.accounted_jobs(submitted_after=record.submit_time + timedelta(seconds=1)) == []
    asked = [r.url.params["start_time"] for r in fake.requests if r.url.path == "/slurmdb/v0.0.38/jobs"]
    assert asked[1] == (record.submit_time - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
    await rest.aclose()


async def test_accounted_jobs_where_slurmrestd_serves_no_slurmdbd_is_unavailable(key_file: Path) -> None:
    fake = FakeRest({V42_PING: NOT_SERVED, V38_PING: V38_PING_OK})  # /slurmdb/... answers 404
    rest = adapter(fake, key_file)
    with pytest.raises(AccountingUnavailable, match="no slurmdbd plugin"):
        await rest.accounted_jobs(job_ids=[1])
    await rest.aclose()


async def test_health_tells_since_when_slurmctld_runs_and_its_slurmdbd_backlog(key_file: Path) -> None:
    fake = FakeRest(
        {V42_PING: NOT_SERVED, V38_PING: V38_PING_OK, ("GET", "/slurm/v0.0.38/diag"): capture("v0038-diag.json")}
    )
    rest = adapter(fake, key_file)
    health = await rest.health()
    stats = json.loads((DATA / "v0038-diag.json").read_text())["body"]["statistics"]
    assert health.up_since == datetime.fromtimestamp(stats["req_time_start"], UTC)
    assert health.accounting_backlog == stats["dbd_agent_queue_size"] == 0
    await rest.aclose()
