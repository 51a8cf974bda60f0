"""The executor under hand-forged orders: everything the site refuses is refused with its reason, and a refused
order reaches no adapter at all (the recording double proves it). What it allows reaches the adapter once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.backoff import Backoff
from agent.clock import BrokerClock
from agent.executor import Executor, Lease, PauseSwitch, SiteBackoff
from slurm_adapters import codec
from slurm_adapters.agent_protocol import Report, Requester
from slurm_adapters.errors import ClusterUnavailable, InvalidRequest
from slurm_adapters.records import MAX_OUTPUT_CHUNK_BYTES, OutputChunk
from tests.agent.conftest import site_policy
from tests.agent.fakes import RecordingAdapter, cancel_order, read_order, spec, submit_order

VIA_ANTENNA = Requester(user="u-alice", project="EHPC-AIF-2026PG01-1147", antenna="it-antenna")


def refused(report: Report, reason: str) -> None:
    assert report.ok is False
    assert report.refused is True
    assert report.error is not None
    assert reason in report.error["message"], report.error["message"]


@pytest.mark.parametrize(
    ("site_user", "reason"),
    [
        ("root", "privileged or system account"),
        ("slurm", "privileged or system account"),
        ("daemon", "privileged or system account"),
        ("nobody", "privileged or system account"),
        ("carol", "not listed in this site's policy"),  # a person, but not in the policy
        ("mallory", "not listed in this site's policy"),  # no such account
        ("backupsvc", "uid 998 is not a person's"),  # listed by the policy, yet a system uid
    ],
)
async def test_a_forged_site_user_is_refused_and_reaches_no_adapter(
    executor: Executor, adapter: RecordingAdapter, site_user: str, reason: str
) -> None:
    report = await executor.execute(submit_order(1, site_user=site_user))
    refused(report, reason)
    assert report.error is not None
    assert report.error["type"] == "UnsafeRequest"
    assert adapter.calls == []


@pytest.mark.parametrize(
    ("job", "requester", "reason"),
    [
        (spec(account="ehpc-aif-other"), None, "Slurm account 'ehpc-aif-other' is not allowed"),
        (spec(partition="bigmem"), None, "partition 'bigmem' is not allowed"),
        (spec(partition=None), None, "names no partition"),
        (spec(nodes=3), None, "3 nodes exceed the site's largest job (2 nodes)"),
        (spec(nodes=2, gpus_per_node=8, partition="gpu"), None, "16 GPUs exceed the site's largest job (8 GPUs)"),
        (spec(time_limit_min=61), None, "61 min exceeds the site's largest job (60 min)"),
        (spec(time_limit_min=None), None, "the job has no time limit"),
        (spec(), Requester(user="u-x", project="EHPC-OTHER"), "of project 'EHPC-OTHER' may not run jobs"),
        (spec(), Requester(user="u-x", project="EHPC-AIF-2026PG01-1147", antenna="fr-antenna"), "via Antenna"),
    ],
)
async def test_a_job_the_policy_forbids_is_refused_and_reaches_no_adapter(
    executor: Executor, adapter: RecordingAdapter, job: Any, requester: Requester | None, reason: str
) -> None:
    report = await executor.execute(submit_order(1, job=job, requester=requester))
    refused(report, reason)
    assert adapter.calls == []


async def test_an_allowed_job_runs_once_as_the_decided_account(executor: Executor, adapter: RecordingAdapter) -> None:
    order = submit_order(5, site_user="alice", job=spec(account=None, tag="cvy-job-5"), requester=VIA_ANTENNA)
    report = await executor.execute(order)
    assert (report.ok, report.refused, report.result, report.site_account) == (True, False, 1000, "alice")
    [call] = adapter.calls_of("submit")
    assert call.args["user"] == "alice"
    assert call.args["spec"].account == "ehpc-aif-test"  # the policy's default account filled in
    assert call.args["spec"].tag == "cvy-job-5"
    context = call.args["context"]
    assert (context.attempt, context.not_after, context.requester_antenna) == (
        order.attempt, order.not_after, "it-antenna",
    )  # fmt: skip


async def test_a_mapping_rule_decides_the_account_whatever_the_broker_proposed(
    executor: Executor, adapter: RecordingAdapter
) -> None:
    requester = Requester(user="u-mapped", project="anything")
    report = await executor.execute(submit_order(1, site_user="alice", requester=requester))
    assert (report.ok, report.site_account) == (True, "bob")
    assert adapter.calls_of("submit")[0].args["user"] == "bob"


async def test_an_unknown_spec_field_is_refused_with_its_name_never_dropped(
    executor: Executor, adapter: RecordingAdapter
) -> None:
    data = {**codec.spec_to_json(spec()), "container": {"image": "pytorch.sif"}}
    report = await executor.execute(submit_order(1, spec_json=data))
    refused(report, "unknown fields ['container']")
    assert report.error is not None
    assert report.error["type"] == "InvalidRequest"
    assert adapter.calls == []


async def test_a_submit_whose_deadline_would_pass_not_after_never_starts(
    executor: Executor, adapter: RecordingAdapter, clock: BrokerClock
) -> None:
    now = datetime.now(UTC)
    # 8 s call deadline; 7 s left by the broker's clock: refused. The agent's own clock is 1.5 s behind the
    # broker's (within the 2 s skew), so its own time alone would have allowed it.
    clock.offset_s = 1.5
    report = await executor.execute(submit_order(1, not_after=now + timedelta(seconds=8.5)))
    refused(report, "could still be running after its not_after")
    assert report.error is not None
    assert report.error["type"] == "SiteError"  # the site's timing, not the job's
    order = submit_order(2, not_after=now + timedelta(seconds=12))
    report = await executor.execute(order)
    assert report.ok
    [call] = adapter.calls_of("submit")
    # The adapter keeps the window by this host's clock: not_after moved by the offset.
    assert call.args["context"].not_after == order.not_after - timedelta(seconds=1.5)


async def test_no_submit_starts_while_the_clock_is_out_of_skew(
    executor: Executor, adapter: RecordingAdapter, clock: BrokerClock
) -> None:
    clock.offset_s = 2.5
    report = await executor.execute(submit_order(1))
    refused(report, "not within the Factory's skew")
    assert adapter.calls == []


def test_repeats_are_dropped_by_order_id_and_by_attempt(executor: Executor) -> None:
    assert executor.accept(submit_order(1, attempt="job-a/1"))
    assert not executor.accept(submit_order(1, attempt="job-a/1"))  # the same order again
    assert not executor.accept(submit_order(2, attempt="job-a/1"))  # another order for the same attempt
    assert executor.accept(submit_order(3, attempt="job-a/2"))
    assert executor.accept(read_order(4, "health"))
    assert not executor.accept(read_order(4, "health"))


async def test_an_attempt_refused_before_slurm_may_be_ordered_again_but_one_that_ran_may_not(
    executor: Executor, adapter: RecordingAdapter, tmp_path: Path
) -> None:
    (tmp_path / "pause").touch()
    assert executor.accept(submit_order(1, attempt="job-p/1"))
    assert (await executor.execute(submit_order(1, attempt="job-p/1"))).refused
    (tmp_path / "pause").unlink()
    assert executor.accept(submit_order(2, attempt="job-p/1"))
    assert (await executor.execute(submit_order(2, attempt="job-p/1"))).ok
    assert not executor.accept(submit_order(3, attempt="job-p/1"))
    assert len(adapter.calls_of("submit")) == 1


async def test_the_pause_switch_stops_submits_but_not_reads_or_cancels(
    executor: Executor, adapter: RecordingAdapter, tmp_path: Path
) -> None:
    (tmp_path / "pause").touch()
    refused(await executor.execute(submit_order(1)), "paused by the site")
    assert adapter.calls == []
    assert (await executor.execute(read_order(2, "health"))).ok
    assert (await executor.execute(cancel_order(3))).ok
    (tmp_path / "pause").unlink()
    assert (await executor.execute(submit_order(4))).ok


async def test_a_cancel_goes_to_slurm_with_its_tag_and_user(executor: Executor, adapter: RecordingAdapter) -> None:
    report = await executor.execute(cancel_order(1, job_id=4242))
    assert report.ok
    assert adapter.calls_of("cancel")[0].args == {"job_id": 4242, "user": "alice", "tag": "cvy-job-1"}


@pytest.mark.parametrize("site_user", ["root", "nobody", "carol"])
async def test_a_forged_cancel_as_an_account_the_site_forbids_is_refused(
    executor: Executor, adapter: RecordingAdapter, site_user: str
) -> None:
    assert (await executor.execute(cancel_order(1, site_user=site_user))).refused
    assert adapter.calls == []


async def test_a_fenced_session_refuses_submits(executor: Executor, adapter: RecordingAdapter) -> None:
    executor.lease = Lease(holder=False)
    refused(await executor.execute(submit_order(1)), "does not hold the Factory's agent lease")
    executor.lease = Lease(holder=True, epoch=3)
    refused(await executor.execute(submit_order(2, epoch=2)), "epoch 2 is older than the lease's 3")
    assert adapter.calls == []
    assert (await executor.execute(submit_order(3, epoch=3))).ok


async def test_reads_answer_through_the_codec(executor: Executor, adapter: RecordingAdapter) -> None:
    listing = await executor.execute(read_order(1, "list_jobs", tags=["cvy-a"]))
    assert listing.ok
    assert codec.records_from_json(listing.result)[0].tag == "cvy-a"
    health = await executor.execute(read_order(2, "health"))
    assert codec.health_from_json(health.result).release == "24.11.0"
    output = await executor.execute(read_order(3, "read_output", job_id=7, stream="stderr", max_bytes=10))
    assert output.result == "hello\n"
    assert adapter.calls_of("read_output")[0].args == {"job_id": 7, "stream": "stderr", "max_bytes": 10}
    bad = await executor.execute(read_order(4, "get_job", job_id="7; rm"))
    refused(bad, "invalid arguments")
    unknown = await executor.execute(read_order(5, "health", verbose=True))
    refused(unknown, "unknown arguments ['verbose']")


async def test_a_ranged_output_read_answers_base64_and_its_arguments_are_checked_strictly(
    executor: Executor, adapter: RecordingAdapter
) -> None:
    report = await executor.execute(
        read_order(1, "read_output_chunk", job_id=7, stream="stderr", offset=1, max_bytes=3)
    )
    assert report.ok, report.error
    assert codec.output_chunk_from_json(report.result) == OutputChunk(b"\xffhe", 1, 8, False)
    assert adapter.calls_of("read_output_chunk")[0].args == {
        "job_id": 7,
        "stream": "stderr",
        "offset": 1,
        "max_bytes": 3,
    }
    good = {"job_id": 7, "stream": "stdout", "offset": 0, "max_bytes": 10}
    bad: list[dict[str, Any]] = [
        {"offset": -1},
        {"max_bytes": 0},
        {"max_bytes": MAX_OUTPUT_CHUNK_BYTES + 1},
        {"offset": "0"},
        {"offset": True},
        {"stream": "../etc/shadow"},
        {"job_id": None},
    ]
    for number, changes in enumerate(bad, start=2):
        refused(
            await executor.execute(read_order(number, "read_output_chunk", **{**good, **changes})), "invalid arguments"
        )
    refused(
        await executor.execute(read_order(20, "read_output_chunk", **good, path="/etc/shadow")),
        "unknown arguments ['path']",
    )
    assert len(adapter.calls_of("read_output_chunk")) == 1


async def test_a_slurm_error_is_reported_typed(executor: Executor, adapter: RecordingAdapter) -> None:
    adapter.fail_submits.append(InvalidRequest("Invalid partition name specified", cluster="fake"))
    report = await executor.execute(submit_order(1))
    assert (report.ok, report.refused) == (False, False)
    assert report.error is not None
    assert isinstance(codec.error_from_json(report.error), InvalidRequest)


async def test_a_rate_limit_backs_off_at_the_site_and_never_rejects_the_job(
    adapter: RecordingAdapter, clock: BrokerClock, tmp_path: Path
) -> None:
    gate = SiteBackoff(Backoff(base_s=0.01, cap_s=0.02))
    executor = Executor(adapter, site_policy(), clock, PauseSwitch(tmp_path / "p"), deadline_s=1.0, site_backoff=gate)
    # What slurmrestd answers (1804, classified as unreachable) and what sbatch prints (would read as the job's).
    adapter.fail_submits += [
        ClusterUnavailable("slurmctld unreachable: Rate limit exceeded, please retry momentarily", cluster="fake"),
        InvalidRequest("sbatch: Batch job submission failed: Rate limit exceeded, please retry later", cluster="f"),
    ]
    report = await executor.execute(submit_order(1))
    assert report.ok, report.error
    assert len(adapter.calls_of("submit")) == 3

    # A rate limit that outlasts the order's window: the site's error, not applied, never the job's.
    slow = SiteBackoff(Backoff(base_s=60.0, cap_s=60.0))
    executor = Executor(adapter, site_policy(), clock, PauseSwitch(tmp_path / "p"), deadline_s=1.0, site_backoff=slow)
    adapter.fail_submits.append(InvalidRequest("Batch job submission failed: Rate limit exceeded", cluster="f"))
    report = await executor.execute(submit_order(2))
    assert report.error is not None
    error = codec.error_from_json(report.error)
    assert isinstance(error, ClusterUnavailable)
    assert error.maybe_applied is False
    assert len(adapter.calls_of("submit")) == 4


async def test_a_fault_inside_the_agent_is_reported_as_possibly_applied(
    executor: Executor, adapter: RecordingAdapter
) -> None:
    adapter.fail_submits.append(RuntimeError("a bug"))  # type: ignore[arg-type]
    report = await executor.execute(submit_order(1))
    assert report.error is not None
    error = codec.error_from_json(report.error)
    assert isinstance(error, ClusterUnavailable)
    assert error.maybe_applied is True
    assert "RuntimeError: a bug" in error.message
