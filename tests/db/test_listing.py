"""Listing jobs: filters and opaque keyset cursors over (created_at, id), newest first, across many pages."""

from __future__ import annotations

import base64

import pytest

from broker.db.models import Job
from broker.db.repositories import InvalidCursor, JobFilter, JobRepository
from broker.db.repositories.pagination import Position, decode_cursor, encode_cursor
from conveyor.spec import JobState
from tests.db.helpers import at, new_job

NLP = "EHPC-AIF-2026PG01-1147"
VISION = "EHPC-AIF-2026PG01-2000"


async def _all_pages(jobs: JobRepository, where: JobFilter, limit: int) -> tuple[list[Job], int]:
    items: list[Job] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await jobs.list(where, limit=limit, cursor=cursor)
        pages += 1
        assert len(page.items) <= limit
        items.extend(page.items)
        if page.next_cursor is None:
            return items, pages
        cursor = page.next_cursor


def _newest_first(job: Job) -> tuple[object, str]:
    return (job.created_at, job.id)


async def test_pages_cover_every_matching_job_once_newest_first(jobs: JobRepository) -> None:
    made: list[Job] = []
    for n in range(30):
        project = NLP if n % 3 else VISION
        labels = {"team": "nlp" if n % 2 else "cv"}
        # Every three jobs share a creation instant: the id must break the tie, or pages would skip or repeat.
        made.append(await jobs.insert_job_with_event(new_job(project=project, **labels), actor="t", now=at(n // 3)))
    await jobs.transition(made[29].id, JobState.QUEUED, JobState.SUBMITTED, actor="t", factory="alpha")

    everything, pages = await _all_pages(jobs, JobFilter(), limit=4)
    assert pages == 8
    assert [j.id for j in everything] == [j.id for j in sorted(made, key=_newest_first, reverse=True)]

    where = JobFilter(project=NLP, labels={"team": "nlp"})
    expected = sorted(
        (j for j in made if j.project == NLP and j.labels == {"team": "nlp"}), key=_newest_first, reverse=True
    )
    found, pages = await _all_pages(jobs, where, limit=3)
    assert len(expected) == 10
    assert pages == 4
    assert [j.id for j in found] == [j.id for j in expected]

    queued_nlp, _ = await _all_pages(jobs, JobFilter(projects=frozenset({NLP}), states=frozenset({JobState.QUEUED})), 7)
    assert len(queued_nlp) == 19  # 20 NLP jobs, one of them submitted
    [submitted] = (await jobs.list(JobFilter(factory="alpha"))).items
    assert submitted.id == made[29].id


async def test_visibility_and_owner_filters(jobs: JobRepository) -> None:
    alice = await jobs.insert_job_with_event(new_job(owner="user:alice", project=NLP), actor="t", now=at(1))
    bob = await jobs.insert_job_with_event(new_job(owner="user:bob", project=VISION), actor="t", now=at(2))
    assert (await jobs.list(JobFilter(projects=frozenset()))).items == []
    assert [j.id for j in (await jobs.list(JobFilter(projects=frozenset({VISION})))).items] == [bob.id]
    assert [j.id for j in (await jobs.list(JobFilter(owner="user:alice"))).items] == [alice.id]
    assert [j.id for j in (await jobs.list(JobFilter())).items] == [bob.id, alice.id]
    assert (await jobs.list(JobFilter(labels={"team": "nobody"}))).items == []


def _b64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


async def test_a_cursor_not_issued_by_the_broker_is_refused(jobs: JobRepository) -> None:
    good = encode_cursor(Position(at(0), "job_x"))
    assert decode_cursor(good) == Position(at(0), "job_x")
    not_ours = [
        "", "not-base64!", _b64("not json"), _b64('[2, "2026-01-01T12:00:00+00:00", "job_x"]'),
        _b64('[1, "2026-01-01T12:00:00", "job_x"]'), _b64('[1, "2026-01-01T12:00:00+00:00", 7]'), _b64("[1]"),
    ]  # fmt: skip
    for bad in not_ours:
        with pytest.raises(InvalidCursor):
            await jobs.list(JobFilter(), cursor=bad)
