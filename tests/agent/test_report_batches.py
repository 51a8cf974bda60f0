"""Report batches are bounded by bytes as well as by count (at least one report each), so a run of large
listings never makes a request the broker refuses as too large again and again (which wedged every later
report behind it: nothing could be settled); one report refused alone is replaced by a failure report."""

from __future__ import annotations

from datetime import UTC, datetime

from agent.reports import ReportQueue
from slurm_adapters.agent_protocol import MAX_REPORTS_BYTES, Report

NOW = datetime(2026, 12, 7, tzinfo=UTC)


def listing(order: int, size: int) -> Report:
    return Report(order=order, ok=True, result=["x" * size], finished_at=NOW)


def test_a_batch_stays_within_the_byte_budget_and_takes_at_least_one_report() -> None:
    queue = ReportQueue()
    for order in range(1, 11):
        queue.put(listing(order, 300_000))  # ten listings of ~300 kB: 3 MB together
    batch = queue.peek(100, MAX_REPORTS_BYTES)
    assert [report.order for report in batch] == [1, 2, 3]
    assert sum(len(report.model_dump_json()) for report in batch) <= MAX_REPORTS_BYTES
    queue.done(len(batch))
    huge = ReportQueue()
    huge.put(listing(1, 2 * MAX_REPORTS_BYTES))
    huge.put(listing(2, 10))
    assert [report.order for report in huge.peek(100, MAX_REPORTS_BYTES)] == [1]  # alone, never skipped
    assert [report.order for report in queue.peek(2)] == [4, 5]  # by count alone as before


def test_the_oldest_report_can_be_replaced_in_place() -> None:
    queue = ReportQueue()
    queue.put(listing(1, 2 * MAX_REPORTS_BYTES))
    queue.put(listing(2, 10))
    failure = Report(order=1, ok=False, error={"kind": "ClusterUnavailable"}, finished_at=NOW)
    queue.replace_oldest(failure)
    assert queue.peek(100, MAX_REPORTS_BYTES) == [failure, listing(2, 10)]
