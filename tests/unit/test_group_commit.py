"""The group commit's batching rules, with a recording writer in place of the database (pure logic)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from broker.db.group_commit import GroupCommit


class Refused(Exception):
    pass


class RecordingWriter:
    """Writes nothing; records each batch and holds it until released, like a slow commit."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.fail_with: Exception | None = None
        self.writing = asyncio.Event()

    async def __call__(self, items: Sequence[str]) -> list[str | Exception]:
        self.batches.append(list(items))
        self.writing.set()
        await self.release.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return [Refused(item) if item.startswith("bad") else item.upper() for item in items]


async def _hold_a_batch(commit: GroupCommit[str, str], writer: RecordingWriter, item: str = "x") -> asyncio.Task[str]:
    """Start a batch of ``item`` and keep it in its write, so that what is submitted next queues behind it."""
    writer.release.clear()
    held = asyncio.create_task(commit.submit(item))
    await writer.writing.wait()
    return held


def _key(item: str) -> str | None:
    return item.split(":", 1)[0] if ":" in item else None


async def test_a_lone_item_is_written_at_once_in_a_batch_of_its_own() -> None:
    writer = RecordingWriter()
    commit: GroupCommit[str, str] = GroupCommit(writer, max_batch=10)
    assert await commit.submit("a") == "A"
    assert writer.batches == [["a"]]


async def test_items_arriving_while_a_batch_is_written_share_the_next_batch_up_to_the_limit() -> None:
    writer = RecordingWriter()
    commit: GroupCommit[str, str] = GroupCommit(writer, max_batch=3)
    first = await _hold_a_batch(commit, writer, "first")
    others = [asyncio.create_task(commit.submit(f"n{i}")) for i in range(5)]
    await asyncio.sleep(0)  # let them queue
    writer.release.set()
    assert await first == "FIRST"
    assert await asyncio.gather(*others) == [f"N{i}" for i in range(5)]
    assert writer.batches == [["first"], ["n0", "n1", "n2"], ["n3", "n4"]]
    assert (commit.batches, commit.items) == (3, 6)


async def test_each_caller_gets_its_own_result_or_its_own_refusal() -> None:
    writer = RecordingWriter()
    commit: GroupCommit[str, str] = GroupCommit(writer, max_batch=10)
    blocker = await _hold_a_batch(commit, writer)
    good = asyncio.create_task(commit.submit("good"))
    bad = asyncio.create_task(commit.submit("bad"))
    await asyncio.sleep(0)
    writer.release.set()
    await blocker
    assert await good == "GOOD"
    with pytest.raises(Refused):
        await bad
    assert writer.batches[1] == ["good", "bad"]


async def test_two_items_with_one_identity_never_share_a_batch_and_keep_their_order() -> None:
    writer = RecordingWriter()
    commit: GroupCommit[str, str] = GroupCommit(writer, max_batch=10, identity=_key)
    blocker = await _hold_a_batch(commit, writer)
    items = ["k1:a", "k1:b", "k2:a", "none", "k1:c"]
    tasks = [asyncio.create_task(commit.submit(item)) for item in items]
    await asyncio.sleep(0)
    writer.release.set()
    await blocker
    assert await asyncio.gather(*tasks) == [item.upper() for item in items]
    assert writer.batches[1:] == [["k1:a", "k2:a", "none"], ["k1:b"], ["k1:c"]]


async def test_a_failed_batch_fails_every_caller_in_it_and_the_next_batch_still_runs() -> None:
    writer = RecordingWriter()
    commit: GroupCommit[str, str] = GroupCommit(writer, max_batch=2)
    blocker = await _hold_a_batch(commit, writer)
    writer.fail_with = ConnectionError("database down")
    doomed = [asyncio.create_task(commit.submit(f"d{i}")) for i in range(2)]
    later = asyncio.create_task(commit.submit("later"))
    await asyncio.sleep(0)
    writer.release.set()
    for task in [blocker, *doomed]:
        with pytest.raises(ConnectionError):
            await task
    with pytest.raises(ConnectionError):  # still failing: the writer was not reset
        await later
    writer.fail_with = None
    assert await commit.submit("again") == "AGAIN"


async def test_a_caller_that_gave_up_before_its_turn_is_not_written() -> None:
    writer = RecordingWriter()
    commit: GroupCommit[str, str] = GroupCommit(writer, max_batch=10)
    blocker = await _hold_a_batch(commit, writer)
    gave_up = asyncio.create_task(commit.submit("gave-up"))
    kept = asyncio.create_task(commit.submit("kept"))
    await asyncio.sleep(0)
    gave_up.cancel()
    writer.release.set()
    await blocker
    assert await kept == "KEPT"
    assert gave_up.cancelled()
    assert writer.batches == [["x"], ["kept"]]


def test_a_batch_holds_at_least_one_item() -> None:
    with pytest.raises(ValueError, match="at least one"):
        GroupCommit(RecordingWriter(), max_batch=0)
